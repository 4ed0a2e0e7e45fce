"""The tensor contract: every model, input, output and request parameter of the served pipeline, named once.

The renderer declares each model's config.pbtxt from ``MODEL_IO``; the adapters read and write tensors by these
names; the client, the remote embedder and the benchmarks build requests with them. Pure constants: importable
anywhere (the client package included) without Triton.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class EmbedderContract:
    model: str = "embedder"
    text: str = "text"  # BYTES [1] per row
    instruction: str = "instruction"  # BYTES [1] per row, optional
    embedding: str = "embedding"  # FP32 [dim], L2-normalised


@dataclass(frozen=True)
class RetrieverContract:
    model: str = "retriever"
    embedding: str = "embedding"  # FP32 [dim] per row: dense and hybrid search
    query: str = "query"  # BYTES [1] per row, the question's text: sparse and hybrid search
    top_k: str = "top_k"
    filter: str = "filter"  # JSON object
    stats: str = "stats"  # input: BOOL, ask for statistics; output: BYTES (JSON)
    chunk_ids: str = "chunk_ids"
    scores: str = "scores"  # the ranking's: cosine (dense), BM25 (sparse), fused (hybrid)
    similarities: str = "similarities"  # cosine similarity with the query's vector (NaN when none was sent)
    texts: str = "texts"
    metadata: str = "metadata"  # JSON per chunk
    found_by: str = "found_by"  # JSON per chunk: {"dense": {"rank", "score"}, "sparse": {...}, "similarity"}
    timing: str = "timing"  # JSON per request: milliseconds of each step of its batch (dense, sparse, fusion, fetch)
    kb_version: str = "kb_version"  # the knowledge-base version that answered ("" when none is loaded)
    # request parameters
    mode: str = "mode"  # dense | sparse | hybrid
    candidates: str = "candidates"  # hybrid: candidates each side contributes to the fusion
    fusion: str = "fusion"  # rrf | weighted
    nprobe: str = "nprobe"  # query-time settings of approximate indexes
    ef_search: str = "ef_search"

    @property
    def search_parameters(self) -> tuple[str, ...]:
        return (self.mode, self.candidates, self.fusion, self.nprobe, self.ef_search)


@dataclass(frozen=True)
class PromptBuilderContract:
    model: str = "prompt_builder"
    query: str = "query"
    context: str = "context"
    metadata: str = "metadata"
    template: str = "template"
    system_prompt: str = "system_prompt"  # optional: replaces the template's system prompt
    generator: str = "generator"  # optional: the served generator the prompt is for (its chat template)
    json_schema: str = "json_schema"  # optional: the schema an extract template shows the model
    answer: str = "answer"  # optional: the answer a critic template reviews
    history: str = "history"  # optional: JSON list of {"role": "user"|"assistant", "content"}, the earlier turns
    prompt: str = "prompt"
    stop: str = "stop"  # the template's and the chat format's stop strings
    passages: str = "passages"  # INT32: how many passages the prompt holds, numbered 1..passages (citable)
    json_output: str = "json_output"  # BOOL: the template asks for a JSON answer
    order: str = "order"  # INT32 [passages]: prompt passage n is context row order[n - 1] (passage_order)


@dataclass(frozen=True)
class RerankerContract:
    model: str = "reranker"
    query: str = "query"  # BYTES [1] per row
    passages: str = "passages"  # BYTES [-1] per row, the passages to score against the row's query (ragged batch)
    scores: str = "scores"  # FP32 [-1] per row: one per passage, in input order, higher = more relevant


@dataclass(frozen=True)
class GeneratorContract:
    """vllm_backend's names, so vllm_backend itself could serve the same model name."""

    model: str = "generator"
    text_input: str = "text_input"
    stream: str = "stream"
    sampling_parameters: str = "sampling_parameters"  # JSON object
    stop: str = "stop"
    text_output: str = "text_output"
    finish_reason: str = "finish_reason"  # on the last response
    num_input_tokens: str = "num_input_tokens"  # INT32 [1], on the last response: the prompt's tokens
    num_output_tokens: str = "num_output_tokens"  # INT32 [1], on the last response: the tokens generated
    # request parameters: a stream a BLS caller may cancel by key, and the request that cancels it
    cancel_key: str = "cancel_key"
    cancel: str = "cancel"


