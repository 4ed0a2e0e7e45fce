"""Summaries and the markdown report of the orchestration-overhead benchmark."""

from __future__ import annotations

from typing import Any

import numpy as np
from common import latency_summary, markdown_table
from overhead_clients import IN_PROCESS, Config, Sample

TARGET_P50_MS = 3.0


def summarise(config: Config, samples: list[Sample]) -> dict[str, Any]:
    return {
        **config.row(), "requests": len(samples), "pieces": int(np.median([s.pieces for s in samples])),
        **latency_summary([s.total_s for s in samples], "total_"),
        **latency_summary([s.ttft_s for s in samples], "ttft_"),
    }


def overhead_rows(summary: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """served - in-process, per served configuration (differences of percentiles, not paired differences)."""
    inproc = {r["max_tokens"]: r for r in summary if r["protocol"] == IN_PROCESS}
    rows = []
    for r in summary:
        base = inproc.get(r["max_tokens"])
        if r["protocol"] == IN_PROCESS or base is None:
            continue
        row = {"variant": r["variant"], "config": r["config"], "protocol": r["protocol"], "max_tokens": r["max_tokens"]}
        for stat in ("p50", "p99", "mean"):
            row[f"served_{stat}_ms"] = r[f"total_{stat}_ms"]
            row[f"inproc_{stat}_ms"] = base[f"total_{stat}_ms"]
            row[f"overhead_{stat}_ms"] = r[f"total_{stat}_ms"] - base[f"total_{stat}_ms"]
        row["overhead_ttft_p50_ms"] = r["ttft_p50_ms"] - base["ttft_p50_ms"]
        row["meets_target"] = "yes" if row["overhead_p50_ms"] <= TARGET_P50_MS else "no"
        rows.append(row)
    return rows


def decomposition(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Fixed cost per request (max_tokens = 1) and cost per extra token, per variant and protocol."""
    out = []
    by = {(r["variant"], r["protocol"], r["max_tokens"]): r for r in rows}
    for (variant, protocol, tokens), r in by.items():
        one = by.get((variant, protocol, 1))
        if tokens == 1 or one is None:
            continue
        out.append({
            "variant": variant, "protocol": protocol,
            "fixed_p50_ms": one["overhead_p50_ms"], "fixed_mean_ms": one["overhead_mean_ms"],
            "per_token_p50_us": (r["overhead_p50_ms"] - one["overhead_p50_ms"]) * 1000 / (tokens - 1),
            "per_token_mean_us": (r["overhead_mean_ms"] - one["overhead_mean_ms"]) * 1000 / (tokens - 1),
            "tokens": tokens,
        })
    return out


def report(result: dict[str, Any]) -> str:
    rows = result["overhead"]
    lines = [
        "Per-request latency, concurrency 1 (ms). Served = Triton `rag` (BLS: embedder -> retriever -> "
        "generator; the prompt built in rag's process unless [rag] build_prompt_in_process = false, then BLS to "
        "prompt_builder) with stand-in embedder and generator; in-process = the same functions in one process. "
        f"Overhead = served - in-process; target <= {TARGET_P50_MS:g} ms at p50. Pieces = responses a client "
        "received per request (the text of tokens already queued travels in one response).",
        "",
        markdown_table(rows, ["variant", "config", "inproc_p50_ms", "served_p50_ms", "overhead_p50_ms",
                              "inproc_p99_ms", "served_p99_ms", "overhead_p99_ms", "overhead_mean_ms",
                              "overhead_ttft_p50_ms", "meets_target"],
                       ["variant", "served config", "in-process p50", "served p50", "overhead p50",
                        "in-process p99", "served p99", "overhead p99", "overhead mean", "TTFT overhead p50",
                        f"p50 <= {TARGET_P50_MS:g} ms"]),
    ]
    if result["decomposition"]:
        lines += ["", "Overhead = fixed cost per request + cost per extra streamed token (max_tokens=N vs 1):", "",
                  markdown_table(result["decomposition"],
                                 ["variant", "protocol", "fixed_p50_ms", "fixed_mean_ms", "per_token_p50_us",
                                  "per_token_mean_us", "tokens"],
                                 ["variant", "protocol", "fixed p50 (ms)", "fixed mean (ms)", "per token p50 (µs)",
                                  "per token mean (µs)", "N"])]
    if result["stages"]:
        lines += ["", "Where served requests spend time: mean per call of each model over the sequential requests of "
                  "all configurations (µs, Triton's statistics; for rag and generator, execute() only, not the "
                  "responses streamed after it returns). In-process rows: each stage of the same pipeline called in "
                  "process; generator = the rest of the request (sampling validation, sources, every token "
                  "through the engine's sink):", "",
                  markdown_table(result["stages"], ["variant", "model", "calls", "queue_us", "input_us", "infer_us",
                                                    "output_us", "total_us"],
                                 ["variant", "model", "calls", "queue", "compute input", "compute infer",
                                  "compute output", "total"])]
    if result["throughput"]:
        lines += ["", "Closed loop (each worker sends its next request when the last one ends):", "",
                  markdown_table(result["throughput"],
                                 ["variant", "config", "concurrency", "requests", "req_per_s", "total_p50_ms",
                                  "total_p99_ms"],
                                 ["variant", "config", "concurrency", "requests", "req/s", "p50 (ms)", "p99 (ms)"])]
    lines += ["", "All configurations (ms):", "",
              markdown_table(result["summary"],
                             ["variant", "config", "requests", "pieces", "total_p50_ms", "total_p90_ms",
                              "total_p99_ms", "total_mean_ms", "ttft_p50_ms", "ttft_p99_ms"],
                             ["variant", "config", "requests", "pieces", "p50", "p90", "p99", "mean", "TTFT p50",
                              "TTFT p99"])]
    return "\n".join(lines)
