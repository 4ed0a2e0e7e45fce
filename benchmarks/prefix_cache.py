"""vLLM prefix-cache hits on a topic-clustered RAG question mix: prefix caching on vs off, passages in rank order vs
knowledge-base ("document") order ([prompt_builder] passage_order).

The mix: the answer-quality questions (benchmarks/answer_quality_questions.yaml) of the book's six parts with the
most questions, at most five each, asked interleaved (one of each part in turn), as users reading about the same part
of a book would. Retrieval is the project's (the default [retriever] settings: hybrid search, top_k_default
passages), prompts the default [prompt_builder] template wrapped in the model's chat template, once per passage
order. Each engine configuration (prefix caching on / off; otherwise the default [generator] settings, compiled)
runs in a fresh process: its in-process VllmEngine answers the whole mix once to warm up (the first batches of each
shape are slow on CPU), then, the cache reset before each, every prompt of one order, then of the other (--orders),
greedy, max_tokens 96, from 8 closed-loop clients in the mix's order.

Reported: vLLM's prefix-cache hit rate (vllm:prefix_cache_hits / vllm:prefix_cache_queries, prompt tokens, read
in process from vLLM's Prometheus counters), TTFT p50, latency p50 and output tokens/s; offline, from the prompts'
tokens: the share of prompt tokens every prompt shares (the system prompt and the template's head) and the most a
cache could reuse (each prompt's longest common prefix with an earlier prompt, in whole 128-token KV blocks: vLLM's
CPU block size); quality: answers correct (the question set's expected strings), whether cited passages hold the
evidence (citations mapped back through BuiltPrompt.order to the passages best first), and answers identical
between the two orders.

    flock /tmp/tritonrag-bench.lock .venv/bin/python benchmarks/prefix_cache.py --out benchmarks/results/prefix_cache
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from speculative import machine, run_configs, run_level, start_engine

ORDERS = ("rank", "document")
CONFIGS = {"cache-on": {"enable_prefix_caching": True}, "cache-off": {"enable_prefix_caching": False}}
BLOCK = 128  # vLLM's KV block size on CPU (vllm.platforms.cpu): the prefix cache reuses whole blocks


def question_mix(topics: int, per_topic: int) -> list:
    """Answerable questions of the ``topics`` parts with the most, ``per_topic`` each at most, interleaved."""
    from answer_quality_scoring import load_questions

    by_part: dict[str, list] = {}
    for q in load_questions():
        if q.answerable:
            by_part.setdefault(q.part, []).append(q)
    parts = sorted(by_part, key=lambda p: -len(by_part[p]))[:topics]
    groups = [by_part[p][:per_topic] for p in parts]
    return [g[i] for i in range(max(map(len, groups))) for g in groups if i < len(g)]


def build_prompts(topics: int, per_topic: int) -> dict[str, Any]:
    """The mix's questions, their passages (best first) and their prompts in each passage order."""
    from tritonrag.embedding.encoder import TextEmbedder
    from tritonrag.kb.batched_search import parse_search, run_searches
    from tritonrag.kb.search import KnowledgeBase
    from tritonrag.prompts.builder import ContextDocument, prompt_builder
    from tritonrag.settings import load_settings

    settings = load_settings()
    questions = question_mix(topics, per_topic)
    embedder, kb = TextEmbedder(settings.embedder, "cpu"), KnowledgeBase(settings.index_dir)
    passages = []
    for q in questions:
        search = parse_search(embedder.encode_mixed([q.question], [""]), kb.dimension, None, None, {},
                              settings.retriever, [q.question])
        (result,) = run_searches(kb, [search], settings.retriever)
        passages.append([{"chunk_id": h.chunk_id, "text": h.text, "metadata": h.metadata()} for h in result.rows[0]])
    prompts = {}
    for order in ORDERS:
        builder = prompt_builder(replace(settings, prompt_builder=replace(settings.prompt_builder,
                                                                          passage_order=order)))
        built = [builder.build(settings.prompt_builder.template, q.question,
                               [ContextDocument.from_metadata(p["text"], p["metadata"]) for p in found])
                 for q, found in zip(questions, passages)]
        prompts[order] = [{"text": b.text, "order": list(b.order), "passages": b.passages} for b in built]
    return {"questions": questions, "passages": passages, "prompts": prompts}


