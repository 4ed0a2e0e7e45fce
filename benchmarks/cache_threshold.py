"""Which [cache] semantic_threshold tells a paraphrase from a different question, for the served embedder.

Embeds every question of benchmarks/repeat_questions.yaml and its hand-written paraphrases with the [embedder] model
(in process, as the served embedder does), then for each threshold reports:
  - paraphrase hits: the share of (question, paraphrase) pairs at or above it (what the semantic tier would answer
    from the cache);
  - wrong hits: the share of questions for which some *other* question (or its paraphrase) is at or above it (an
    answer to a different question would be replayed, if that one were cached first): the cost of the threshold.

    .venv/bin/python benchmarks/cache_threshold.py   # a table; results in benchmarks/results/answer_cache/
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import markdown_table

from tritonrag.settings import load_settings

HERE = Path(__file__).resolve().parent
THRESHOLDS = (0.80, 0.85, 0.88, 0.90, 0.92, 0.94, 0.95, 0.96, 0.98)


def similarity_tables(groups: list[list[str]], vectors: np.ndarray,
                      thresholds: tuple[float, ...] = THRESHOLDS) -> list[dict[str, float]]:
    """Per threshold: the share of (question, paraphrase) pairs at or above it, and the share of questions with a
    text of another group at or above it. ``groups``: each question followed by its paraphrases; ``vectors``: the
    unit vectors of every text, in the same order."""
    owner = np.array([g for g, texts in enumerate(groups) for _ in texts])
    starts = np.cumsum([0] + [len(texts) for texts in groups])[:-1]
    sims = vectors @ vectors.T
    positives = np.array([sims[start, start + j] for g, start in enumerate(starts) for j in range(1, len(groups[g]))])
    hardest = np.array([np.max(np.where(owner != g, sims[start], -1.0)) for g, start in enumerate(starts)])
    return [{"threshold": t, "paraphrase_hits": float(np.mean(positives >= t)),
             "wrong_hits": float(np.mean(hardest >= t))} for t in thresholds]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=Path, default=HERE / "repeat_questions.yaml")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "answer_cache")
    args = parser.parse_args()
    from tritonrag.embedding.encoder import TextEmbedder

    settings = load_settings()
    pool = yaml.safe_load(args.questions.read_text())["questions"]
    groups = [[item["question"], *item.get("paraphrases", [])] for item in pool]
    texts = [text for group in groups for text in group]
    started = time.perf_counter()
    vectors = TextEmbedder(settings.embedder, "cpu").encode(texts)
    vectors = vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
    elapsed = time.perf_counter() - started
    rows = similarity_tables(groups, vectors)
    sims = vectors @ vectors.T
    starts = np.cumsum([0] + [len(g) for g in groups])[:-1]
    pairs = [(groups[g][0], groups[g][j], float(sims[s, s + j])) for g, s in enumerate(starts)
             for j in range(1, len(groups[g]))]
    pairs.sort(key=lambda p: p[2])
    table = markdown_table([{"threshold": f"{r['threshold']:.2f}", "paraphrase hits": f"{r['paraphrase_hits']:.0%}",
                             "wrong hits": f"{r['wrong_hits']:.0%}"} for r in rows],
                           ["threshold", "paraphrase hits", "wrong hits"])
    command = "python benchmarks/cache_threshold.py " + " ".join(sys.argv[1:])
    report = (f"# Semantic cache threshold ({time.strftime('%Y-%m-%d')})\n\n"
              f"Command: `{command.strip()}`; embedder `{settings.embedder.model}`; {len(groups)} questions, "
              f"{len(pairs)} paraphrases ({args.questions.name}); embedded in {elapsed:.1f} s.\n\n"
              "paraphrase hits: (question, paraphrase) pairs at or above the threshold. wrong hits: questions for "
              "which a text of another question is at or above it.\n\n" + table +
              "\n\nLeast similar paraphrases:\n\n" +
              "\n".join(f"- {s:.3f}: {a!r} / {b!r}" for a, b, s in pairs[:5]) + "\n")
    print(report)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "threshold.md").write_text(report)
    (args.out / "threshold.json").write_text(json.dumps({"command": command.strip(), "rows": rows,
                                                         "questions": len(groups), "paraphrases": len(pairs)},
                                                        indent=1))


if __name__ == "__main__":
    main()
