"""perf_analyzer ``--input-data`` JSON files for every model, built from the sample knowledge base.

Each file is ``{"data": [{input: {"content": [...], "shape": [...]}, ...}, ...]}``; perf_analyzer sends the
entries round-robin. Shapes exclude the batch dimension for the batched models (embedder, retriever: perf_analyzer
adds it with ``-b``) and are full shapes for the others. The data is what the ``rag`` model itself sends each stage
for the question mix (``common.QUESTIONS``): the same embeddings, retrieved passages, prompts and sampling, computed
by the pipeline the served ``rag`` runs (tritonrag.pipeline.RagPipeline with the standard flows, over the in-process
stages of tritonrag.pipeline.local_stages) with a generator that records what it is asked instead of generating
(``pipeline_requests``; benchmarks/engine_limit.py sends those very prompts and sampling to vLLM).

    .venv/bin/python benchmarks/perf_inputs.py --out /tmp/perf-inputs          # quick (max_tokens 32)
    .venv/bin/python benchmarks/perf_inputs.py --out /tmp/perf-inputs --full   # [generator] max_tokens_default
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import QUESTIONS, write_json

from tritonrag.serving.contract import EMBEDDER, GENERATOR, PROMPT_BUILDER, RAG, RERANKER, RETRIEVER

QUICK_MAX_TOKENS = 32


@dataclass(frozen=True)
class Retrieved:
    """One question with what the pipeline computes for it (an abstention: no prompt, no sampling)."""

    question: str
    embedding: list[float]
    texts: list[str]
    metadata: list[str]  # JSON per passage, as the retriever's `metadata` output
    prompt: str
    stop: list[str]
    sampling: Any = None  # tritonrag.generation.sampling.SamplingParams the generator is asked with


class _RecordingEngine:
    """An engine that records each prompt and sampling it is given and ends the generation at once, empty."""

    name = "record"

    def __init__(self) -> None:
        self.calls: list[tuple[str, Any]] = []

    @property
    def in_flight(self) -> int:
        return 0

    def submit(self, prompt: str, params: Any, sink: Any) -> str:
        from tritonrag.generation.sampling import Completion

        self.calls.append((prompt, params))
        sink.on_finish(Completion("stop", 0, 0))
        return f"record-{len(self.calls)}"

    def shutdown(self) -> None:
        pass


class _RecordingStages:
    """The in-process stages, remembering the last embedding, retrieval and prompt of a request."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner
        self.last: dict[str, Any] = {}
        self.embedder = self.retriever = self.reranker = self.prompt_builder = self.generator = self

    async def embed(self, text: str) -> Any:
        self.last["embedding"] = await self.inner.embed(text)
        return self.last["embedding"]

    async def retrieve(self, *args: Any) -> Any:
        self.last["retrieval"] = await self.inner.retrieve(*args)
        return self.last["retrieval"]

    async def rerank(self, *args: Any) -> Any:
        return await self.inner.rerank(*args)

    async def build(self, *args: Any) -> Any:
        self.last["prompt"] = await self.inner.build(*args)
        return self.last["prompt"]

    async def start(self, *args: Any) -> Any:
        return await self.inner.start(*args)


def tensor(content: list[Any], shape: list[int] | None = None) -> dict[str, Any]:
    """One input of one request: its flattened content and shape."""
    return {"content": content, "shape": shape if shape is not None else [len(content)]}