def worker(config: str, topics: int, per_topic: int, concurrency: int, max_tokens: int, out: Path,
           orders: tuple[str, ...] = ORDERS) -> None:
    mix = build_prompts(topics, per_topic)
    engine, startup = start_engine(CONFIGS[config])
    try:
        # warm-up: a whole level (the first batches of each shape are slow on CPU); the cache is reset after it
        run_level(engine, [p["text"] for p in mix["prompts"][orders[-1]]], concurrency, max_tokens)
        levels = {order: run_level(engine, [p["text"] for p in mix["prompts"][order]], concurrency, max_tokens)
                  for order in orders}
    finally:
        engine.shutdown()
    out.write_text(json.dumps({"config": config, "startup_s": startup, "levels": levels}))


def common_prefix(a: list[int], b: list[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


def prefix_analysis(prompts: list[str], tokenizer) -> dict[str, float]:
    """Prompt tokens shared by every prompt, and reusable from earlier prompts (exact and in whole blocks)."""
    ids = [tokenizer(p, add_special_tokens=False)["input_ids"] for p in prompts]
    total = sum(map(len, ids))
    everyone = min(common_prefix(ids[0], other) for other in ids[1:])
    reuse = [max((common_prefix(ids[i], ids[j]) for j in range(i)), default=0) for i in range(len(ids))]
    # vLLM reuses whole blocks, never the one holding a prompt's last token (it must compute its logits)
    def in_blocks(tokens: list[int], size: int) -> int:
        return sum(min(r, len(ids[i]) - 1) // size * size for i, r in enumerate(tokens))

    out = {"prompts": len(ids), "prompt_tokens": total, "mean_prompt_tokens": total / len(ids),
           "shared_by_all_tokens": everyone, "shared_by_all_share": everyone * len(ids) / total,
           "reusable_tokens": sum(reuse), "reusable_share": sum(reuse) / total,
           "reusable_block_tokens": in_blocks(reuse, BLOCK), "reusable_block_share": in_blocks(reuse, BLOCK) / total}
    for size in (16, 32):  # GPU backends' usual block size, and a small CPU one
        out[f"reusable_block{size}_share"] = in_blocks(reuse, size) / total
        out[f"system_only_block{size}_share"] = in_blocks([everyone] * len(ids), size) / total
    return out


def quality(questions: list, passages: list, prompts: list[dict], rows: list[dict]) -> dict[str, Any]:
    """Answers correct; of the answers citing passages, those whose cited passages (mapped to the sources' order,
    best first) hold the question's evidence."""
    from answer_quality_scoring import matches_any

    from tritonrag.pipeline.citations import CitationFilter

    correct, citing, cited_evidence = 0, 0, 0
    for q, found, prompt, row in zip(questions, passages, prompts, rows):
        correct += q.is_correct(row["text"])
        cite = CitationFilter(prompt["passages"])
        cite.feed(row["text"])
        cite.flush()
        if cite.cited:
            citing += 1
            order = prompt["order"]
            sources = [order[n - 1] + 1 for n in cite.cited]  # BuiltPrompt.source_number
            cited_evidence += any(matches_any(found[s - 1]["text"], q.evidence_any) for s in sources)
    return {"correct": correct, "answers": len(rows), "citing": citing, "cited_evidence": cited_evidence}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default=",".join(CONFIGS))
    parser.add_argument("--topics", type=int, default=6)
    parser.add_argument("--per-topic", type=int, default=5)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--out", type=Path, help="folder for report.md and results.json")
    parser.add_argument("--orders", default="document,rank", help="the passage orders, in the order measured")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        worker(args.worker, args.topics, args.per_topic, args.concurrency, args.max_tokens, args.worker_out,
               tuple(args.orders.split(",")))
        return
    from transformers import AutoTokenizer

    from tritonrag.settings import load_settings

    mix = build_prompts(args.topics, args.per_topic)
    tokenizer = AutoTokenizer.from_pretrained(load_settings().generator.model)
    analysis = {order: prefix_analysis([p["text"] for p in mix["prompts"][order]], tokenizer) for order in ORDERS}
    for order, a in analysis.items():
        print(order, json.dumps(a), flush=True)
    configs = args.configs.split(",")
    results = run_configs(__file__, configs, ["--topics", str(args.topics), "--per-topic", str(args.per_topic),
                                              "--concurrency", str(args.concurrency),
                                              "--max-tokens", str(args.max_tokens), "--orders", args.orders])
    header = ("| prefix caching | passage order | requests | prompt tokens | cache hit rate | TTFT p50 (s) | "
              "latency p50 (s) | output tokens/s | correct | cited passage holds evidence |\n" + "|---" * 10 + "|")
    lines, scores = [], {}
    for config in configs:
        for order in ORDERS:
            lvl = results[config]["levels"][order]
            q = quality(mix["questions"], mix["passages"], mix["prompts"][order], lvl["rows"])
            scores[(config, order)] = q
            lvl["quality"] = q
            hit = "-" if lvl["prefix_cache_hit_rate"] is None else f"{lvl['prefix_cache_hit_rate']:.1%}"
            lines.append(f"| {config.removeprefix('cache-')} | {order} | {lvl['requests']} | "
                         f"{int(lvl['prompt_tokens'])} | {hit} | {lvl['ttft_p50_s']:.2f} | "
                         f"{lvl['latency_p50_s']:.2f} | {lvl['tokens_per_s']:.1f} | {q['correct']}/{q['answers']} | "
                         f"{q['cited_evidence']}/{q['citing']} |")
    same = {}
    for config in configs:
        a, b = (results[config]["levels"][o]["rows"] for o in ORDERS)
        same[config] = sum(x["token_ids"] == y["token_ids"] for x, y in zip(a, b))
    table = "\n".join([header, *lines])
    offline = ("| passage order | prompts | mean prompt tokens | shared by every prompt (system prompt + template "
               "head) | reusable from an earlier prompt | of it in whole 128-token blocks (CPU) | in 16-token blocks "
               "(GPU) | system prompt alone, 16-token blocks |\n" + "|---" * 8 + "|\n"
               + "\n".join(f"| {o} | {a['prompts']} | {a['mean_prompt_tokens']:.0f} | {a['shared_by_all_tokens']} "
                           f"tokens = {a['shared_by_all_share']:.1%} | {a['reusable_share']:.1%} | "
                           f"{a['reusable_block_share']:.1%} | {a['reusable_block16_share']:.1%} | "
                           f"{a['system_only_block16_share']:.1%} |" for o, a in analysis.items()))
    print(table + "\n\n" + offline, flush=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        topics = list(dict.fromkeys(q.part for q in mix["questions"]))
        (args.out / "results.json").write_text(json.dumps(
            {"command": " ".join(sys.argv), "machine": machine(), "questions": [q.id for q in mix["questions"]],
             "topics": topics, "offline": analysis, "identical_answers_rank_vs_document": same,
             "results": results}, indent=1))
        startups = ", ".join(f"{c} {results[c]['startup_s']:.0f}s" for c in configs)
        (args.out / "report.md").write_text(
            f"# Prefix-cache hits on a topic-clustered RAG mix ({time.strftime('%Y-%m-%d %H:%M %Z')})\n\n"
            f"Command: `flock /tmp/tritonrag-bench.lock .venv/bin/python {' '.join(sys.argv)}`\n\n"
            f"Machine: {machine()}. In-process VllmEngine, default [generator] settings (compiled) but "
            f"enable_prefix_caching; engine start: {startups}. Mix: {len(mix['questions'])} answerable questions "
            f"of benchmarks/answer_quality_questions.yaml, {args.topics} parts ({', '.join(topics)}), at most "
            f"{args.per_topic} each, interleaved; default retrieval (top {len(mix['passages'][0])} passages), qa "
            f"template, greedy, max_tokens {args.max_tokens}, {args.concurrency} closed-loop clients. Hit rate: "
            f"vllm:prefix_cache_hits / vllm:prefix_cache_queries (prompt tokens) over the run; the cache is reset "
            f"before each passage order; measured in the order {args.orders}, after a warm-up pass over the "
            f"mix.\n\n{table}\n\nAnswers identical between rank and document order: "
            + ", ".join(f"{c}: {n}/{len(mix['questions'])}" for c, n in same.items())
            + f"\n\nOffline, from the prompts' tokens (the generator's tokenizer):\n\n{offline}\n\nmedian TTFT and "
            f"other per-request values are in results.json.\n")


if __name__ == "__main__":
    main()
