"""In-process limits of the components, measured with the same inputs as the served benchmarks.

- embedder: raw sentence-transformers ``encode`` of the texts in batches of the served embedder's ``max_batch_size``
  in the default deployment (what one Triton execute call can hand it), in texts per second;
- retriever: raw FAISS search + docstore fetch (what the retriever model does per request) of query vectors,
  one query per call and in batches, in queries per second;
- generator: raw vLLM ``AsyncLLM.generate`` in this process (``generator_throughput.bench_inprocess``).

A served figure divided by its limit is the share of the component's own speed that serving keeps.

    .venv/bin/python benchmarks/component_limits.py --seconds 10
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import QUESTIONS, markdown_table

from tritonrag.serving.contract import EMBEDDER, RETRIEVER


def _rate(work: Callable[[], int], seconds: float) -> tuple[float, int]:
    """Repeat ``work`` (returns items done) for at least ``seconds`` after one warm-up call: (items/s, items)."""
    work()
    done, started = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - started) < seconds or done == 0:
        done += work()
    return done / elapsed, done


def embedder_limit(texts: Sequence[str], seconds: float) -> dict[str, Any]:
    """Texts per second of raw ``encode`` in batches of the default deployment's embedder ``max_batch_size``."""
    from tritonrag.deploy.render import default_plan
    from tritonrag.embedding.encoder import TextEmbedder
    from tritonrag.settings import load_settings

    settings = load_settings()
    embedder = TextEmbedder(settings.embedder, "cpu")
    batch = default_plan(settings).components[EMBEDDER.model].max_batch_size
    cursor = [0]

    def work() -> int:
        start = cursor[0] % len(texts)
        chunk = [texts[(start + i) % len(texts)] for i in range(batch)]
        cursor[0] += batch
        embedder.encode(chunk)
        return batch

    rate, done = _rate(work, seconds)
    return {"component": EMBEDDER.model, "measure": f"encode, batches of {batch}", "unit": "texts/s",
            "limit": rate, "items": done}


def query_vectors(n: int = len(QUESTIONS)) -> np.ndarray:
    """The question mix embedded in-process (the retriever's realistic queries)."""
    from tritonrag.embedding.encoder import TextEmbedder
    from tritonrag.settings import load_settings

    texts = [QUESTIONS[i % len(QUESTIONS)] for i in range(n)]
    return TextEmbedder(load_settings().embedder, "cpu").encode(texts)


def retriever_limit(vectors: np.ndarray, top_k: int, seconds: float, batches: Sequence[int] = (1, 16)) -> list[dict]:
    """Queries per second of raw FAISS search + docstore fetch, one query per call and in batches."""
    from tritonrag.kb.search import KnowledgeBase
    from tritonrag.settings import load_settings

    settings = load_settings()
    kb = KnowledgeBase(settings.index_dir)
    rows = []
    try:
        for batch in batches:
            cursor = [0]

            def work(batch: int = batch, cursor: list[int] = cursor) -> int:
                picks = [(cursor[0] + i) % len(vectors) for i in range(batch)]
                cursor[0] += batch
                scores, ids = kb.search(vectors[picks], top_k)
                for row_ids, row_scores in zip(ids, scores):
                    kb.fetch(row_ids, row_scores)
                return batch

            rate, done = _rate(work, seconds)
            rows.append({"component": RETRIEVER.model, "measure": f"search + fetch, top_k {top_k}, batches of {batch}",
                         "unit": "queries/s", "limit": rate, "items": done})
    finally:
        kb.close()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10.0, help="time per measurement")
    args = parser.parse_args()
    from tritonrag.settings import load_settings

    rows = [embedder_limit(QUESTIONS, args.seconds)]
    rows += retriever_limit(query_vectors(), load_settings().retriever.top_k_default, args.seconds)
    print(markdown_table(rows, ["component", "measure", "unit", "limit", "items"]))


if __name__ == "__main__":
    main()
