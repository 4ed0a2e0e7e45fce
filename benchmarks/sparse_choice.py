"""Which sparse (BM25) index the knowledge base keeps: SQLite FTS5 inside the docstore, or bm25s beside it.

Both index BEIR SciFact's 5183 abstracts (title + text) in process, with the same query analysis (lower case,
English stop words dropped, Porter stemming) and BM25 k1 = 1.2, b = 0.75; the 300 test queries are searched one at
a time for the top 100. Reports nDCG@10 and Recall@100 (pytrec_eval, as BEIR does), build seconds, index size on
disk, and query latency p50/p99; also a filtered query (one document's chunks, the docstore's metadata filters).

Examples:
    .venv/bin/python benchmarks/sparse_choice.py
    .venv/bin/python benchmarks/sparse_choice.py --data ../shared/data/scifact --out benchmarks/results/sparse_choice.md
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scifact_retrieval import evaluate, find_scifact, load_queries

from tritonrag.kb.sparse import fts_query


def load_corpus(folder: Path) -> tuple[list[str], list[str], list[str]]:
    ids, titles, texts = [], [], []
    with open(folder / "corpus.jsonl") as fh:
        for line in fh:
            row = json.loads(line)
            ids.append(row["_id"])
            titles.append(row.get("title", ""))
            texts.append(row["text"])
    return ids, titles, texts


def bench_fts5(work: Path, ids: list[str], titles: list[str], texts: list[str], queries: list[str],
               k: int) -> tuple[dict, list[list[tuple[int, float]]]]:
    path = work / "fts.sqlite"
    started = time.perf_counter()
    db = sqlite3.connect(path)
    db.execute("CREATE VIRTUAL TABLE fts USING fts5(title, text, tokenize='porter unicode61 remove_diacritics 2')")
    db.executemany("INSERT INTO fts(rowid, title, text) VALUES (?, ?, ?)",
                   [(i, t, x) for i, (t, x) in enumerate(zip(titles, texts))])
    db.commit()
    db.execute("INSERT INTO fts(fts) VALUES ('optimize')")
    db.commit()
    build_s = time.perf_counter() - started
    results, latencies = [], []
    for q in queries:
        started = time.perf_counter()
        match = fts_query(q)
        rows = db.execute("SELECT rowid, -rank FROM fts WHERE fts MATCH ? ORDER BY rank LIMIT ?",
                          (match, k)).fetchall() if match else []
        latencies.append(time.perf_counter() - started)
        results.append(rows)
    filtered = []
    for q in queries[:100]:
        started = time.perf_counter()
        db.execute("SELECT rowid, -bm25(fts) FROM fts WHERE fts MATCH ? AND rowid IN (?, ?, ?) ORDER BY bm25(fts) "
                   "LIMIT ?", (fts_query(q), 1, 2, 3, k)).fetchall()
        filtered.append(time.perf_counter() - started)
    db.close()
    return {"build_s": build_s, "bytes": path.stat().st_size, "latencies": latencies, "filtered": filtered}, results


def bench_bm25s(work: Path, ids: list[str], titles: list[str], texts: list[str], queries: list[str],
                k: int) -> tuple[dict, list[list[tuple[int, float]]]]:
    import bm25s
    import Stemmer

    stemmer = Stemmer.Stemmer("english")
    started = time.perf_counter()
    corpus = bm25s.tokenize([f"{t} {x}" for t, x in zip(titles, texts)], stopwords="en", stemmer=stemmer,
                            show_progress=False)
    retriever = bm25s.BM25(k1=1.2, b=0.75, method="lucene")
    retriever.index(corpus, show_progress=False)
    retriever.save(work / "bm25s")
    build_s = time.perf_counter() - started
    size = sum(p.stat().st_size for p in (work / "bm25s").iterdir())
    results, latencies = [], []
    for q in queries:
        started = time.perf_counter()
        tokens = bm25s.tokenize([q], stopwords="en", stemmer=stemmer, show_progress=False)
        docs, scores = retriever.retrieve(tokens, k=k, show_progress=False)
        latencies.append(time.perf_counter() - started)
        results.append([(int(d), float(s)) for d, s in zip(docs[0], scores[0]) if s > 0])
    filtered = []
    mask = np.zeros(len(ids), np.float32)
    mask[[1, 2, 3]] = 1
    for q in queries[:100]:
        started = time.perf_counter()
        tokens = bm25s.tokenize([q], stopwords="en", stemmer=stemmer, show_progress=False)
        retriever.retrieve(tokens, k=3, weight_mask=mask, show_progress=False)
        filtered.append(time.perf_counter() - started)
    return {"build_s": build_s, "bytes": size, "latencies": latencies, "filtered": filtered}, results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("Examples:")[1])
    parser.add_argument("--data", help="BEIR SciFact folder (default: ../shared/data/scifact)")
    parser.add_argument("--out", default="benchmarks/results/sparse_choice.md")
    args = parser.parse_args()
    folder = find_scifact(args.data)
    ids, titles, texts = load_corpus(folder)
    queries, qrels = load_queries(folder)
    qids = list(queries)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, bench in (("SQLite FTS5", bench_fts5), ("bm25s", bench_bm25s)):
            stats, results = bench(Path(tmp), ids, titles, texts, [queries[q] for q in qids], 100)
            run = {qid: {ids[d]: s for d, s in hits} for qid, hits in zip(qids, results)}
            scores = evaluate(run, qrels)
            lat, flt = stats["latencies"], stats["filtered"]
            rows.append((name, scores["ndcg@10"], scores["recall@100"], stats["build_s"], stats["bytes"] / 2**20,
                         1000 * statistics.median(lat), 1000 * float(np.percentile(lat, 99)),
                         1000 * statistics.median(flt)))
            print(f"{name}: nDCG@10 {scores['ndcg@10']:.4f} R@100 {scores['recall@100']:.4f} "
                  f"build {stats['build_s']:.2f} s p50 {rows[-1][5]:.2f} ms", flush=True)
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    lines = ["# Sparse index: SQLite FTS5 vs bm25s on BEIR SciFact", "", f"Command: `{command}`  ",
             f"Date: {time.strftime('%Y-%m-%d')}; {os.cpu_count()} cores; in process, one query at a time, top 100.",
             "", "| index | nDCG@10 | Recall@100 | build s | size MiB | p50 ms | p99 ms | filtered p50 ms |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {r[0]} | {r[1]:.4f} | {r[2]:.4f} | {r[3]:.2f} | {r[4]:.1f} | {r[5]:.2f} | {r[6]:.2f} | {r[7]:.2f} |"
              for r in rows]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
