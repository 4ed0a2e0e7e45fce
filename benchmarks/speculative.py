"""N-gram (prompt-lookup) speculative decoding on RAG prompts, in-process vLLM, with and without it.

Every configuration runs in a fresh process (its own engine, its own vLLM counters) with the project's engine
(tritonrag.generation.vllm_engine.VllmEngine) built from the default settings, changed only by the configuration's
[generator] speculative keys. The prompts are the demo's RAG prompts (the sample book's questions, retrieval + the
[prompt_builder] template, as benchmarks/generator_throughput.py builds them); greedy, max_tokens 96, no stop strings,
from closed-loop clients at each concurrency (each sends its next request when the previous one ends). vLLM's prefix
cache is on (the default) and reset before each level, so a level never hits what an earlier level left.

Reported per configuration and level: output tokens/s, TTFT p50, request latency p50, the draft acceptance rate
(vLLM's vllm:spec_decode_num_accepted_tokens / vllm:spec_decode_num_draft_tokens), and whether each answer's tokens
are identical to the answer without speculation at the same level.

    flock /tmp/tritonrag-bench.lock .venv/bin/python benchmarks/speculative.py \\
        --out benchmarks/results/speculative
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

CONFIGS = {
    "off": {"speculative_method": ""},
    "ngram-k2": {"speculative_method": "ngram", "speculative_tokens": 2, "prompt_lookup_max": 4,
                 "prompt_lookup_min": 2},
    "ngram-k4": {"speculative_method": "ngram", "speculative_tokens": 4, "prompt_lookup_max": 4,
                 "prompt_lookup_min": 2},
}


def vllm_counters() -> dict[str, float]:
    """vLLM's counters in this process (summed over labels): prefix cache queries/hits, speculative drafts..."""
    from vllm.v1.metrics.reader import Counter, get_metrics_snapshot

    out: dict[str, float] = {}
    for metric in get_metrics_snapshot():
        if isinstance(metric, Counter):
            out[metric.name] = out.get(metric.name, 0) + metric.value
    return out


def start_engine(changes: dict[str, Any]):
    """The project's VllmEngine, from the default settings with ``changes`` to [generator]."""
    from tritonrag.generation.vllm_engine import VllmEngine
    from tritonrag.settings import load_settings

    settings = replace(load_settings().generator, engine="vllm", **changes)
    started = time.perf_counter()
    engine = VllmEngine(settings)
    return engine, time.perf_counter() - started


def run_level(engine, prompts: list[str], concurrency: int, max_tokens: int,
              reset_cache: bool = True) -> dict[str, Any]:
    """Closed-loop ``concurrency`` clients over ``prompts`` (in order); per request: TTFT, latency, token ids."""
    from vllm import SamplingParams as VllmSamplingParams
    from vllm.sampling_params import RequestOutputKind

    sampling = VllmSamplingParams(max_tokens=max_tokens, temperature=0, output_kind=RequestOutputKind.DELTA)
    ids = iter(range(10**9))

    async def one(i: int, rows: list) -> None:
        started, ttft, tokens, text = time.perf_counter(), None, [], []
        async for output in engine.engine.generate(prompts[i], sampling, f"bench-{concurrency}-{next(ids)}"):
            piece = output.outputs[0]
            if ttft is None and piece.token_ids:
                ttft = time.perf_counter() - started
            tokens += list(piece.token_ids)
            text.append(piece.text)
        rows[i] = {"prompt": i, "ttft_s": ttft or 0.0, "latency_s": time.perf_counter() - started,
                   "tokens": len(tokens), "token_ids": tokens, "text": "".join(text)}

    async def level() -> tuple[float, list]:
        for _ in range(40 if reset_cache else 0):  # the previous level's blocks may take a moment to be freed
            if await engine.engine.reset_prefix_cache():
                break
            await asyncio.sleep(0.25)
        else:
            if reset_cache:
                raise RuntimeError("vLLM did not reset its prefix cache (blocks still in use)")
        pending = list(range(len(prompts)))[::-1]
        rows: list = [None] * len(prompts)

        async def worker():
            while pending:
                await one(pending.pop(), rows)

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        return time.perf_counter() - started, rows

    before = vllm_counters()
    seconds, rows = asyncio.run_coroutine_threadsafe(level(), engine._loop).result()
    after = vllm_counters()
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    tokens = sum(r["tokens"] for r in rows)
    drafted = delta.get("vllm:spec_decode_num_draft_tokens", 0)
    queries = delta.get("vllm:prefix_cache_queries", 0)
    return {
        "concurrency": concurrency, "requests": len(rows), "output_tokens": tokens, "seconds": seconds,
        "tokens_per_s": tokens / seconds,
        "ttft_p50_s": statistics.median(r["ttft_s"] for r in rows),
        "latency_p50_s": statistics.median(r["latency_s"] for r in rows),
        "draft_tokens": drafted, "accepted_tokens": delta.get("vllm:spec_decode_num_accepted_tokens", 0),
        "drafts": delta.get("vllm:spec_decode_num_drafts", 0),
        "acceptance_rate": (delta.get("vllm:spec_decode_num_accepted_tokens", 0) / drafted) if drafted else None,
        "prefix_cache_queries": queries, "prefix_cache_hits": delta.get("vllm:prefix_cache_hits", 0),
        "prefix_cache_hit_rate": (delta.get("vllm:prefix_cache_hits", 0) / queries) if queries else None,
        "prompt_tokens": delta.get("vllm:prompt_tokens", 0),
        "rows": rows,
    }


