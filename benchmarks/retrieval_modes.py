"""Retrieval modes side by side, through the served stages: dense, sparse (BM25), hybrid (RRF / weighted), and
hybrid + the reranker, on BEIR SciFact and on the sample book.

One Triton server per knowledge base serves `embedder`, `retriever` and `reranker` (the models the `rag`
orchestrator calls, over gRPC as it does). Each question is embedded once by the served embedder; every
configuration then asks the served retriever (and, with reranking, the served reranker for the top
`--rerank-depth` candidates, keeping the rest in retrieval order). Latency is the client-side time of the
retrieval (+ rerank) requests of one question, at concurrency 1.

- SciFact (`--scifact`, default ../shared/data/scifact): the 300 test queries over the 5183 abstracts kept whole;
  nDCG@10 and Recall@100 by pytrec_eval, as BEIR/MTEB compute them. The knowledge base is built once in
  `--work` (embedded in process, ~8 minutes on 2 cores) and reused.
- The book (`--book-index`, default: the sample knowledge base): the answerable questions of
  benchmarks/answer_quality_questions.yaml; evidence hit@k = a passage holding the answer is in the top k.

Examples:
    .venv/bin/python benchmarks/retrieval_modes.py
    .venv/bin/python benchmarks/retrieval_modes.py --only book --rerank-depth 20
    .venv/bin/python benchmarks/retrieval_modes.py --only scifact --work /tmp/sf --configs dense,sparse,hybrid
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from answer_quality_scoring import evidence_rank, load_questions
from common import machine_description, machine_markdown
from scifact_retrieval import evaluate, find_scifact, load_queries

from tritonrag.pipeline.steps import rerank_order
from tritonrag.serving.contract import EMBEDDER, RERANKER, RETRIEVER

ROOT = Path(__file__).resolve().parents[1]
# name -> (retriever parameters, rerank fusion: None = no reranking, "none" = reranker score, "rrf" = fused ranks)
CONFIGS: dict[str, tuple[dict[str, Any], str | None]] = {
    "dense": ({"mode": "dense"}, None),
    "sparse": ({"mode": "sparse"}, None),
    "hybrid": ({"mode": "hybrid"}, None),  # the retriever's default fusion and weights
    "hybrid-rrf": ({"mode": "hybrid", "fusion": "rrf"}, None),
    "dense+rerank": ({"mode": "dense"}, "none"),
    "hybrid+rerank": ({"mode": "hybrid"}, "none"),
    "hybrid+rerank-rrf": ({"mode": "hybrid"}, "rrf"),
}
HIT_KS = (1, 4, 16)
RERANK_MAX_CHARS = 8000  # [reranker] max_passage_chars


class Served:
    """gRPC calls of the served embedder, retriever and reranker."""

    def __init__(self, url: str) -> None:
        import tritonclient.grpc as grpcclient

        self.g = grpcclient
        self.client = grpcclient.InferenceServerClient(url)

    def _strings(self, name: str, values: list[str]) -> Any:
        tensor = self.g.InferInput(name, [1, len(values)], "BYTES")
        tensor.set_data_from_numpy(np.array([[v.encode() for v in values]], dtype=np.object_))
        return tensor

    def embed(self, text: str) -> np.ndarray:
        result = self.client.infer(EMBEDDER.model, [self._strings(EMBEDDER.text, [text])])
        return result.as_numpy(EMBEDDER.embedding).astype(np.float32)

    def retrieve(self, vector: np.ndarray, text: str, top_k: int, params: dict[str, Any]) -> tuple[list, list, dict]:
        r = RETRIEVER
        vec = self.g.InferInput(r.embedding, list(vector.shape), "FP32")
        vec.set_data_from_numpy(vector)
        k = self.g.InferInput(r.top_k, [1, 1], "INT32")
        k.set_data_from_numpy(np.array([[top_k]], np.int32))
        result = self.client.infer(r.model, [vec, self._strings(r.query, [text]), k], parameters=params,
                                   outputs=[self.g.InferRequestedOutput(n) for n in (r.texts, r.metadata, r.timing)])
        texts = [t.decode() for t in result.as_numpy(r.texts).reshape(-1)]
        metadata = [json.loads(m) for m in result.as_numpy(r.metadata).reshape(-1)]
        return texts, metadata, json.loads(result.as_numpy(r.timing).reshape(-1)[0])

    def rerank(self, text: str, passages: list[str]) -> np.ndarray:
        result = self.client.infer(RERANKER.model, [self._strings(RERANKER.query, [text]),
                                                    self._strings(RERANKER.passages, passages)])
        return result.as_numpy(RERANKER.scores).reshape(-1)


def search(served: Served, vector: np.ndarray, text: str, top_k: int, config: str,
           depth: int) -> tuple[list[str], list[dict], float, dict]:
    params, fusion = CONFIGS[config]
    started = time.perf_counter()
    texts, metadata, timing = served.retrieve(vector, text, top_k, params)
    if fusion is not None and texts:
        n = min(depth, len(texts))
        scores = served.rerank(text, [t[:RERANK_MAX_CHARS] for t in texts[:n]])  # as the rerank step sends them
        order = rerank_order(scores.tolist(), fusion)[0] + list(range(n, len(texts)))  # as the rerank step
        texts, metadata = [texts[i] for i in order], [metadata[i] for i in order]
    return texts, metadata, time.perf_counter() - started, timing


def start_server(config: Path, work: Path, name: str) -> Any:
    from tritonrag.deploy.server import Ports, TritonServer
    from tritonrag.settings import load_settings

    os.environ["TRITONRAG_CONFIG"] = str(config)
    settings = load_settings()
    server = TritonServer(ROOT / "model_repository", settings.home, Ports.choose(0, 0, 0),
                          env={"TRITONRAG_CONFIG": str(config)}, log_file=work / f"{name}.log",
                          models=(EMBEDDER.model, RETRIEVER.model, RERANKER.model))
    return server.start(settings.server.startup_timeout_s)


def scifact_kb(folder: Path, work: Path) -> Path:
    """A config whose knowledge base holds SciFact's abstracts whole, built (or updated) in process."""
    config = work / "scifact.toml"
    config.write_text('[chunking]\nchunk_tokens = 0\noverlap_tokens = 0\n'
                      f'[retriever]\nindex_dir = "{work / "kb-doc"}"\ntop_k_max = 1000\ncandidates = 100\n'
                      '[index]\nkeep_versions = 2\n')
    os.environ["TRITONRAG_CONFIG"] = str(config)
    from tritonrag.kb.ingest import update_knowledge_base
    from tritonrag.kb.loaders import load_documents
    from tritonrag.kb.search import is_current
    from tritonrag.settings import load_settings

    s = load_settings()
    if not is_current(s.index_dir, s.embedder.model, 0, 0):
        print(f"building the SciFact knowledge base in {s.index_dir} (reuses vectors already there)", flush=True)
        print(update_knowledge_base(s.index_dir, s, load_documents([folder / "corpus.jsonl"]),
                                    replace_all=True).summary(), flush=True)
    return config


