"""The settings sections: one frozen dataclass per [section] of defaults.toml.

Placement and batching (instances, device, max_batch_size, max_queue_delay_us) are not here: the deployment spec owns
them (tritonrag.deploy.spec).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ServerSettings:
    http_port: int
    grpc_port: int
    metrics_port: int
    startup_timeout_s: float
    supervise: bool
    health_port: int
    health_interval_s: float
    restart_backoff_s: float
    restart_backoff_max_s: float


@dataclass(frozen=True)
class ChunkingSettings:
    chunk_tokens: int
    overlap_tokens: int


@dataclass(frozen=True)
class EmbedderSettings:
    model: str
    encode_batch_size: int
    max_text_chars: int
    normalize: bool
    instructor_pooling: bool
    query_instruction: str
    document_instruction: str
    torch_threads: int = 1

    def __post_init__(self) -> None:
        if self.torch_threads < 0:
            raise ValueError(f"[embedder] torch_threads must be 0 (torch's default: one per core) or more, "
                             f"got {self.torch_threads}")


@dataclass(frozen=True)
class IndexSettings:
    type: str
    ivf_nlist: int
    hnsw_m: int
    hnsw_ef_construction: int
    embed_batch_size: int
    keep_versions: int


@dataclass(frozen=True)
class RetrieverSettings:
    index_dir: str
    top_k_default: int
    top_k_max: int
    nprobe: int
    ef_search: int
    reload_interval_s: float
    filter_exact_max: int
    mode: str
    candidates: int
    fusion: str
    rrf_k: float
    dense_weight: float
    sparse_weight: float
    max_query_chars: int

    def __post_init__(self) -> None:
        from tritonrag.kb.batched_search import MODES
        from tritonrag.kb.fusion import FUSIONS

        if self.mode not in MODES:
            raise ValueError(f"[retriever] mode must be one of {', '.join(MODES)}, got {self.mode!r}")
        if self.fusion not in FUSIONS:
            raise ValueError(f"[retriever] fusion must be one of {', '.join(FUSIONS)}, got {self.fusion!r}")
        if not 1 <= self.candidates <= self.top_k_max:
            raise ValueError(f"[retriever] candidates must be between 1 and top_k_max ({self.top_k_max}), "
                             f"got {self.candidates}")
        if self.rrf_k < 0 or self.dense_weight < 0 or self.sparse_weight < 0:
            raise ValueError("[retriever] rrf_k, dense_weight and sparse_weight must not be negative")


# [prompt_builder] passage_order values: "rank" (best first), "document" (knowledge-base order)
PASSAGE_ORDERS = ("rank", "document")


@dataclass(frozen=True)
class PromptBuilderSettings:
    template: str
    chat_template: str
    template_dir: str
    max_query_chars: int
    max_context_chars: int
    max_system_chars: int
    max_history_tokens: int
    passage_order: str = "rank"

    def __post_init__(self) -> None:
        if self.max_history_tokens < 0:
            raise ValueError(f"[prompt_builder] max_history_tokens must be 0 (no history) or more, "
                             f"got {self.max_history_tokens}")
        if self.passage_order not in PASSAGE_ORDERS:
            raise ValueError(f"[prompt_builder] passage_order must be one of {', '.join(PASSAGE_ORDERS)}, "
                             f"got {self.passage_order!r}")


# [generator] speculative_method values: "" (off), "ngram" (prompt lookup: drafts copied from the prompt)
SPECULATIVE_METHODS = ("", "ngram")


@dataclass(frozen=True)
class GeneratorSettings:
    engine: str
    model: str
    dtype: str
    max_model_len: int
    gpu_memory_utilization: float
    tensor_parallel_size: int
    max_num_seqs: int
    enable_prefix_caching: bool
    enforce_eager: bool
    json_compact: bool
    cpu_kvcache_gib: float
    cpu_reserved_cores: int
    max_prompt_tokens: int
    max_tokens_default: int
    max_tokens_limit: int
    temperature_default: float
    top_p_default: float
    repetition_penalty_default: float
    max_stop_strings: int
    max_stop_chars: int
    speculative_method: str = ""
    speculative_tokens: int = 2
    prompt_lookup_max: int = 4
    prompt_lookup_min: int = 2
    cpu_nice: int = 10

    def __post_init__(self) -> None:
        if not 0 <= self.cpu_nice <= 19:
            raise ValueError(f"[generator] cpu_nice must be 0 (unchanged) to 19, got {self.cpu_nice}")
        if self.speculative_method not in SPECULATIVE_METHODS:
            raise ValueError(f"[generator] speculative_method must be one of "
                             f"{', '.join(repr(m) for m in SPECULATIVE_METHODS)}, got {self.speculative_method!r}")
        if self.speculative_method and self.engine != "vllm":
            raise ValueError(f"[generator] speculative_method = {self.speculative_method!r} needs engine = \"vllm\"; "
                             f"the {self.engine} engine has no speculative decoding: set speculative_method = \"\"")
        if self.speculative_tokens < 1:
            raise ValueError(f"[generator] speculative_tokens must be at least 1, got {self.speculative_tokens}")
        if not 1 <= self.prompt_lookup_min <= self.prompt_lookup_max:
            raise ValueError("[generator] prompt_lookup_min and prompt_lookup_max must satisfy 1 <= min <= max, got "
                             f"{self.prompt_lookup_min} and {self.prompt_lookup_max}")


@dataclass(frozen=True)
class RagSettings:
    """The orchestrator's own settings; a request's retrieval, prompt and sampling defaults are the stages'."""

    bls_timeout_s: float
    max_concurrency: int
    stream_default: bool
    abstain_below_score: float
    critic_generator: str
    critic_max_tokens: int
    rerank: bool
    rerank_candidates: int
    rerank_fusion: str
    max_history_messages: int
    condense_max_tokens: int
    build_prompt_in_process: bool = True

    def __post_init__(self) -> None:
        if self.rerank_fusion not in ("none", "rrf"):
            raise ValueError(f"[rag] rerank_fusion must be none or rrf, got {self.rerank_fusion!r}")
        for name in ("max_history_messages", "condense_max_tokens"):
            if getattr(self, name) < 1:
                raise ValueError(f"[rag] {name} must be at least 1, got {getattr(self, name)}")