def worker(config: str, levels: list[int], max_tokens: int, out: Path, eager: bool = False) -> None:
    from generator_throughput import rag_prompts

    prompts = rag_prompts(16)
    engine, startup = start_engine({**CONFIGS[config], **({"enforce_eager": True} if eager else {})})
    try:
        run_level(engine, prompts[:1], 1, max_tokens)  # warm-up
        results = [run_level(engine, prompts[: 4 if c == 1 else 16], c, max_tokens) for c in levels]
    finally:
        engine.shutdown()
    out.write_text(json.dumps({"config": config, "settings": CONFIGS[config], "startup_s": startup,
                               "levels": results}))


def run_configs(script: str, configs: list[str], extra: list[str]) -> dict[str, dict]:
    """Run ``script --worker CONFIG`` for each configuration, each in a fresh process; their JSON results."""
    out = {}
    for config in configs:
        with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as fh:
            path = Path(fh.name)
        print(f"[{config}] starting...", flush=True)
        started = time.perf_counter()
        subprocess.run([sys.executable, script, "--worker", config, "--worker-out", str(path), *extra], check=True)
        out[config] = json.loads(path.read_text())
        path.unlink()
        print(f"[{config}] done in {time.perf_counter() - started:.0f}s", flush=True)
    return out


def machine() -> str:
    return f"{platform.platform()}, {os.cpu_count()} cores, no GPU"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--configs", default="off,ngram-k2", help=f"comma-separated: {', '.join(CONFIGS)}")
    parser.add_argument("--concurrency", default="1,8,16")
    parser.add_argument("--max-tokens", type=int, default=96)
    parser.add_argument("--out", type=Path, help="folder for report.md and results.json")
    parser.add_argument("--eager", action="store_true", help="enforce_eager (exploration only: skips compiling)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--worker-out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    if args.worker:
        worker(args.worker, levels, args.max_tokens, args.worker_out, args.eager)
        return
    configs = args.configs.split(",")
    results = run_configs(__file__, configs, ["--concurrency", args.concurrency, "--max-tokens", str(args.max_tokens),
                                                   *(["--eager"] if args.eager else [])])
    base = results.get("off")
    header = ("| config | concurrency | requests | output tokens | tokens/s | TTFT p50 (s) | latency p50 (s) | "
              "acceptance | identical to off |\n" + "|---" * 9 + "|")
    lines = []
    for config in configs:
        for lvl in results[config]["levels"]:
            same = "-"
            if base is not None and config != "off":
                ref = {r["prompt"]: r["token_ids"] for r in next(b for b in base["levels"]
                                                               if b["concurrency"] == lvl["concurrency"])["rows"]}
                equal = sum(r["token_ids"] == ref.get(r["prompt"]) for r in lvl["rows"])
                lvl["identical_to_off"] = equal
                same = f"{equal}/{len(lvl['rows'])}"
            acc = "-" if lvl["acceptance_rate"] is None else f"{lvl['acceptance_rate']:.1%}"
            lines.append(f"| {config} | {lvl['concurrency']} | {lvl['requests']} | {lvl['output_tokens']} | "
                         f"{lvl['tokens_per_s']:.1f} | {lvl['ttft_p50_s']:.2f} | {lvl['latency_p50_s']:.2f} | "
                         f"{acc} | {same} |")
    if base is not None:  # greedy repeatability without speculation, across levels (batching changes kernels)
        by_level = {b["concurrency"]: {r["prompt"]: r["token_ids"] for r in b["rows"]} for b in base["levels"]}
        first = by_level[levels[0]]
        cross = {c: sum(rows[p] == first[p] for p in first if p in rows) for c, rows in by_level.items()}
    table = "\n".join([header, *lines])
    print(table, flush=True)
    if args.out:
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "results.json").write_text(json.dumps(
            {"command": " ".join(sys.argv), "machine": machine(), "max_tokens": args.max_tokens,
             "results": results}, indent=1))
        startups = ", ".join(f"{c} {results[c]['startup_s']:.0f}s" for c in configs)
        note = ""
        if base is not None:
            note = ("\nWithout speculation, the first prompts' answers at each level against concurrency "
                    f"{levels[0]} ({len(first)} prompts): " + ", ".join(f"c={c}: {n}/{len(first)} identical"
                                                                       for c, n in cross.items()) + ".\n")
        (args.out / "report.md").write_text(
            f"# N-gram speculative decoding on RAG prompts ({time.strftime('%Y-%m-%d %H:%M %Z')})\n\n"
            f"Command: `flock /tmp/tritonrag-bench.lock .venv/bin/python {' '.join(sys.argv)}`\n\n"
            f"Machine: {machine()}. In-process VllmEngine, default settings (torch.compile, prefix cache on and reset "
            f"before each level) with the configuration's speculative keys. Prompts: the demo's RAG prompts (16 "
            f"questions of benchmarks/common.py, top-4 dense retrieval, qa template; 4 at concurrency 1, 16 at 8 and "
            f"16), greedy, max_tokens {args.max_tokens}, no stop strings, closed loop. Engine start: {startups}.\n\n"
            f"Configurations: " + "; ".join(f"{c} = {json.dumps(CONFIGS[c])}" for c in configs) + "\n\n"
            f"{table}\n{note}")


if __name__ == "__main__":
    main()
