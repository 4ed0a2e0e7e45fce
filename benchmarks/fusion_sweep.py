"""How the hybrid search's fusion and side weights trade SciFact against the book, in process (no Triton).

Dense alone, sparse alone, then hybrid with each fusion ("rrf", "weighted") and sparse weights 0.3 / 0.5 / 0.7 /
1.0 (dense weight 1), on the same two knowledge bases as benchmarks/retrieval_modes.py: SciFact's 300 test
queries (nDCG@10, Recall@100, top 100) and the book's answerable answer-quality questions (evidence hit@1/4/16).
The retriever's defaults ([retriever] fusion, sparse_weight) were chosen from this table.

Examples:
    .venv/bin/python benchmarks/fusion_sweep.py --scifact-index /tmp/tritonrag-retrieval-modes/kb-doc
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from answer_quality_scoring import evidence_rank, load_questions
from scifact_retrieval import evaluate, find_scifact, load_queries

from tritonrag.embedding.encoder import TextEmbedder
from tritonrag.kb.batched_search import parse_search, run_searches
from tritonrag.kb.search import KnowledgeBase
from tritonrag.settings import load_settings

WEIGHTS = (0.3, 0.5, 0.7, 1.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("Examples:")[1])
    parser.add_argument("--scifact", help="BEIR SciFact folder (default: ../shared/data/scifact)")
    parser.add_argument("--scifact-index", required=True,
                        help="SciFact knowledge base (abstracts whole), e.g. the one retrieval_modes.py builds")
    parser.add_argument("--book-index", help="the book's knowledge base (default: [retriever] index_dir)")
    parser.add_argument("--out", default="benchmarks/results/fusion_sweep.md")
    args = parser.parse_args()
    s = load_settings()
    embedder = TextEmbedder(s.embedder)
    questions = [q for q in load_questions() if q.answerable]
    book_vectors = embedder.encode_mixed([q.question for q in questions], [""] * len(questions))
    queries, qrels = load_queries(find_scifact(args.scifact))
    qids = list(queries)
    sf_vectors = embedder.encode_mixed([queries[q] for q in qids], [""] * len(qids))
    book, scifact = KnowledgeBase(Path(args.book_index or s.index_dir)), KnowledgeBase(Path(args.scifact_index))
    base = dataclasses.replace(s.retriever, top_k_max=1000)
    configs = [("dense", "-", None), ("sparse", "-", None)]
    configs += [("hybrid", fusion, w) for fusion in ("rrf", "weighted") for w in WEIGHTS]
    rows = []
    for mode, fusion, weight in configs:
        settings = dataclasses.replace(base, sparse_weight=weight or 1.0)
        params = {"mode": mode, **({"fusion": fusion} if mode == "hybrid" else {})}

        def search(kb, vectors, i, text, k, params=params, settings=settings):
            request = parse_search(vectors[i:i + 1], kb.dimension, k, None, params, settings, [text])
            return run_searches(kb, [request], settings)[0].rows[0]

        ranks = [evidence_rank([h.text for h in search(book, book_vectors, i, q.question, 16)], q.evidence_any)
                 for i, q in enumerate(questions)]
        hits = {k: sum(r is not None and r <= k for r in ranks) / len(ranks) for k in (1, 4, 16)}
        run = {q: {h.metadata()["doc_id"]: 100.0 - r for r, h in enumerate(search(scifact, sf_vectors, i,
                                                                                   queries[q], 100))}
               for i, q in enumerate(qids)}
        scores = evaluate(run, qrels)
        rows.append((mode, fusion, "-" if weight is None else weight, hits, scores))
        print(rows[-1], flush=True)
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    lines = ["# Hybrid fusion and weights: SciFact against the book", "", f"Command: `{command}`  ",
             f"Date: {time.strftime('%Y-%m-%d')}; in process, exact (flat) dense index, all-MiniLM-L6-v2, BM25 over "
             "SQLite FTS5; dense weight 1.", "",
             "| mode | fusion | sparse weight | book hit@1 | hit@4 | hit@16 | SciFact nDCG@10 | Recall@100 |",
             "|---|---|---|---|---|---|---|---|"]
    lines += [f"| {m} | {f} | {w} | {h[1]:.3f} | {h[4]:.3f} | {h[16]:.3f} | {sc['ndcg@10']:.4f} | "
              f"{sc['recall@100']:.4f} |" for m, f, w, h, sc in rows]
    lines.append(f"\nThe book: {len(questions)} answerable questions; SciFact: {len(qids)} test queries.")
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
