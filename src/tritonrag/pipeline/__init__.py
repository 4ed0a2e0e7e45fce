"""The RAG pipeline, framework-free: stages, flows, request parameters, streaming events, sources, errors."""
