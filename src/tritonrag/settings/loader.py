"""Settings: packaged defaults merged with an optional user TOML file named by $TRITONRAG_CONFIG."""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from dataclasses import fields, replace
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from tritonrag.serving.contract import MODELS
from tritonrag.settings.sections import (
    CacheSettings,
    ChunkingSettings,
    EmbedderSettings,
    GeneratorSettings,
    IndexSettings,
    IngressSettings,
    PromptBuilderSettings,
    RagSettings,
    RerankerSettings,
    RetrieverSettings,
    ServerSettings,
    Settings,
)

CONFIG_ENV = "TRITONRAG_CONFIG"
HOME_ENV = "TRITONRAG_HOME"


# [generator] engine values; "stand-in" emits words at once, to measure the serving path without a model.
GENERATOR_ENGINES = ("vllm", "transformers", "stand-in")


def default_home() -> Path:
    """Where runtime, models and indexes live: $TRITONRAG_HOME or ~/.cache/tritonrag."""
    return Path(os.environ.get(HOME_ENV) or Path.home() / ".cache" / "tritonrag").expanduser()


# Keys that were settings of the component sections and now belong to the deployment spec: where it sets each.
SPEC_KEYS = {"instances": "instances", "device": "device", "max_batch_size": "batching.max_batch_size",
             "max_queue_delay_us": "batching.max_queue_delay_us"}
# Keys that moved to another owner.
MOVED_KEYS = {
    ("rag", "top_k"): "the retriever owns the default: [retriever] top_k_default",
    ("rag", "template"): "the prompt builder owns the default: [prompt_builder] template",
    ("rag", "max_tokens"): "the generator owns the default: [generator] max_tokens_default",
    ("rag", "temperature"): "the generator owns the default: [generator] temperature_default",
    ("prompt_builder", "default_template"): "renamed [prompt_builder] template",
}


def _where_now(section: str, key: str) -> str | None:
    """Where a removed setting is set now, or None for a key that never was one."""
    if section in MODELS and key in SPEC_KEYS:
        return (f"[{section}] {key}: placement and batching are set in the deployment spec "
                f"(components.{section}.{SPEC_KEYS[key]}); see deploy/specs/cpu.yaml")
    moved = MOVED_KEYS.get((section, key))
    return f"[{section}] {key}: {moved}" if moved else None


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
        hints = [hint for hint in (_where_now(section, key) for key in unknown) if hint]
        raise ValueError("\n".join([f"unknown setting(s) [{section}] {', '.join(unknown)}; known: {', '.join(names)}",
                                    *hints]))
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
    raw = tomllib.loads(resources.files("tritonrag.settings").joinpath("defaults.toml").read_text())
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
        reranker=_build(RerankerSettings, "reranker", raw, home),
        cache=_build(CacheSettings, "cache", raw, home),
        ingress=_build(IngressSettings, "ingress", raw, home),
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