# How Triton 2.51 words a model that cannot answer now, in an INTERNAL error: its Python stub died (the supervisor is
# restoring it), or it is unloaded or being loaded again. rag's BLS stages and the ingress both read these as
# UNAVAILABLE (a 503 to retry), not as a bug.
# "Internal error from Core": what a request in flight got once while tritonserver itself was being killed (the
# gRPC front end outlived the core for a moment).
TRITON_UNAVAILABLE_WORDS = ("is not healthy", "is not ready", "Model version not ready", "has no available versions",
                            "Internal error from Core")


@dataclass(frozen=True)
class RagContract:
    model: str = "rag"
    # request parameter (bool): prefix each error's message with its code, "[invalid_arg] ...", for gRPC stream
    # clients that cannot use Triton's strict error mode (the ingress; see its gateway: Triton 2.51 crashes under
    # many failed streams in that mode)
    coded_errors: str = "tritonrag_coded_errors"
    text_input: str = "text_input"  # the question: the conversation's last user turn
    stream: str = "stream"
    history: str = "history"  # optional input: JSON list of {"role": "user"|"assistant", "content"} before it
    text_output: str = "text_output"
    sources: str = "sources"  # JSON list, on the first response of a stream (or the only one)
    finish_reason: str = "finish_reason"
    citations: str = "citations"  # JSON list of the passages the answer cites, on the final response
    # request parameters
    top_k: str = "top_k"
    template: str = "template"
    max_tokens: str = "max_tokens"
    temperature: str = "temperature"
    top_p: str = "top_p"
    seed: str = "seed"
    filter: str = "filter"  # JSON string (request parameters are scalars)
    min_score: str = "min_score"  # the best passage's score under which rag abstains without generating
    system_prompt: str = "system_prompt"
    json_schema: str = "json_schema"  # JSON string: the answer must be JSON following it
    json_object: str = "json_object"  # bool: the answer must be a JSON object
    flow: str = "flow"  # "rag" (default), "qa-checked", "rag-chat" or "llm"
    mode: str = "mode"  # retrieval: dense | sparse | hybrid
    candidates: str = "candidates"  # retrieval: hybrid depth
    fusion: str = "fusion"  # retrieval: rrf | weighted
    rerank: str = "rerank"  # bool: rerank the retrieved candidates
    rerank_candidates: str = "rerank_candidates"  # how many candidates the reranker scores
    timing: str = "timing"  # output: JSON, milliseconds of each step, on the final response
    usage: str = "usage"  # output: JSON {"prompt_tokens", "completion_tokens", "total_tokens"}, final response
    query: str = "query"  # output: the question the flow searched with (rag-chat: the condensed one), final response
    cache: str = "cache"  # request parameter (bool): false bypasses the answer cache
    # request parameter (string): whose cache entries a request may read (the ingress sends the authenticated API
    # key's name; entries are never shared across tenants unless [cache] share_across_keys). Triton's own endpoints
    # trust it as they trust every caller: keep them private (they are, on 127.0.0.1, by default).
    cache_tenant: str = "tritonrag_cache_tenant"
    # output, final response: "exact" or "semantic" (answered from that tier of the answer cache), "miss" (looked up,
    # not found: the answer is cached now) or "off" (not looked up: cache false, the cache off, or a random answer)
    cache_status: str = "cache"

    @property
    def parameters(self) -> tuple[str, ...]:
        return (self.top_k, self.template, self.max_tokens, self.temperature, self.top_p, self.seed, self.stream,
                self.filter, self.min_score, self.system_prompt, self.json_schema, self.json_object, self.flow,
                self.mode, self.candidates, self.fusion, self.rerank, self.rerank_candidates, self.cache,
                self.cache_tenant)


EMBEDDER = EmbedderContract()
RETRIEVER = RetrieverContract()
PROMPT_BUILDER = PromptBuilderContract()
RERANKER = RerankerContract()
GENERATOR = GeneratorContract()
RAG = RagContract()

