"""Sentence embedding with sentence-transformers: one forward pass for many requests, optional instructions."""

from __future__ import annotations

import sys
from collections.abc import Sequence

import numpy as np

from tritonrag.devices import limit_torch_memory, pick_device
from tritonrag.embedding.stand_in import StandInEncoder, stand_in_dimension
from tritonrag.settings import EmbedderSettings, resolve_model_ref


def tokenizer_spans(tokenizer, text: str) -> list[tuple[int, int]]:
    """Character spans of the tokens a Hugging Face (fast) tokenizer makes of ``text``, no special tokens."""
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True, truncation=False, verbose=False)
    return [tuple(span) for span in encoded["offset_mapping"]]


def in_triton_stub() -> bool:
    """This process is a Triton Python-backend stub (its adapter imported triton_python_backend_utils)."""
    return "triton_python_backend_utils" in sys.modules


def serving_threads(settings: EmbedderSettings, device: str, serving: bool) -> int | None:
    """The torch intra-op threads to set for an embedder on ``device``: [embedder] torch_threads when it serves on
    CPU (``serving``), None (leave torch's default) for in-process embedding, on a GPU, or when the setting is 0."""
    if not serving or not device.startswith("cpu") or settings.torch_threads <= 0:
        return None
    return settings.torch_threads


class TextEmbedder:
    """Encode texts into L2-normalised float32 vectors.

    Instructions (INSTRUCTOR style, e.g. "Represent the question for retrieving passages:") are passed as
    sentence-transformers prompts. With ``instructor_pooling`` the prompt tokens are excluded from mean
    pooling, which is how INSTRUCTOR models were trained; for other models the prompt is simply prepended.
    """

    def __init__(self, settings: EmbedderSettings, device: str = "auto", memory_fraction: float | None = None) -> None:
        """``device``: a torch device, or "auto" (CUDA when torch sees a GPU); ``memory_fraction``: the instance's cap
        on that GPU (tritonrag.devices)."""
        self.settings = settings
        self.stand_in: StandInEncoder | None = None
        stand_in_dim = stand_in_dimension(settings.model)
        if stand_in_dim is not None:
            self.device = "cpu"
            self.dimension = stand_in_dim
            self.stand_in = StandInEncoder(stand_in_dim, settings.normalize)
            return
        from sentence_transformers import SentenceTransformer

        self.device = pick_device(device)
        limit_torch_memory(self.device, memory_fraction)  # the instance's GPU share (tritonrag.devices)
        threads = serving_threads(settings, self.device, in_triton_stub())
        if threads is not None:  # the served embedder shares the cores with vLLM's CPU worker ([embedder])
            import torch

            torch.set_num_threads(threads)
        self.model = SentenceTransformer(resolve_model_ref(settings.model), device=self.device)
        if settings.instructor_pooling:
            for module in self.model:
                if hasattr(module, "include_prompt"):
                    module.include_prompt = False
        get_dim = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        dim = get_dim()
        if dim is None:
            raise ValueError(f"model {settings.model!r} does not report its embedding dimension")
        self.dimension = int(dim)

    @property
    def max_seq_length(self) -> int:
        if self.stand_in is not None:  # reads the whole text, which has at most max_text_chars words
            return self.settings.max_text_chars
        return int(self.model.max_seq_length)

    def token_spans(self, text: str) -> list[tuple[int, int]]:
        """Character spans of the tokens the embedder's tokenizer makes of ``text`` (for chunking)."""
        if self.stand_in is not None:
            return self.stand_in.token_spans(text)
        return tokenizer_spans(self.model.tokenizer, text)

    def encode(self, texts: Sequence[str], instruction: str = "", show_progress: bool = False) -> np.ndarray:
        """Embed ``texts`` (all with the same instruction) in one call; returns [len(texts), dim] float32."""
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        if self.stand_in is not None:
            return self.stand_in.encode(texts, instruction)
        vectors = self.model.encode(
            list(texts),
            prompt=instruction or None,
            batch_size=self.settings.encode_batch_size,
            normalize_embeddings=self.settings.normalize,
            convert_to_numpy=True,
            show_progress_bar=show_progress,
        )
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def encode_mixed(self, texts: Sequence[str], instructions: Sequence[str]) -> np.ndarray:
        """Embed texts that may carry different instructions: one encode call per distinct instruction.

        Requests of a dynamic batch almost always share one instruction, so this is one forward pass.
        """
        if len(texts) != len(instructions):
            raise ValueError("texts and instructions differ in length")
        out = np.empty((len(texts), self.dimension), dtype=np.float32)
        for instruction in dict.fromkeys(instructions):
            rows = [i for i, ins in enumerate(instructions) if ins == instruction]
            out[rows] = self.encode([texts[i] for i in rows], instruction)
        return out
