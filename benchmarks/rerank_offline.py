"""Reranking measured offline: the default bi-encoder re-scorer (all-mpnet-base-v2) over the hybrid candidates, with
every passage embedded once and cached on disk, for corpora where the served reranker would take too long on a
2-core CPU (SciFact's candidates: ~4,000 abstracts at ~3 passages/s, half an hour; each served configuration again).

The candidates are the retriever's (in process: the same batched_search the served retriever runs), the scores the
cosine of mpnet embeddings (what the served bi-encoder reranker computes), the order that of the pipeline's rerank
step (`none`: by the reranker's score; `rrf`: fusing retrieval and reranker ranks). SciFact: nDCG@10 and
Recall@100 (the top `--depth` reordered, the rest in retrieval order); the book: evidence hit@1/4/16.

Examples:
    .venv/bin/python benchmarks/rerank_offline.py --scifact-index /tmp/tritonrag-retrieval-modes/kb-doc
"""

from __future__ import annotations

import argparse
import dataclasses
import shlex
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from answer_quality_scoring import evidence_rank, load_questions
from scifact_retrieval import evaluate, find_scifact, load_queries

from tritonrag.embedding.encoder import TextEmbedder
from tritonrag.kb.batched_search import parse_search, run_searches
from tritonrag.kb.search import KnowledgeBase
from tritonrag.pipeline.steps import rerank_order
from tritonrag.settings import load_settings


class CachedEncoder:
    """mpnet embeddings by text, kept in an .npz beside the knowledge base so a second run embeds nothing."""

    def __init__(self, model: str, path: Path) -> None:
        from sentence_transformers import SentenceTransformer

        self.model = SentenceTransformer(model, device="cpu")
        self.model.max_seq_length = min(self.model.max_seq_length or 384, 384)
        self.path = path
        self.vectors: dict[str, np.ndarray] = {}
        if path.exists():
            data = np.load(path, allow_pickle=False)
            self.vectors = dict(zip(data["texts"].tolist(), data["vectors"]))

    def encode(self, texts: list[str]) -> None:
        missing = sorted({t for t in texts if t not in self.vectors})
        if missing:
            print(f"embedding {len(missing)} texts with {self.model}", flush=True)
            vectors = self.model.encode(missing, batch_size=16, normalize_embeddings=True, show_progress_bar=True)
            self.vectors.update(zip(missing, np.asarray(vectors, np.float32)))
            np.savez(self.path, texts=np.array(list(self.vectors)), vectors=np.stack(list(self.vectors.values())))

    def score(self, query: str, passages: list[str]) -> np.ndarray:
        return np.array([float(self.vectors[query] @ self.vectors[p]) for p in passages], np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("Examples:")[1])
    parser.add_argument("--scifact", help="BEIR SciFact folder (default: ../shared/data/scifact)")
    parser.add_argument("--scifact-index", required=True, help="SciFact knowledge base (abstracts whole)")
    parser.add_argument("--book-index", help="the book's knowledge base (default: [retriever] index_dir)")
    parser.add_argument("--depth", type=int, default=20, help="candidates reranked (default 20, rerank_candidates)")
    parser.add_argument("--scifact-queries", type=int, default=0,
                        help="only the first N SciFact test queries (0: all 300; each needs ~20 new embeddings)")
    parser.add_argument("--weights", default="0.3,1.0", help="hybrid sparse weights to compare (default 0.3,1.0)")
    parser.add_argument("--cache", default="/tmp/tritonrag-rerank-cache.npz")
    parser.add_argument("--out", default="benchmarks/results/rerank_offline.md")
    args = parser.parse_args()
    s = load_settings()
    first = TextEmbedder(s.embedder)
    encoder = CachedEncoder(s.reranker.model, Path(args.cache))
    retriever = dataclasses.replace(s.retriever, top_k_max=1000)
    corpora: list = []
    queries, qrels = load_queries(find_scifact(args.scifact))
    qids = list(queries)[:args.scifact_queries or None]
    qrels = {q: qrels[q] for q in qids}
    corpora.append(("scifact", KnowledgeBase(Path(args.scifact_index)), qids, [queries[q] for q in qids], 100))
    questions = [q for q in load_questions() if q.answerable]
    corpora.append(("book", KnowledgeBase(Path(args.book_index or s.index_dir)), [q.id for q in questions],
                    [q.question for q in questions], 16))
    rows = []
    for corpus, kb, ids, texts, top_k in corpora:
        vectors = first.encode_mixed(texts, [""] * len(texts))
        for weight in (float(w) for w in args.weights.split(",")):
            label = f"hybrid, sparse weight {weight:g}" + (" (default)" if weight == s.retriever.sparse_weight else "")
            settings = dataclasses.replace(retriever, sparse_weight=weight)
            hits = []
            for i, text in enumerate(texts):
                request = parse_search(vectors[i:i + 1], kb.dimension, top_k, None, {"mode": "hybrid"}, settings,
                                       [text])
                hits.append(run_searches(kb, [request], settings)[0].rows[0])
            encoder.encode(texts + [h.text for row in hits for h in row[:args.depth]])
            for fusion in (None, "none", "rrf"):
                ranked = []
                for text, row in zip(texts, hits):
                    if fusion is None:
                        ranked.append(row)
                        continue
                    head = row[:args.depth]
                    new, _, _ = rerank_order(encoder.score(text, [h.text for h in head]).tolist(), fusion)
                    ranked.append([head[j] for j in new] + row[args.depth:])
                name = label if fusion is None else f"{label} + rerank" + ("" if fusion == "none" else " (rrf)")
                if corpus == "scifact":
                    run = {q: {h.metadata()["doc_id"]: float(len(row) - r) for r, h in reversed(list(enumerate(row)))}
                           for q, row in zip(ids, ranked)}
                    scores = evaluate(run, qrels)
                    rows.append((f"SciFact ({len(ids)} queries)", name, f"nDCG@10 {scores['ndcg@10']:.4f}",
                                 f"Recall@100 {scores['recall@100']:.4f}"))
                else:
                    ranks = [evidence_rank([h.text for h in row], q.evidence_any) for q, row in zip(questions, ranked)]
                    hit = {k: sum(r is not None and r <= k for r in ranks) / len(ranks) for k in (1, 4, 16)}
                    rows.append(("book", name, f"hit@1/4/16 {hit[1]:.2f} / {hit[4]:.2f} / {hit[16]:.2f}", ""))
                print(rows[-1], flush=True)
    command = "python " + " ".join(shlex.quote(a) for a in sys.argv)
    lines = ["# Reranking, measured offline (cached re-scorer embeddings)", "", f"Command: `{command}`  ",
             f"Date: {time.strftime('%Y-%m-%d')}; reranker {Path(s.reranker.model).name} (bi-encoder), top "
             f"{args.depth} candidates reranked; first stage all-MiniLM-L6-v2 + BM25 (FTS5), weighted fusion.", "",
             "| corpus | configuration | quality | |", "|---|---|---|---|"]
    lines += [f"| {c} | {n} | {a} | {b} |" for c, n, a, b in rows]
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