# Model parameters the renderer writes into a config.pbtxt for the instances (tritonrag.serving.instance).
GPU_MEMORY_PARAMETER = "gpu_memory"
INSTANCE_GPUS_PARAMETER = "instance_gpus"
# For the prompt builder and rag, when the spec serves more than the one generator: every served generator's name and
# its model (the spec's ``model`` of that component, or null: the [generator] model of the settings), as JSON.
GENERATOR_MODELS_PARAMETER = "generator_models"


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # config.pbtxt data_type
    dims: tuple[int, ...]
    optional: bool = False
    ragged: bool = False  # allow_ragged_batch: requests of different lengths share a dynamic batch


@dataclass(frozen=True)
class ModelIO:
    """What a model's config.pbtxt declares: its inputs and outputs, and whether it streams (decoupled)."""

    name: str
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    decoupled: bool = False


def _string(name: str, dims: tuple[int, ...] = (1,), optional: bool = False) -> TensorSpec:
    return TensorSpec(name, "TYPE_STRING", dims, optional)


E, R, P, G, Q = EMBEDDER, RETRIEVER, PROMPT_BUILDER, GENERATOR, RAG
MODEL_IO: tuple[ModelIO, ...] = (
    ModelIO(E.model, inputs=(_string(E.text), _string(E.instruction, optional=True)),
            outputs=(TensorSpec(E.embedding, "TYPE_FP32", (-1,)),)),
    ModelIO(
        R.model,
        inputs=(TensorSpec(R.embedding, "TYPE_FP32", (-1,), optional=True), _string(R.query, optional=True),
                TensorSpec(R.top_k, "TYPE_INT32", (1,), optional=True), _string(R.filter, optional=True),
                TensorSpec(R.stats, "TYPE_BOOL", (1,), optional=True)),
        outputs=(TensorSpec(R.chunk_ids, "TYPE_INT64", (-1,)), TensorSpec(R.scores, "TYPE_FP32", (-1,)),
                 TensorSpec(R.similarities, "TYPE_FP32", (-1,)), _string(R.texts, (-1,)), _string(R.metadata, (-1,)),
                 _string(R.found_by, (-1,)), _string(R.timing), _string(R.stats), _string(R.kb_version)),
    ),
    ModelIO(P.model, inputs=(_string(P.query), _string(P.context, (-1,), optional=True),
                             _string(P.metadata, (-1,), optional=True), _string(P.template, optional=True),
                             _string(P.system_prompt, optional=True), _string(P.generator, optional=True),
                             _string(P.json_schema, optional=True), _string(P.answer, optional=True),
                             _string(P.history, optional=True)),
            outputs=(_string(P.prompt), _string(P.stop, (-1,)), TensorSpec(P.passages, "TYPE_INT32", (1,)),
                     TensorSpec(P.json_output, "TYPE_BOOL", (1,)), TensorSpec(P.order, "TYPE_INT32", (-1,)))),
    ModelIO(RERANKER.model,
            inputs=(_string(RERANKER.query), TensorSpec(RERANKER.passages, "TYPE_STRING", (-1,), ragged=True)),
            outputs=(TensorSpec(RERANKER.scores, "TYPE_FP32", (-1,)),)),
    ModelIO(G.model, inputs=(_string(G.text_input), TensorSpec(G.stream, "TYPE_BOOL", (1,), optional=True),
                             _string(G.sampling_parameters, optional=True), _string(G.stop, (-1,), optional=True)),
            outputs=(_string(G.text_output, (-1,)), _string(G.finish_reason, (-1,)),
                     TensorSpec(G.num_input_tokens, "TYPE_INT32", (1,)),
                     TensorSpec(G.num_output_tokens, "TYPE_INT32", (1,))), decoupled=True),
    ModelIO(Q.model, inputs=(_string(Q.text_input), TensorSpec(Q.stream, "TYPE_BOOL", (1,), optional=True),
                             _string(Q.history, optional=True)),
            outputs=(_string(Q.text_output, (-1,)), _string(Q.sources, (-1,)), _string(Q.finish_reason, (-1,)),
                     _string(Q.citations, (-1,)), _string(Q.timing, (-1,)), _string(Q.usage, (-1,)),
                     _string(Q.query, (-1,)), _string(Q.cache_status, (-1,))),
            decoupled=True),
)
MODELS = tuple(m.name for m in MODEL_IO)
