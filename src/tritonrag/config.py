"""Settings: packaged defaults merged with an optional user TOML file named by $TRITONRAG_CONFIG."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, fields, replace
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

import tomllib

CONFIG_ENV = "TRITONRAG_CONFIG"
HOME_ENV = "TRITONRAG_HOME"
# [generator] engine values; "stand-in" emits words at once, to measure the serving path without a model.
GENERATOR_ENGINES = ("vllm", "transformers", "stand-in")


def default_home() -> Path:
    """Where runtime, models and indexes live: $TRITONRAG_HOME or ~/.cache/tritonrag."""
    return Path(os.environ.get(HOME_ENV) or Path.home() / ".cache" / "tritonrag").expanduser()


@dataclass(frozen=True)
class ServerSettings:
    http_port: int
    grpc_port: int
    metrics_port: int
    startup_timeout_s: float


@dataclass(frozen=True)
class ChunkingSettings:
    chunk_tokens: int
    overlap_tokens: int


@dataclass(frozen=True)
class EmbedderSettings:
    model: str
    device: str
    instances: int
    max_batch_size: int
    encode_batch_size: int
    max_queue_delay_us: int
    max_text_chars: int
    normalize: bool
    instructor_pooling: bool
    query_instruction: str
    document_instruction: str


@dataclass(frozen=True)
class IndexSettings:
    type: str
    ivf_nlist: int
    hnsw_m: int
    hnsw_ef_construction: int
    embed_batch_size: int
    keep_versions: int


@dataclass(frozen=True)
class RetrieverSettings:
    index_dir: str
    instances: int
    max_batch_size: int
    max_queue_delay_us: int
    top_k_default: int
    top_k_max: int
    device: str
    nprobe: int
    ef_search: int
    reload_interval_s: float
    filter_exact_max: int


@dataclass(frozen=True)
class PromptBuilderSettings:
    instances: int
    default_template: str
    max_query_chars: int
    max_context_chars: int


@dataclass(frozen=True)
class GeneratorSettings:
    engine: str
    model: str
    device: str
    dtype: str
    instances: int
    max_model_len: int
    gpu_memory_utilization: float
    tensor_parallel_size: int
    max_num_seqs: int
    enable_prefix_caching: bool
    enforce_eager: bool
    cpu_kvcache_gib: float
    cpu_reserved_cores: int
    max_prompt_tokens: int
    max_tokens_default: int
    max_tokens_limit: int
    temperature_default: float
    top_p_default: float
    repetition_penalty_default: float
    max_stop_strings: int
    max_stop_chars: int


@dataclass(frozen=True)
class RagSettings:
    instances: int
    top_k: int
    template: str
    max_tokens: int
    temperature: float
    bls_timeout_s: float
    max_concurrency: int
    stream_default: bool


@dataclass(frozen=True)
class Settings:
    home: Path
    server: ServerSettings
    chunking: ChunkingSettings
    embedder: EmbedderSettings
    index: IndexSettings
    retriever: RetrieverSettings
    prompt_builder: PromptBuilderSettings
    generator: GeneratorSettings
    rag: RagSettings

    @property
    def index_dir(self) -> Path:
        return Path(self.retriever.index_dir)


T = TypeVar("T")


def _merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _build(cls: type[T], section: str, raw: dict[str, Any], home: Path) -> T:
    values = raw.get(section, {})
    names = {f.name: f for f in fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise ValueError(f"unknown setting(s) [{section}] {', '.join(unknown)}; known: {', '.join(names)}")
    missing = sorted(set(names) - set(values))
    if missing:
        raise ValueError(f"missing setting(s) [{section}] {', '.join(missing)}")
    kwargs = {}
    for name, value in values.items():
        if isinstance(value, str):
            value = value.replace("{home}", str(home))
        kwargs[name] = value
    return cls(**kwargs)


def load_settings(path: str | os.PathLike[str] | None = None) -> Settings:
    """Load defaults, then the TOML at ``path`` (or $TRITONRAG_CONFIG) on top; unknown keys are errors."""
    raw = tomllib.loads(resources.files("tritonrag").joinpath("defaults.toml").read_text())
    path = path or os.environ.get(CONFIG_ENV)
    if path:
        with open(path, "rb") as fh:
            raw = _merge(raw, tomllib.load(fh))
    home = Path(str(raw.pop("home", default_home()))).expanduser()
    unknown = sorted(set(raw) - {f.name for f in fields(Settings)})
    if unknown:
        raise ValueError(f"unknown settings section(s): {', '.join(unknown)}")
    engine = raw.get("generator", {}).get("engine")
    if engine not in GENERATOR_ENGINES:
        raise ValueError(f"[generator] engine = {engine!r} is unknown; choose one of {', '.join(GENERATOR_ENGINES)}")
    return Settings(
        home=home,
        server=_build(ServerSettings, "server", raw, home),
        chunking=_build(ChunkingSettings, "chunking", raw, home),
        embedder=_build(EmbedderSettings, "embedder", raw, home),
        index=_build(IndexSettings, "index", raw, home),
        retriever=_build(RetrieverSettings, "retriever", raw, home),
        prompt_builder=_build(PromptBuilderSettings, "prompt_builder", raw, home),
        generator=_build(GeneratorSettings, "generator", raw, home),
        rag=_build(RagSettings, "rag", raw, home),
    )


def override(section: T, overrides: Mapping[str, Any], where: str) -> T:
    """``section`` (a settings dataclass) with ``overrides`` applied; unknown names and wrong types are errors that
    name ``where`` the override came from."""
    current = {f.name: getattr(section, f.name) for f in fields(section)}  # type: ignore[arg-type]
    changes = {}
    for name, value in overrides.items():
        if name not in current:
            raise ValueError(f"{where}: unknown setting {name!r}; known: {', '.join(current)}")
        old = current[name]
        if isinstance(old, bool) or isinstance(value, bool):
            ok = isinstance(old, bool) and isinstance(value, bool)
        elif isinstance(old, float):
            ok = isinstance(value, (int, float))
            value = float(value) if ok else value
        else:
            ok = isinstance(value, type(old))
        if not ok:
            raise ValueError(f"{where}.{name}: expected {type(old).__name__} like {old!r}, got {value!r}")
        changes[name] = value
    return replace(section, **changes)  # type: ignore[type-var]


def resolve_model_ref(ref: str) -> str:
    """Turn ``package:NAME`` into the model folder that package ships; other refs pass through."""
    if not ref.startswith("package:"):
        return str(Path(ref).expanduser()) if ref.startswith(("~", "/", ".")) else ref
    import importlib

    name = ref.removeprefix("package:")
    try:
        module = importlib.import_module(name)
    except ImportError as exc:
        raise ValueError(f"model {ref!r}: package {name!r} is not installed; run scripts/setup.sh") from exc
    if hasattr(module, "get_model_path"):
        return str(module.get_model_path())
    folder = Path(module.__file__).parent / "model"
    if not folder.is_dir():
        raise ValueError(f"model {ref!r}: package {name!r} ships no model folder")
    return str(folder)


def pick_device(requested: str) -> str:
    """'auto' means CUDA when torch sees a GPU, else CPU."""
    if requested != "auto":
        return requested
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"
