"""The request bodies the ingress accepts: OpenAI's chat completions and embeddings, plus the RAG options a client
sends as extra body fields (the openai SDK's ``extra_body``). Unknown fields are errors, so a typo never goes
unnoticed; OpenAI fields this service cannot honour (tools, n > 1, logprobs, penalties) are rejected by name."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictFloat, StrictInt, StrictStr


class _Strict(BaseModel):
    # strict: "0.5" is not a number and 1 is not a boolean; JSON numbers still fill float fields
    model_config = ConfigDict(extra="forbid", strict=True)


class TextPart(_Strict):
    type: Literal["text"]
    text: StrictStr


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant"]
    content: StrictStr | list[TextPart] | None = None
    name: StrictStr | None = None

    @property
    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class StreamOptions(_Strict):
    include_usage: StrictBool = False


class JsonSchemaFormat(_Strict):
    name: StrictStr = "answer"
    description: StrictStr | None = None
    schema_: dict[str, Any] = Field(alias="schema")
    strict: StrictBool | None = None


class ResponseFormat(_Strict):
    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


Int64 = Annotated[StrictInt, Field(ge=-(2**63), le=2**63 - 1)]  # what a Triton request parameter can carry
Seed = Annotated[StrictInt, Field(ge=0, le=2**63 - 1)]  # the generator's range (tritonrag.validation.as_seed)
Tokens = Annotated[StrictInt, Field(ge=1, le=2**31 - 1)]


class ChatCompletionRequest(_Strict):
    """POST /v1/chat/completions. ``model`` names a flow (GET /v1/models lists them)."""

    model: StrictStr
    messages: list[Message] = Field(min_length=1)
    stream: StrictBool = False
    stream_options: StreamOptions | None = None
    max_tokens: Tokens | None = None
    max_completion_tokens: Tokens | None = None
    temperature: Annotated[StrictFloat, Field(ge=0, le=2)] | None = None
    top_p: Annotated[StrictFloat, Field(gt=0, le=1)] | None = None
    seed: Seed | None = None
    n: Annotated[StrictInt, Field(ge=1, le=1)] | None = None  # one choice per request
    stop: None = None  # the flow's templates own their stop strings
    presence_penalty: Annotated[StrictFloat, Field(ge=0, le=0)] | None = None
    frequency_penalty: Annotated[StrictFloat, Field(ge=0, le=0)] | None = None
    logprobs: Literal[False] | None = None
    response_format: ResponseFormat | None = None
    user: StrictStr | None = None  # accepted and ignored (the API key identifies the caller)
    # the RAG options (extra body fields)
    top_k: Int64 | None = None
    filter: dict[str, Any] | None = None
    task: StrictStr | None = None  # the prompt template: qa, summarize, extract (`tritonrag templates`)
    retrieval_mode: Literal["dense", "sparse", "hybrid"] | None = None
    candidates: Int64 | None = None
    fusion: Literal["rrf", "weighted"] | None = None
    rerank: StrictBool | None = None
    rerank_candidates: Int64 | None = None
    min_score: StrictFloat | None = None
    cache: StrictBool | None = None  # false: answer anew, bypassing the answer cache


class EmbeddingRequest(_Strict):
    """POST /v1/embeddings: the served embedder's vectors (L2-normalised)."""

    model: StrictStr
    input: StrictStr | list[StrictStr] = Field()
    encoding_format: Literal["float", "base64"] = "float"
    dimensions: StrictInt | None = None
    user: StrictStr | None = None

    @property
    def texts(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)