def passages(kb: Any, n: int) -> list[str]:
    """``n`` chunk texts spread evenly over the knowledge base."""
    ids = kb.ids[:: max(1, len(kb.ids) // n)][:n]
    return [hit.text for hit in kb.fetch(ids.tolist(), [0.0] * len(ids))]


def pipeline_requests(settings: Any, kb: Any, questions: list[str],
                      parameters: dict[str, Any] | None = None) -> list[Retrieved]:
    """Each question through the served `rag` model's pipeline in this process (its flows, built as rag builds
    them; the request as a streamed HTTP request with ``parameters`` would be parsed), up to the generator, which
    records the prompt and sampling it is asked for instead of generating. An abstention (the best passage under
    [rag] abstain_below_score) has no prompt."""
    import asyncio

    import numpy as np

    from tritonrag.embedding.encoder import TextEmbedder
    from tritonrag.pipeline.events import FailedEvent
    from tritonrag.pipeline.flow import RagPipeline, standard_flows
    from tritonrag.pipeline.local_stages import LocalStages
    from tritonrag.pipeline.types import RagRequest
    from tritonrag.prompts.builder import prompt_builder

    engine = _RecordingEngine()
    local = LocalStages(TextEmbedder(settings.embedder, "cpu"), kb, settings.retriever, prompt_builder(settings),
                        settings.prompt_builder.template, engine, settings.generator)
    stages = _RecordingStages(local)
    rag = settings.rag
    pipeline = RagPipeline(stages, standard_flows(stages, rag.critic_generator, rag.critic_max_tokens,
                                                  rag.rerank_fusion, settings.reranker.max_passage_chars,
                                                  rag.condense_max_tokens))

    async def one(question: str) -> Retrieved:
        stages.last.clear()
        before = len(engine.calls)
        request = RagRequest.parse(question, dict(parameters or {}), True, settings.rag, settings.retriever)
        async for event in pipeline.run(request):
            if isinstance(event, FailedEvent):
                raise RuntimeError(f"the pipeline failed on {question!r}: {event.message}")
        passages = stages.last["retrieval"].passages
        prompt, sampling = engine.calls[before] if len(engine.calls) > before else ("", None)
        built = stages.last.get("prompt")
        return Retrieved(
            question=question,
            embedding=[float(x) for x in np.asarray(stages.last["embedding"], dtype=np.float32).reshape(-1)],
            texts=[p.text for p in passages],
            metadata=[json.dumps(dict(p.metadata)) for p in passages],
            prompt=prompt,
            stop=list(built.stop) if built is not None and prompt else [],
            sampling=sampling,
        )

    async def every() -> list[Retrieved]:
        return [await one(q) for q in questions]

    return asyncio.run(every())


def retrieve_all(settings: Any, kb: Any, questions: list[str]) -> list[Retrieved]:
    """Embed, retrieve and build the prompt for each question, in-process, as the `rag` model does (with the
    stages' defaults: [retriever] mode, top_k_default, [prompt_builder] template): ``pipeline_requests``."""
    return pipeline_requests(settings, kb, questions)


def embedder_data(questions: list[str], chunks: list[str]) -> list[dict[str, Any]]:
    """Queries and passages interleaved: one text per request (the model's `text` is [1] per batch row)."""
    texts = [t for pair in zip(questions, chunks) for t in pair] + chunks[len(questions):]
    return [{EMBEDDER.text: tensor([t], [1])} for t in texts]


def retriever_data(rows: list[Retrieved], top_k: int) -> list[dict[str, Any]]:
    return [{RETRIEVER.embedding: tensor(r.embedding), RETRIEVER.top_k: tensor([top_k], [1])} for r in rows]


def prompt_builder_data(rows: list[Retrieved], template: str) -> list[dict[str, Any]]:
    p = PROMPT_BUILDER
    return [
        {p.query: tensor([r.question], [1]), p.context: tensor(r.texts), p.metadata: tensor(r.metadata),
         p.template: tensor([template], [1])}
        for r in rows
    ]


def reranker_data(rows: list[Retrieved]) -> list[dict[str, Any]]:
    """Each question with the passages retrieved for it, as the rerank step sends them."""
    r = RERANKER
    return [{r.query: tensor([row.question], [1]), r.passages: tensor(row.texts)} for row in rows if row.texts]


def generator_data(rows: list[Retrieved], max_tokens: int, temperature: float) -> list[dict[str, Any]]:
    sampling = json.dumps({"max_tokens": max_tokens, "temperature": temperature})
    g = GENERATOR
    return [
        {g.text_input: tensor([r.prompt], [1]), g.sampling_parameters: tensor([sampling], [1]),
         g.stream: tensor([True], [1]), **({g.stop: tensor(r.stop)} if r.stop else {})}  # chat prompts: no stop
        for r in rows if r.prompt  # an abstention asks the generator nothing
    ]


def rag_data(questions: list[str]) -> list[dict[str, Any]]:
    return [{RAG.text_input: tensor([q], [1]), RAG.stream: tensor([True], [1])} for q in questions]


def build_inputs(out_dir: Path, max_tokens: int | None = None, n_passages: int = 48) -> dict[str, Path]:
    """Write ``<model>.json`` for every model into ``out_dir``; returns model -> path.

    ``max_tokens`` is the generator's budget per request (default ``[generator] max_tokens_default``, what a RAG
    request gets); a summary of what was written goes to ``inputs.json``."""
    from tritonrag.kb.search import KnowledgeBase
    from tritonrag.settings import load_settings

    settings = load_settings()
    max_tokens = settings.generator.max_tokens_default if max_tokens is None else max_tokens
    top_k, template = settings.retriever.top_k_default, settings.prompt_builder.template
    kb = KnowledgeBase(settings.index_dir)
    questions = list(QUESTIONS)
    rows = retrieve_all(settings, kb, questions)
    data = {
        EMBEDDER.model: embedder_data(questions, passages(kb, n_passages)),
        RETRIEVER.model: retriever_data(rows, top_k),
        PROMPT_BUILDER.model: prompt_builder_data(rows, template),
        RERANKER.model: reranker_data(rows),
        GENERATOR.model: generator_data(rows, max_tokens, settings.generator.temperature_default),
        RAG.model: rag_data(questions),
    }
    paths = {model: write_json(out_dir / f"{model}.json", {"data": entries}) for model, entries in data.items()}
    write_json(out_dir / "inputs.json", {
        "knowledge_base": str(kb.path), "kb_version": kb.version, "chunks": len(kb), "dimension": kb.dimension,
        "questions": len(questions), "embedder_texts": len(data[EMBEDDER.model]), "top_k": top_k,
        "template": template, "generator_max_tokens": max_tokens,
        "prompt_chars_mean": sum(len(r.prompt) for r in rows) / len(rows),
    })
    return paths


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True, help="folder for the <model>.json files")
    parser.add_argument("--full", action="store_true",
                        help="generator max_tokens = [generator] max_tokens_default (default 32)")
    args = parser.parse_args()
    paths = build_inputs(args.out, None if args.full else QUICK_MAX_TOKENS)
    for model, path in paths.items():
        print(f"{model}: {path}")


if __name__ == "__main__":
    main()
