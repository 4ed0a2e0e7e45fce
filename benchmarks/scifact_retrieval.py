"""Retrieval quality and speed on BEIR SciFact through the served pipeline, for each index type.

A Triton server (embedder + retriever only) is started on a knowledge base of its own. The corpus is embedded
through the served embedder (`--via`, concurrent gRPC), then each index type is published from the same
vectors (`tritonrag kb reindex`, hot-reloaded by the retriever). The 300 test queries are embedded by the
served embedder and searched one request at a time by the served retriever; nDCG@10 and Recall@100 are
computed with pytrec_eval (as BEIR/MTEB do) from the documents of the retrieved chunks.

Modes: `doc` keeps each abstract whole (title + text, the embedder truncates at 256 tokens: MTEB's protocol);
`chunked` uses the default 160/32 token chunks and ranks a document by its best chunk.

Examples:
    .venv/bin/python benchmarks/scifact_retrieval.py
    .venv/bin/python benchmarks/scifact_retrieval.py --modes doc,chunked --types flat,hnsw
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from tritonrag.serving.contract import EMBEDDER, RETRIEVER

ROOT = Path(__file__).resolve().parents[1]
MTEB_NDCG10 = 0.64508  # MTEB leaderboard: sentence-transformers/all-MiniLM-L6-v2 on SciFact (test)
# the retriever's request parameters for approximate indexes
SWEEPS = {"flat": [{}], "ivf": [{RETRIEVER.nprobe: n} for n in (4, 16, 64, 128)],
          "hnsw": [{RETRIEVER.ef_search: e} for e in (64, 128, 256)]}
MODES = {"doc": (0, 0), "chunked": (160, 32)}


def find_scifact(path: str | None) -> Path:
    candidates = [Path(path)] if path else [p / "shared" / "data" / "scifact" for p in (ROOT, *ROOT.parents)]
    for candidate in candidates:
        if (candidate / "corpus.jsonl").exists():
            return candidate
    sys.exit("BEIR SciFact not found (corpus.jsonl, queries.jsonl, qrels/test.tsv); pass --data FOLDER. "
             "It is the BEIR 'scifact' dataset, e.g. from the BEIR project's downloads.")


def load_queries(folder: Path) -> tuple[dict[str, str], dict[str, dict[str, int]]]:
    qrels: dict[str, dict[str, int]] = {}
    for line in (folder / "qrels" / "test.tsv").read_text().splitlines()[1:]:
        qid, did, score = line.split()
        qrels.setdefault(qid, {})[did] = int(score)
    queries = {}
    with open(folder / "queries.jsonl") as fh:
        for line in fh:
            row = json.loads(line)
            if row["_id"] in qrels:
                queries[row["_id"]] = row["text"]
    return queries, qrels


def evaluate(run: dict[str, dict[str, float]], qrels: dict[str, dict[str, int]]) -> dict[str, float]:
    import pytrec_eval

    scores = pytrec_eval.RelevanceEvaluator(qrels, {"ndcg_cut.10", "recall.100"}).evaluate(run)
    return {"ndcg@10": statistics.mean(s["ndcg_cut_10"] for s in scores.values()),
            "recall@100": statistics.mean(s["recall_100"] for s in scores.values())}


def write_config(work: Path, mode: str) -> Path:
    chunk, overlap = MODES[mode]
    config = work / f"{mode}.toml"
    config.write_text(
        f'[chunking]\nchunk_tokens = {chunk}\noverlap_tokens = {overlap}\n'
        f'[retriever]\nindex_dir = "{work / ("kb-" + mode)}"\ntop_k_max = 1000\nreload_interval_s = 0.2\n'
        '[index]\nkeep_versions = 2\n'
    )
    return config


class Served:
    """gRPC searches of the running retriever."""

    def __init__(self, url: str) -> None:
        import tritonclient.grpc as grpcclient

        self.grpc = grpcclient
        self.client = grpcclient.InferenceServerClient(url)

    def search(self, vector: np.ndarray, top_k: int, params: dict[str, int]) -> tuple[list[dict], np.ndarray]:
        r = RETRIEVER
        inputs = [self.grpc.InferInput(r.embedding, [1, vector.shape[-1]], "FP32"),
                  self.grpc.InferInput(r.top_k, [1, 1], "INT32")]
        inputs[0].set_data_from_numpy(vector.reshape(1, -1).astype(np.float32))
        inputs[1].set_data_from_numpy(np.array([[top_k]], np.int32))
        result = self.client.infer(r.model, inputs, parameters=params or None,
                                   outputs=[self.grpc.InferRequestedOutput(n) for n in (r.scores, r.metadata)])
        return [json.loads(m) for m in result.as_numpy(r.metadata).reshape(-1)], result.as_numpy(r.scores)[0]


def run_queries(served: Served, vectors: np.ndarray, qids: list[str], top_k: int,
                params: dict[str, int]) -> tuple[dict[str, dict[str, float]], list[float]]:
    run: dict[str, dict[str, float]] = {}
    latencies = []
    for qid, vector in zip(qids, vectors):
        started = time.perf_counter()
        metadata, scores = served.search(vector, top_k, params)
        latencies.append(time.perf_counter() - started)
        docs: dict[str, float] = {}
        for meta, score in zip(metadata, scores):  # a document's score is its best chunk's
            docs.setdefault(meta["doc_id"], float(score))
        run[qid] = docs
    return run, latencies


def wait_for_version(url: str, version: str, timeout: float = 300) -> dict:
    from tritonrag_client import retriever_stats

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        stats = retriever_stats(url)
        if stats["version"] == version:
            return stats
        time.sleep(0.2)
    raise TimeoutError(f"retriever did not load {version}")


def bench_mode(mode: str, folder: Path, work: Path, types: list[str], queries: dict[str, str],
               qrels: dict[str, dict[str, int]]) -> tuple[list[dict], dict]:
    os.environ["TRITONRAG_CONFIG"] = str(write_config(work, mode))
    from tritonrag.deploy.server import Ports, TritonServer
    from tritonrag.kb.faiss_index import IndexSpec
    from tritonrag.kb.ingest import reindex, update_knowledge_base
    from tritonrag.kb.loaders import load_documents
    from tritonrag.serving.remote_embedder import TritonEmbedder
    from tritonrag.settings import load_settings

    settings = load_settings()
    server = TritonServer(ROOT / "model_repository", settings.home, Ports.choose(0, 0, 0),
                          env={"TRITONRAG_CONFIG": os.environ["TRITONRAG_CONFIG"]}, log_file=work / f"{mode}.log",
                          models=(EMBEDDER.model, RETRIEVER.model))
    server.start(settings.server.startup_timeout_s)
    rows = []
    try:
        docs = load_documents([folder / "corpus.jsonl"])
        embedder = TritonEmbedder(server.grpc_url, settings.embedder, concurrency=4, rows_per_request=32)
        started = time.monotonic()
        report = update_knowledge_base(settings.index_dir, settings, docs, replace_all=True, embedder=embedder,
                                       spec=IndexSpec("flat"))
        build = {"documents": report.manifest.documents, "chunks": report.manifest.chunks,
                 "embedded": report.embedded, "embed_s": report.seconds["embed_s"],
                 "total_s": time.monotonic() - started}
        print(f"[{mode}] {build}", flush=True)
        served = Served(server.grpc_url)
        qids = list(queries)
        vectors = embedder.encode([queries[q] for q in qids])  # the served embedder, concurrent gRPC requests
        top_k = 100 if mode == "doc" else 1000
        for kind in types:
            spec = IndexSpec(kind, settings.index.ivf_nlist, settings.index.hnsw_m, settings.index.hnsw_ef_construction)
            report = reindex(settings.index_dir, spec, settings.index.keep_versions)
            stats = wait_for_version(server.http_url, report.manifest.version)
            for params in SWEEPS[kind]:
                run_queries(served, vectors[:20], qids[:20], top_k, params)  # warm up
                run, latencies = run_queries(served, vectors, qids, top_k, params)
                scores = evaluate(run, qrels)
                row = {"mode": mode, "type": kind, "params": {**stats["index"], **params},
                       "build_s": report.seconds["index_s"], "index_mib": stats["index"]["bytes"] / 2**20,
                       "p50_ms": 1000 * statistics.median(latencies),
                       "p99_ms": 1000 * float(np.percentile(latencies, 99)), **scores}
                rows.append(row)
                print(f"[{mode}] {kind} {params}: nDCG@10 {scores['ndcg@10']:.4f} R@100 {scores['recall@100']:.4f} "
                      f"p50 {row['p50_ms']:.2f} ms", flush=True)
        embedder.close()
    finally:
        server.stop()
    return rows, build


def markdown(rows: list[dict], builds: dict[str, dict], command: str) -> str:
    import faiss

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), "unknown CPU")
    out = [
        "# Retrieval on BEIR SciFact through the served pipeline",
        "",
        f"Command: `{command}`  ",
        f"Date: {time.strftime('%Y-%m-%d')}; machine: {cpu}, {os.cpu_count()} cores; faiss {faiss.__version__}; "
        "embedder all-MiniLM-L6-v2 (served by Triton, CPU).",
        "",
        "300 test queries (qrels/test.tsv), each embedded by the served `embedder` and searched by the served "
        "`retriever` as one gRPC request (top 100 chunks in `doc` mode, 1000 in `chunked` mode, a document ranked "
        "by its best chunk); metrics by pytrec_eval. Latency is the client-side time of one retriever request "
        "(concurrency 1, includes fetching texts and metadata from SQLite). Index MiB is the serialized FAISS "
        "index; build s is the FAISS build from stored vectors (no re-embedding).",
        "",
        f"Published MTEB nDCG@10 for all-MiniLM-L6-v2 on SciFact: {MTEB_NDCG10:.4f}.",
        "",
    ]
    for mode, build in builds.items():
        line = f"- `{mode}` knowledge base: {build['documents']} documents, {build['chunks']} chunks"
        if build["embedded"]:
            line += (f", {build['embedded']} embedded through Triton in {build['embed_s']:.0f} s "
                     f"({build['embedded'] / build['embed_s']:.1f} chunks/s).")
        else:
            line += ": vectors reused from an earlier run in the same --work folder (nothing re-embedded)."
        out.append(line)
    exact = {r["mode"]: r for r in rows if r["type"] == "flat"}
    out += ["", "| mode | index | query setting | nDCG@10 | Recall@100 | ΔR@100 vs exact | build s | index MiB | "
            "p50 ms | p99 ms |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        setting = ", ".join(f"{k}={v}" for k, v in r["params"].items() if k in ("nlist", "m", "nprobe", "ef_search",
                                                                                  "ef_construction")) or "exact"
        delta = r["recall@100"] - exact[r["mode"]]["recall@100"] if r["mode"] in exact else float("nan")
        out.append(f"| {r['mode']} | {r['type']} | {setting} | {r['ndcg@10']:.4f} | {r['recall@100']:.4f} | "
                   f"{delta:+.4f} | {r['build_s']:.2f} | {r['index_mib']:.1f} | {r['p50_ms']:.2f} | "
                   f"{r['p99_ms']:.2f} |")
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", help="Folder with BEIR SciFact (default: shared/data/scifact near the checkout).")
    parser.add_argument("--modes", default="doc", help="Comma-separated: doc, chunked.")
    parser.add_argument("--types", default="flat,ivf,hnsw", help="Comma-separated index types.")
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "scifact_retrieval.md"))
    parser.add_argument("--work", help="Folder for the knowledge bases and logs (default: a temporary one).")
    args = parser.parse_args()
    folder = find_scifact(args.data)
    queries, qrels = load_queries(folder)
    work = Path(args.work or tempfile.mkdtemp(prefix="scifact-"))
    work.mkdir(parents=True, exist_ok=True)
    rows, builds = [], {}
    for mode in args.modes.split(","):
        mode_rows, builds[mode] = bench_mode(mode, folder, work, args.types.split(","), queries, qrels)
        rows += mode_rows
    command = " ".join([".venv/bin/python", *map(shlex.quote, [os.path.relpath(sys.argv[0], ROOT), *sys.argv[1:]])])
    text = markdown(rows, builds, command)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    Path(args.out).with_suffix(".json").write_text(json.dumps({"rows": rows, "builds": builds}, indent=2))
    print(text)


if __name__ == "__main__":
    main()
