"""A cross-encoder reranker: sentence-transformers' CrossEncoder reads query and passage together."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from tritonrag.reranking.rescorer import pairs_of, split_scores


class CrossEncoderRescorer:
    """The raw logit of a one-output sequence-classification model (e.g. BAAI/bge-reranker-base) for each pair.

    Raw, not squashed by the sigmoid CrossEncoder applies by default: the ranking is the same and large logits stay
    distinguishable. All pairs of a batch go through one ``predict`` call.
    """

    kind = "cross-encoder"

    def __init__(self, model_path: str, device: str = "cpu", batch_size: int = 32, max_seq_length: int = 384) -> None:
        import torch
        from sentence_transformers import CrossEncoder

        self.model = CrossEncoder(model_path, device=device)
        if self.model.num_labels != 1:
            raise ValueError(f"reranker model {model_path!r} has {self.model.num_labels} outputs (labels); a "
                             "cross-encoder reranker needs a model with one relevance score (num_labels = 1)")
        own = self.model.max_seq_length
        self.model.max_seq_length = min(max_seq_length, own) if own else max_seq_length
        self.batch_size = batch_size
        self._raw = torch.nn.Identity()

    @property
    def max_seq_length(self) -> int:
        return int(self.model.max_seq_length)

    def score(self, queries: Sequence[str], passages: Sequence[Sequence[str]]) -> list[np.ndarray]:
        pairs = pairs_of(queries, passages)
        if not pairs:
            return split_scores(np.zeros(0, np.float32), passages)
        flat = self.model.predict(pairs, batch_size=self.batch_size, activation_fn=self._raw,
                                  convert_to_numpy=True, show_progress_bar=False)
        return split_scores(flat, passages)