def bench_scifact(folder: Path, work: Path, configs: list[str], depth: int) -> list[dict]:
    queries, qrels = load_queries(folder)
    server = start_server(scifact_kb(folder, work), work, "scifact")
    rows = []
    try:
        served = Served(server.grpc_url)
        qids = list(queries)
        vectors = {q: served.embed(queries[q]) for q in qids}
        for config in configs:
            for q in qids[:10]:  # warm up
                search(served, vectors[q], queries[q], 100, config, depth)
            run, latencies, steps = {}, [], []
            for q in qids:
                _, metadata, seconds, timing = search(served, vectors[q], queries[q], 100, config, depth)
                docs: dict[str, float] = {}
                for rank, meta in enumerate(metadata):
                    docs.setdefault(meta["doc_id"], float(len(metadata) - rank))
                run[q] = docs
                latencies.append(seconds)
                steps.append(timing)
            scores = evaluate(run, qrels)
            rows.append({"corpus": "scifact", "config": config, **scores, **_latency(latencies), **_steps(steps)})
            print(f"[scifact] {config}: nDCG@10 {scores['ndcg@10']:.4f} R@100 {scores['recall@100']:.4f} "
                  f"p50 {rows[-1]['p50_ms']:.1f} ms", flush=True)
    finally:
        server.stop()
    return rows


def bench_book(index_dir: Path, work: Path, configs: list[str], depth: int) -> list[dict]:
    config = work / "book.toml"
    config.write_text(f'[retriever]\nindex_dir = "{index_dir}"\n')
    questions = [q for q in load_questions() if q.answerable]
    server = start_server(config, work, "book")
    rows = []
    try:
        served = Served(server.grpc_url)
        vectors = {q.id: served.embed(q.question) for q in questions}
        for config_name in configs:
            ranks, latencies, steps = [], [], []
            for q in questions:
                texts, _, seconds, timing = search(served, vectors[q.id], q.question, max(HIT_KS), config_name,
                                                   depth)
                ranks.append(evidence_rank(texts, q.evidence_any))
                latencies.append(seconds)
                steps.append(timing)
            hits = {f"hit@{k}": sum(r is not None and r <= k for r in ranks) / len(ranks) for k in HIT_KS}
            rows.append({"corpus": "book", "config": config_name, "questions": len(questions), **hits,
                         **_latency(latencies), **_steps(steps)})
            print(f"[book] {config_name}: " + " ".join(f"{k} {v:.2f}" for k, v in hits.items()), flush=True)
    finally:
        server.stop()
    return rows


