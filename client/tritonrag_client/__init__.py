"""Python client for the tritonrag service (HTTP generate/SSE and gRPC streaming)."""

from .client import RagAnswer, RagClient, RagError, RagEvent, retriever_stats

__all__ = ["RagAnswer", "RagClient", "RagError", "RagEvent", "retriever_stats"]
