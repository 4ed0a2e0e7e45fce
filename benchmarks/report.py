"""The suite's Markdown summary: targets with ratios first, then every table, the plots and the exact commands."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from common import fmt, machine_markdown, markdown_table, write_json

from tritonrag.serving.contract import EMBEDDER, GENERATOR, RETRIEVER

RAG_COLUMNS = ["system", "concurrency", "requests", "errors", "req_per_s", "tokens_per_s", "ttft_p50_ms",
               "ttft_p99_ms", "latency_p50_ms", "latency_p99_ms"]
RAG_HEADERS = ["system", "c", "requests", "errors", "req/s", "tokens/s", "TTFT p50 ms", "TTFT p99 ms",
               "latency p50 ms", "latency p99 ms"]


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a is not None and b else None


def _verdict(value: float | None, target: float, higher_is_better: bool) -> str:
    if value is None:
        return "not measured"
    met = value >= target if higher_is_better else value <= target
    return "met" if met else "**missed**"


def best_served(perf_rows: list[dict[str, Any]], model: str) -> dict[str, Any] | None:
    """The highest-throughput perf_analyzer row of a model over protocols and concurrency levels (failed levels,
    which have no throughput, are left out)."""
    rows = [r for r in perf_rows if r["model"] == model and r.get("infer_per_s") is not None]
    return max(rows, key=lambda r: r["infer_per_s"]) if rows else None


def target_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each as measured value, reference, ratio and verdict."""
    rows: list[dict[str, Any]] = []
    ours = {r["concurrency"]: r for r in results.get("rag tritonrag") or []}
    theirs = {r["concurrency"]: r for r in results.get("rag ray-serve") or []}
    for c in (8, 16):
        if c not in ours and c not in theirs:
            continue
        a, b = ours.get(c, {}), theirs.get(c, {})
        ratio = _ratio(a.get("req_per_s"), b.get("req_per_s"))
        rows.append({"target": f"RAG throughput at c={c} >= 3x Ray Serve", "ours": a.get("req_per_s"),
                     "reference": b.get("req_per_s"), "unit": "req/s", "ratio": ratio,
                     "verdict": _verdict(ratio, 3.0, True)})
        ratio = _ratio(a.get("ttft_p50_ms"), b.get("ttft_p50_ms"))
        rows.append({"target": f"RAG p50 TTFT at c={c} <= 1/3 of Ray Serve", "ours": a.get("ttft_p50_ms"),
                     "reference": b.get("ttft_p50_ms"), "unit": "ms", "ratio": ratio,
                     "verdict": _verdict(ratio, 1 / 3, False)})
    transformers = {r["concurrency"]: r for r in results.get("rag ray-serve-transformers") or []}
    for c, b in transformers.items():
        a = ours.get(c, {})
        rows.append({"target": f"RAG throughput at c={c} vs Ray Serve with a transformers Chat (reported)",
                     "ours": a.get("req_per_s"), "reference": b["req_per_s"], "unit": "req/s",
                     "ratio": _ratio(a.get("req_per_s"), b["req_per_s"]), "verdict": "reported"})
        rows.append({"target": f"RAG p50 TTFT at c={c} vs Ray Serve with a transformers Chat (reported)",
                     "ours": a.get("ttft_p50_ms"), "reference": b["ttft_p50_ms"], "unit": "ms",
                     "ratio": _ratio(a.get("ttft_p50_ms"), b["ttft_p50_ms"]), "verdict": "reported"})
    limits = results.get("limits") or []
    perf = results.get("perf") or []
    for model, unit in ((EMBEDDER.model, "texts/s"), (RETRIEVER.model, "queries/s")):
        served = best_served(perf, model)
        limit = max((r["limit"] for r in limits if r["component"] == model), default=None)
        value = served["infer_per_s"] if served else None
        ratio = _ratio(value, limit)
        where = f" ({served['protocol']}, c={served['concurrency']})" if served else ""
        rows.append({"target": f"served {model}{where} >= 90% of in-process", "ours": value, "reference": limit,
                     "unit": unit, "ratio": ratio, "verdict": _verdict(ratio, 0.9, True)})
    generator = {r["concurrency"]: r for r in results.get("generator") or []}
    for row in limits:
        if row["component"] == GENERATOR.model and row.get("concurrency") in generator:
            served = generator[row["concurrency"]]["tokens_per_s"]
            rows.append({"target": f"served generator at c={row['concurrency']} vs in-process vLLM (no target)",
                         "ours": served, "reference": row["limit"], "unit": "tokens/s",
                         "ratio": _ratio(served, row["limit"]), "verdict": "reported"})
    overhead = results.get("overhead") or {}
    for row in overhead.get("overhead", []):
        if row["variant"] == "committed":
            rows.append({"target": f"orchestration overhead p50 <= 3 ms ({row['config']})",
                         "ours": row["overhead_p50_ms"], "reference": row["inproc_p50_ms"],
                         "unit": "ms (reference: in-process p50)", "ratio": None,
                         "verdict": _verdict(row["overhead_p50_ms"], 3.0, False)})
    return rows


def _rag_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    """End-to-end RAG rows of every system (keys "rag <system>"), ours first."""
    names = sorted((k for k in results if k.startswith("rag ")), key=lambda k: (k != "rag tritonrag", k))
    return [row for name in names for row in results[name] or []]