def _latency(seconds: list[float]) -> dict[str, float]:
    return {"p50_ms": 1000 * statistics.median(seconds), "p99_ms": 1000 * float(np.percentile(seconds, 99))}


def _steps(timings: list[dict]) -> dict[str, float]:
    names = sorted({k for t in timings for k in t})
    return {f"{name.removesuffix('_ms')}_p50_ms": statistics.median(t.get(name, 0.0) for t in timings)
            for name in names}


def markdown(rows: list[dict], command: str, depth: int, reranker: str, fusion: str) -> str:
    out = ["# Retrieval modes: dense, sparse, hybrid, reranked", "", f"Command: `{command}`  ",
           f"Date: {time.strftime('%Y-%m-%d')}; {machine_markdown(machine_description())}", "",
           "Through the served `embedder`, `retriever` and `reranker` (gRPC, concurrency 1). Embedder "
           "all-MiniLM-L6-v2; sparse: BM25 over SQLite FTS5; hybrid: the retriever's default fusion "
           f"({fusion}) of each side's top max(candidates, top_k); `hybrid-rrf`: reciprocal-rank fusion (k = 60); "
           f"reranker: {reranker}, scoring the top {depth} candidates (the rest keep their order); `+rerank` orders "
           "them by the reranker's score, `+rerank-rrf` by fusing the retrieval and reranker ranks (RRF). "
           "Latency: retrieval (+ rerank) requests of one question; step columns: the retriever's own "
           "`timing` output (p50).", ""]
    scifact = [r for r in rows if r["corpus"] == "scifact"]
    if scifact:
        out += ["## BEIR SciFact (300 test queries, 5183 abstracts)", "",
                "| config | nDCG@10 | Recall@100 | p50 ms | p99 ms | dense ms | sparse ms | fusion ms | fetch ms |",
                "|---|---|---|---|---|---|---|---|---|"]
        out += [f"| {r['config']} | {r['ndcg@10']:.4f} | {r['recall@100']:.4f} | {r['p50_ms']:.1f} | "
                f"{r['p99_ms']:.1f} | {r.get('dense_p50_ms', 0):.2f} | {r.get('sparse_p50_ms', 0):.2f} | "
                f"{r.get('fusion_p50_ms', 0):.2f} | {r.get('fetch_p50_ms', 0):.2f} |" for r in scifact]
        out.append("")
    book = [r for r in rows if r["corpus"] == "book"]
    if book:
        out += [f"## The book ({book[0]['questions']} answerable questions of the answer-quality set)", "",
                "| config | hit@1 | hit@4 | hit@16 | p50 ms | p99 ms |", "|---|---|---|---|---|---|"]
        out += [f"| {r['config']} | {r['hit@1']:.2f} | {r['hit@4']:.2f} | {r['hit@16']:.2f} | {r['p50_ms']:.1f} | "
                f"{r['p99_ms']:.1f} |" for r in book]
        out.append("")
    return "\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("Examples:")[1])
    parser.add_argument("--only", choices=("scifact", "book"), help="one corpus only")
    parser.add_argument("--scifact", help="BEIR SciFact folder (default: ../shared/data/scifact)")
    parser.add_argument("--book-index", help="knowledge base of the book (default: [retriever] index_dir)")
    parser.add_argument("--work", default="/tmp/tritonrag-retrieval-modes", help="scratch folder (SciFact's KB)")
    parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma-separated, of: {', '.join(CONFIGS)}")
    parser.add_argument("--rerank-depth", type=int, default=20, help="candidates the reranker scores")
    parser.add_argument("--out", default="benchmarks/results/retrieval_modes")
    args = parser.parse_args()
    configs = args.configs.split(",")
    unknown = sorted(set(configs) - set(CONFIGS))
    if unknown:
        parser.error(f"unknown config(s) {', '.join(unknown)}; known: {', '.join(CONFIGS)}")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    from tritonrag.settings import load_settings

    settings = load_settings()  # the user's settings: the book's knowledge base, the reranker model
    book_index = Path(args.book_index or settings.index_dir)
    rows = []
    if args.only != "book":
        rows += bench_scifact(find_scifact(args.scifact), work, configs, args.rerank_depth)
    if args.only != "scifact":
        rows += bench_book(book_index, work, configs, args.rerank_depth)
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    r = settings.retriever
    reranker = f"{Path(settings.reranker.model).name} ({settings.reranker.kind})"
    text = markdown(rows, command, args.rerank_depth, reranker,
                    f"{r.fusion}, dense weight {r.dense_weight}, sparse weight {r.sparse_weight}")
    suffix = f"-{args.only}" if args.only else ""
    out.with_name(out.name + suffix + ".md").write_text(text)
    out.with_name(out.name + suffix + ".json").write_text(json.dumps({"command": command, "rows": rows}, indent=2))
    print(text)


if __name__ == "__main__":
    main()
