"""Render every model's config.pbtxt from the settings (the settings are the single source of truth)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from .config import Settings

HEADER = "# Generated from tritonrag settings by `tritonrag render`; do not edit by hand.\n"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str
    dims: tuple[int, ...]
    optional: bool = False


@dataclass(frozen=True)
class ModelSpec:
    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    instances: int
    device: str  # "cpu", "cuda" or "auto" (Triton's default: GPU when present)
    max_batch_size: int = 0
    max_queue_delay_us: int | None = None
    decoupled: bool = False


def model_specs(settings: Settings) -> list[ModelSpec]:
    """The five models of the pipeline, with inputs, outputs, batching and instances from ``settings``."""
    e, r, p, g, rag = settings.embedder, settings.retriever, settings.prompt_builder, settings.generator, settings.rag
    s = TensorSpec
    return [
        ModelSpec(
            "embedder",
            inputs=(s("text", "TYPE_STRING", (1,)), s("instruction", "TYPE_STRING", (1,), optional=True)),
            outputs=(s("embedding", "TYPE_FP32", (-1,)),),
            instances=e.instances, device=e.device,
            max_batch_size=e.max_batch_size, max_queue_delay_us=e.max_queue_delay_us,
        ),
        ModelSpec(
            "retriever",
            inputs=(
                s("embedding", "TYPE_FP32", (-1,), optional=True),
                s("top_k", "TYPE_INT32", (1,), optional=True),
                s("filter", "TYPE_STRING", (1,), optional=True),
                s("stats", "TYPE_BOOL", (1,), optional=True),
            ),
            outputs=(
                s("chunk_ids", "TYPE_INT64", (-1,)),
                s("scores", "TYPE_FP32", (-1,)),
                s("texts", "TYPE_STRING", (-1,)),
                s("metadata", "TYPE_STRING", (-1,)),
                s("stats", "TYPE_STRING", (1,)),
            ),
            instances=r.instances, device="cpu",
            max_batch_size=r.max_batch_size, max_queue_delay_us=r.max_queue_delay_us,
        ),
        ModelSpec(
            "prompt_builder",
            inputs=(
                s("query", "TYPE_STRING", (1,)),
                s("context", "TYPE_STRING", (-1,), optional=True),
                s("metadata", "TYPE_STRING", (-1,), optional=True),
                s("template", "TYPE_STRING", (1,), optional=True),
            ),
            outputs=(s("prompt", "TYPE_STRING", (1,)), s("stop", "TYPE_STRING", (-1,))),
            instances=p.instances, device="cpu",
        ),
        ModelSpec(
            "generator",
            inputs=(
                s("text_input", "TYPE_STRING", (1,)),
                s("stream", "TYPE_BOOL", (1,), optional=True),
                s("sampling_parameters", "TYPE_STRING", (1,), optional=True),
                s("stop", "TYPE_STRING", (-1,), optional=True),
            ),
            outputs=(s("text_output", "TYPE_STRING", (-1,)), s("finish_reason", "TYPE_STRING", (-1,))),
            instances=g.instances, device=g.device, decoupled=True,
        ),
        ModelSpec(
            "rag",
            inputs=(s("text_input", "TYPE_STRING", (1,)), s("stream", "TYPE_BOOL", (1,), optional=True)),
            outputs=(
                s("text_output", "TYPE_STRING", (-1,)),
                s("sources", "TYPE_STRING", (-1,)),
                s("finish_reason", "TYPE_STRING", (-1,)),
            ),
            instances=rag.instances, device="cpu", decoupled=True,
        ),
    ]


def _tensor_block(kind: str, tensors: tuple[TensorSpec, ...]) -> str:
    blocks = []
    for t in tensors:
        lines = [f'    name: "{t.name}"', f"    data_type: {t.dtype}", f"    dims: [ {', '.join(map(str, t.dims))} ]"]
        if t.optional:
            lines.append("    optional: true")
        blocks.append("  {\n" + "\n".join(lines) + "\n  }")
    return f"{kind} [\n" + ",\n".join(blocks) + "\n]\n"


def render_config(spec: ModelSpec) -> str:
    """The config.pbtxt text of one model."""
    out = [HEADER, f'name: "{spec.name}"\n', 'backend: "python"\n', f"max_batch_size: {spec.max_batch_size}\n"]
    if spec.decoupled:
        out.append("model_transaction_policy { decoupled: true }\n")
    if spec.max_queue_delay_us is not None and spec.max_batch_size > 0:
        out.append(f"dynamic_batching {{ max_queue_delay_microseconds: {spec.max_queue_delay_us} }}\n")
    out.append(_tensor_block("input", spec.inputs))
    out.append(_tensor_block("output", spec.outputs))
    kind = {"cpu": "\n    kind: KIND_CPU", "cuda": "\n    kind: KIND_GPU"}.get(spec.device.split(":")[0], "")
    out.append(f"instance_group [\n  {{\n    count: {spec.instances}{kind}\n  }}\n]\n")
    return "".join(out)


def render_repository(settings: Settings, repository: Path, check: bool = False) -> list[Path]:
    """Write (or with ``check``, only compare) each model's config.pbtxt; returns the files that differ."""
    differing = []
    for spec in model_specs(settings):
        path = Path(repository) / spec.name / "config.pbtxt"
        text = render_config(spec)
        if not path.exists() or path.read_text() != text:
            differing.append(path)
            if not check:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(text)
    return differing
