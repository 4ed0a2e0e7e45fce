"""Choosing and loading the reranker ``[reranker]`` names: stand-in, bi-encoder or cross-encoder."""

from __future__ import annotations

import json
from pathlib import Path

from tritonrag.devices import limit_torch_memory, pick_device
from tritonrag.embedding.stand_in import STAND_IN
from tritonrag.reranking.rescorer import Rescorer
from tritonrag.settings import RerankerSettings, resolve_model_ref

BI_ENCODER, CROSS_ENCODER = "bi-encoder", "cross-encoder"
HUB_CROSS_ENCODER_WORDS = ("rerank", "cross-encoder")  # in a Hugging Face id: a cross-encoder


def _json(path: Path) -> dict:
    try:
        value = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def detect_kind(model: str) -> str:
    """``kind = "auto"``: what the model folder (or Hugging Face id) ``model`` holds.

    A folder is a cross-encoder when sentence-transformers saved it as one (config_sentence_transformers.json
    ``model_type`` CrossEncoder), or when it is a plain transformers folder (no modules.json) whose config.json
    ``architectures`` end in ForSequenceClassification; any other folder is a bi-encoder. An id that is no folder
    is a cross-encoder when it contains "rerank" or "cross-encoder" (BAAI/bge-reranker-base), else a bi-encoder.
    """
    folder = Path(model)
    if not folder.is_dir():
        return CROSS_ENCODER if any(word in model.lower() for word in HUB_CROSS_ENCODER_WORDS) else BI_ENCODER
    saved_as = _json(folder / "config_sentence_transformers.json").get("model_type")
    if saved_as in ("CrossEncoder", "SentenceTransformer"):
        return CROSS_ENCODER if saved_as == "CrossEncoder" else BI_ENCODER
    if (folder / "modules.json").exists():
        return BI_ENCODER
    architectures = _json(folder / "config.json").get("architectures") or []
    classifies = any(str(a).endswith("ForSequenceClassification") for a in architectures)
    return CROSS_ENCODER if classifies else BI_ENCODER


def _check_folder(model: str, settings: RerankerSettings) -> None:
    """A model that is a path must exist; the packaged default names the command that creates it."""
    if not model.startswith(("/", "~", ".")) or Path(model).is_dir():
        return
    from tritonrag.reranking.packaged import ENCODERS

    entry = ENCODERS.get(Path(model).name)
    how = (f"create it with `{entry.prepare_command}`" if entry else
           "set [reranker] model to a model folder, a Hugging Face id or \"stand-in\"")
    raise FileNotFoundError(f"reranker model folder {model} (from [reranker] model = {settings.model!r}) does not "
                            f"exist: {how}")


def load_rescorer(settings: RerankerSettings, device: str = "auto", memory_fraction: float | None = None) -> Rescorer:
    """The reranker ``settings`` describe, on ``device`` (a torch device or "auto"), its torch allocator capped at
    ``memory_fraction`` of that GPU (tritonrag.devices); the stand-in loads no model and runs on the CPU."""
    if settings.model == STAND_IN:
        from tritonrag.reranking.stand_in import StandInRescorer

        return StandInRescorer()
    model = resolve_model_ref(settings.model)
    _check_folder(model, settings)
    kind = detect_kind(model) if settings.kind == "auto" else settings.kind
    device = pick_device(device)
    limit_torch_memory(device, memory_fraction)
    if kind == CROSS_ENCODER:
        from tritonrag.reranking.cross_encoder import CrossEncoderRescorer

        return CrossEncoderRescorer(model, device, settings.batch_size, settings.max_seq_length)
    from tritonrag.reranking.bi_encoder import BiEncoderRescorer

    return BiEncoderRescorer(model, device, settings.batch_size, settings.max_seq_length, settings.cache_passages)