def _section(title: str, body: str) -> str:
    return f"\n## {title}\n\n{body}\n"


def _plots(out: Path, results: dict[str, Any]) -> list[str]:
    import plots

    folder = out / "plots"
    folder.mkdir(exist_ok=True)
    rag = _rag_rows(results)
    made = []
    if rag:
        made += [plots.rag_throughput(rag, folder / "rag_throughput.png"),
                 plots.rag_latency(rag, folder / "rag_latency.png"),
                 plots.rag_ttft(rag, folder / "rag_ttft.png")]
    if results.get("perf"):
        made.append(plots.model_throughput(results["perf"], folder / "model_throughput.png"))
    return [f"![{p.stem}](plots/{p.name})" for p in made]


def write(out: Path, mode: str, results: dict[str, Any], failures: dict[str, str], timings: dict[str, float],
          commands: list[str], machine: dict[str, Any], invocation: str, total_s: float) -> Path:
    """Write summary.md (and results.json with every row) into ``out``; returns the summary's path."""
    serializable = {k: v for k, v in results.items() if k != "triton start"}
    write_json(out / "results.json", serializable)
    parts = [
        f"# Benchmark suite, {mode} mode ({time.strftime('%Y-%m-%d %H:%M %Z')})\n",
        f"Command: `scripts/bench.sh --{mode}` (runs `.venv/bin/python benchmarks/{invocation}`), "
        f"{total_s / 60:.1f} minutes, code at commit `{machine.get('commit', '?')}`. "
        "Settings every system used: [`config.toml`](config.toml) on top of "
        "`src/tritonrag/settings/defaults.toml`. Raw data: [`raw/`](raw), [`results.json`](results.json).\n",
        "Machine:\n\n" + machine_markdown(machine) + "\n",
    ]
    targets = target_rows(results)
    if targets:
        parts.append(_section("Targets", markdown_table(
            targets, ["target", "ours", "reference", "unit", "ratio", "verdict"],
            ["target", "measured", "reference", "unit", "ratio", "verdict"])))
    rag = _rag_rows(results)
    if rag:
        parts.append(_section(
            "End-to-end RAG, closed loop (benchmarks/rag_load.py, HTTP SSE)",
            "Every system, one after the other, same client, same question mix, same settings. "
            "TTFT: time to the first streamed token; tokens: streamed pieces.\n\n"
            + markdown_table(rag, RAG_COLUMNS, RAG_HEADERS) + "\n\n" + _answer_agreement(out)))
    if results.get("limits"):
        parts.append(_section("Component limits, in process (benchmarks/component_limits.py)", markdown_table(
            results["limits"], ["component", "measure", "unit", "limit"])))
    if results.get("perf"):
        columns = ["model", "protocol", "concurrency", "infer_per_s", "p50_ms", "p90_ms", "p99_ms"]
        parts.append(_section("perf_analyzer, every model (benchmarks/perf_models.py)",
                              markdown_table(results["perf"], columns,
                                             ["model", "protocol", "c", "infer/s", "p50 ms", "p90 ms", "p99 ms"])))
    if results.get("generator"):
        parts.append(_section("Served generator, gRPC streams (benchmarks/generator_throughput.py)", markdown_table(
            results["generator"], ["system", "concurrency", "requests", "tokens", "seconds", "tokens_per_s"])))
    if results.get("locust"):
        locust = results["locust"]
        parts.append(_section(
            f"locust, {locust['users']} users for {locust['seconds']} s (benchmarks/locustfile.py)",
            markdown_table(locust["rows"], ["type", "name", "requests", "failures", "req_per_s", "p50_ms", "p90_ms",
                                            "p99_ms"])))
    if results.get("overhead"):
        overhead = results["overhead"]
        body = overhead.get("markdown") or markdown_table(overhead.get("rows", []), list(overhead["rows"][0]))
        parts.append(_section("Orchestration overhead (benchmarks/orchestration_overhead.py)", body))
    if pictures := _plots(out, results):
        parts.append(_section("Plots", "\n\n".join(pictures)))
    parts.append(_section("Step timings", "\n".join(f"- {k}: {fmt(v)} s" for k, v in timings.items())))
    parts.append(_section("Exact commands", "```bash\n" + "\n".join(commands) + "\n```"))
    if failures:
        parts.append(_section("Failures", "\n".join(f"- **{k}**: {v}" for k, v in failures.items())))
    path = out / "summary.md"
    path.write_text("\n".join(parts))
    return path


def _answer_agreement(out: Path) -> str:
    """How many questions got the same answer text from both systems (greedy decoding, same prompt)."""
    import csv

    answers: dict[str, dict[str, str]] = {}
    for system in ("tritonrag", "ray-serve"):
        path = out / "raw" / f"rag_{system}_requests.csv"
        if not path.exists():
            return ""
        with path.open() as handle:
            for row in csv.DictReader(handle):
                if row["ok"] == "True":
                    answers.setdefault(row["question"], {})[system] = row["answer"]
    both = [a for a in answers.values() if len(a) == 2]
    same = sum(a["tritonrag"] == a["ray-serve"] for a in both)
    return (f"Same answer text from both systems for {same} of {len(both)} questions (greedy decoding; vLLM's "
            "batch composition can change the last digits of logits, so a few may differ).")
