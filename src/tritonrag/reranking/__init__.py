"""Reranking: score each request's passages against its query, every request of a batch in one forward pass.

``load_rescorer`` picks a ``Rescorer`` from ``[reranker]``: a bi-encoder (sentence-transformers, cosine similarity,
passage embeddings cached), a cross-encoder (its raw logit) or the model-free stand-in (word overlap).
"""

from tritonrag.reranking.loader import detect_kind, load_rescorer
from tritonrag.reranking.rescorer import Rescorer, pairs_of, split_scores
from tritonrag.reranking.validation import validate_request

__all__ = ["Rescorer", "detect_kind", "load_rescorer", "pairs_of", "split_scores", "validate_request"]
