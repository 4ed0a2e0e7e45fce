"""A bi-encoder reranker: sentence-transformers embeds the query and each passage, the score is their cosine."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tritonrag.reranking.cache import EmbeddingCache
from tritonrag.reranking.rescorer import split_scores


class BiEncoderRescorer:
    """Cosine similarity of sentence embeddings (e.g. all-mpnet-base-v2).

    One ``encode`` call per batch embeds every query and every passage not in the LRU cache (each distinct text
    once), so a passage seen again, in this batch or an earlier one, costs nothing.
    """

    kind = "bi-encoder"

    def __init__(self, model_path: str, device: str = "cpu", batch_size: int = 32, max_seq_length: int = 384,
                 cache_passages: int = 4096) -> None:
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(model_path, device=device)
        own = self.model.max_seq_length
        self.model.max_seq_length = min(max_seq_length, own) if own else max_seq_length
        self.batch_size = batch_size
        self.cache = EmbeddingCache(cache_passages)
        self.encoded = 0  # texts embedded so far (cached passages are not)

    @property
    def max_seq_length(self) -> int:
        return int(self.model.max_seq_length)

    def _encode(self, texts: list[str]) -> np.ndarray:
        self.encoded += len(texts)
        vectors = self.model.encode(texts, batch_size=self.batch_size, normalize_embeddings=True,
                                    convert_to_numpy=True, show_progress_bar=False)
        return np.asarray(vectors, dtype=np.float32)

    def score(self, queries: Sequence[str], passages: Sequence[Sequence[str]]) -> list[np.ndarray]:
        distinct = list(dict.fromkeys(p for group in passages for p in group))
        known = {text: vector for text in distinct if (vector := self.cache.get(text)) is not None}
        missing = [text for text in distinct if text not in known]
        distinct_queries = list(dict.fromkeys(queries))
        vectors = self._encode(distinct_queries + missing)
        query_vectors = dict(zip(distinct_queries, vectors[: len(distinct_queries)]))
        for text, vector in zip(missing, vectors[len(distinct_queries):]):
            self.cache.put(text, vector)
            known[text] = vector
        flat = [float(query_vectors[q] @ known[p]) for q, group in zip(queries, passages, strict=True) for p in group]
        return split_scores(np.array(flat, dtype=np.float32), passages)