# [reranker] kind values ("auto": from the model's folder or name, tritonrag.reranking.loader)
RERANKER_KINDS = ("auto", "bi-encoder", "cross-encoder")


@dataclass(frozen=True)
class RerankerSettings:
    """The reranker's model and request limits (tritonrag.reranking)."""

    model: str
    kind: str
    batch_size: int
    max_query_chars: int
    max_passages: int
    max_passage_chars: int
    cache_passages: int
    max_seq_length: int

    def __post_init__(self) -> None:
        if self.kind not in RERANKER_KINDS:
            raise ValueError(f"[reranker] kind must be one of {', '.join(RERANKER_KINDS)}, got {self.kind!r}")
        for name in ("batch_size", "max_query_chars", "max_passages", "max_passage_chars", "max_seq_length"):
            if getattr(self, name) < 1:
                raise ValueError(f"[reranker] {name} must be at least 1, got {getattr(self, name)}")
        if self.cache_passages < 0:
            raise ValueError(f"[reranker] cache_passages must be 0 (no cache) or more, got {self.cache_passages}")


# [cache] backend values (tritonrag.pipeline.cache_store)
CACHE_BACKENDS = ("memory", "redis")


@dataclass(frozen=True)
class CacheSettings:
    """The rag orchestrator's answer cache (tritonrag.pipeline.answer_cache)."""

    enabled: bool
    semantic: bool
    semantic_threshold: float
    max_entries: int
    max_mib: float
    only_deterministic: bool
    share_across_keys: bool
    backend: str
    redis_url: str
    redis_prefix: str
    ttl_s: float
    semantic_max_entries: int
    coalesce: bool
    coalesce_wait_s: float

    def __post_init__(self) -> None:
        if self.backend not in CACHE_BACKENDS:
            raise ValueError(f"[cache] backend must be one of {', '.join(CACHE_BACKENDS)}, got {self.backend!r}")
        if not 0.0 < self.semantic_threshold <= 1.0:
            raise ValueError("[cache] semantic_threshold must be a cosine similarity above 0 and at most 1, got "
                             f"{self.semantic_threshold}")
        for name in ("max_entries", "max_mib", "ttl_s", "semantic_max_entries", "coalesce_wait_s"):
            if getattr(self, name) <= 0:
                raise ValueError(f"[cache] {name} must be positive, got {getattr(self, name)}")
        if self.backend == "redis" and not self.redis_url.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"[cache] redis_url must be a redis://, rediss:// or unix:// URL, got {self.redis_url!r}")


@dataclass(frozen=True)
class IngressSettings:
    """The OpenAI-compatible HTTP service in front of Triton (tritonrag.ingress)."""

    host: str
    port: int
    workers: int
    triton_grpc: str
    triton_health: str
    request_timeout_s: float
    max_body_bytes: int
    max_messages: int
    max_history_chars: int
    api_keys_file: str
    api_keys_env: str
    allow_anonymous: bool
    max_concurrency_per_key: int
    rate_limit_rpm: float
    rate_limit_burst: int
    cors_origins: list[str]

    def __post_init__(self) -> None:
        for name in ("port", "workers", "max_body_bytes", "max_messages", "max_history_chars"):
            if getattr(self, name) < 1:
                raise ValueError(f"[ingress] {name} must be at least 1, got {getattr(self, name)}")
        for name in ("max_concurrency_per_key", "rate_limit_rpm", "rate_limit_burst"):
            if getattr(self, name) < 0:
                raise ValueError(f"[ingress] {name} must be 0 (no limit) or more, got {getattr(self, name)}")
        if self.request_timeout_s <= 0:
            raise ValueError(f"[ingress] request_timeout_s must be positive, got {self.request_timeout_s}")


@dataclass(frozen=True)
class Settings:
    home: Path
    server: ServerSettings
    chunking: ChunkingSettings
    embedder: EmbedderSettings
    index: IndexSettings
    retriever: RetrieverSettings
    prompt_builder: PromptBuilderSettings
    generator: GeneratorSettings
    rag: RagSettings
    reranker: RerankerSettings
    cache: CacheSettings
    ingress: IngressSettings

    @property
    def index_dir(self) -> Path:
        return Path(self.retriever.index_dir)
