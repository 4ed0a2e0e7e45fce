"""The ingress: an OpenAI-compatible HTTP service in front of Triton (FastAPI on uvicorn, gRPC streaming to the
`rag`, `embedder` and `retriever` models). Stateless, so it scales out behind any load balancer.

errors (OpenAI's error shape), schema (the request bodies), translate (OpenAI requests to rag calls, rag responses to
OpenAI responses and chunks), keys (API keys, hashed), limits (per-key concurrency and rate), gateway (Triton over
gRPC), metrics (Prometheus), app (the routes), static/ (the chat page).
"""
