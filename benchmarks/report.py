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


SWEEP_COLUMNS = ["share", "system", "requests", "errors", "repeats", "paraphrases", "req_per_s", "ttft_p50_ms",
                 "ttft_p99_ms", "latency_p50_ms", "cache_exact", "cache_semantic", "cache_miss", "cache_off"]
SWEEP_HEADERS = ["repeat share", "system", "requests", "errors", "repeats", "paraphrases", "req/s", "TTFT p50 ms",
                 "TTFT p99 ms", "latency p50 ms", "cache exact", "cache semantic", "cache miss", "cache off"]
ENGINE_LEVELS = (8, 16)


def sweep_comparison(ours: list[dict[str, Any]], theirs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per repeat share: tritonrag's and Ray Serve's throughput and TTFT p50 and their ratios (ours / theirs)."""
    by_share = {r["share"]: r for r in theirs}
    out = []
    for a in sorted(ours, key=lambda r: r["share"]):
        b = by_share.get(a["share"], {})
        out.append({"share": a["share"], "concurrency": a["concurrency"], "ours_req_per_s": a.get("req_per_s"),
                    "theirs_req_per_s": b.get("req_per_s"),
                    "throughput_ratio": _ratio(a.get("req_per_s"), b.get("req_per_s")),
                    "ours_ttft_p50_ms": a.get("ttft_p50_ms"), "theirs_ttft_p50_ms": b.get("ttft_p50_ms"),
                    "ttft_ratio": _ratio(a.get("ttft_p50_ms"), b.get("ttft_p50_ms")),
                    "cache_hits": a.get("cache_hits")})
    return out


def engine_fractions(rag: list[dict[str, Any]], engine: list[dict[str, Any]],
                     levels: tuple[int, ...] = ENGINE_LEVELS) -> list[dict[str, Any]]:
    """End-to-end tritonrag (cache bypassed) as fractions of the engine alone on the same requests, per level:
    throughput (req/s, end-to-end / engine) and TTFT p50 (end-to-end / engine)."""
    ours = {r["concurrency"]: r for r in rag}
    limit = {r["concurrency"]: r for r in engine}
    out = []
    for c in levels:
        if c not in ours or c not in limit:
            continue
        a, b = ours[c], limit[c]
        out.append({"concurrency": c, "e2e_req_per_s": a.get("req_per_s"), "engine_req_per_s": b.get("req_per_s"),
                    "throughput_fraction": _ratio(a.get("req_per_s"), b.get("req_per_s")),
                    "e2e_ttft_p50_ms": a.get("ttft_p50_ms"), "engine_ttft_p50_ms": b.get("ttft_p50_ms"),
                    "ttft_ratio": _ratio(a.get("ttft_p50_ms"), b.get("ttft_p50_ms"))})
    return out


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
    sweep = sweep_comparison(results.get("repeat tritonrag") or [], results.get("repeat ray-serve") or [])
    for share, label, key, target, higher in (
            (0.0, ">= 1.3x Ray Serve throughput on unique questions (0%)", "req_per_s", 1.3, True),
            (0.5, ">= 3x Ray Serve throughput at 50% repeats", "req_per_s", 3.0, True),
            (0.5, "TTFT p50 <= 1/3 of Ray Serve at 50% repeats", "ttft_p50_ms", 1 / 3, False)):
        row = next((r for r in sweep if r["share"] == share), None)
        if row is None:
            continue
        ratio = row["throughput_ratio" if key == "req_per_s" else "ttft_ratio"]
        rows.append({"target": f"{label}, c={row['concurrency']}", "ours": row[f"ours_{key}"],
                     "reference": row[f"theirs_{key}"], "unit": "req/s" if key == "req_per_s" else "ms",
                     "ratio": ratio, "verdict": _verdict(ratio, target, higher)})
    for row in engine_fractions(results.get("rag tritonrag") or [], results.get("engine") or []):
        c = row["concurrency"]
        rows.append({"target": f"end-to-end TTFT p50 at c={c} <= 1.2x the engine's", "ours": row["e2e_ttft_p50_ms"],
                     "reference": row["engine_ttft_p50_ms"], "unit": "ms (reference: engine alone)",
                     "ratio": row["ttft_ratio"], "verdict": _verdict(row["ttft_ratio"], 1.2, False)})
        rows.append({"target": f"end-to-end throughput at c={c} >= 95% of the engine's",
                     "ours": row["e2e_req_per_s"], "reference": row["engine_req_per_s"],
                     "unit": "req/s (reference: engine alone)", "ratio": row["throughput_fraction"],
                     "verdict": _verdict(row["throughput_fraction"], 0.95, True)})
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
    sweep = _sweep_rows(results)
    if sweep:
        made.append(plots.repeat_sweep(sweep, folder / "repeat_sweep.png"))
    if results.get("perf"):
        made.append(plots.model_throughput(results["perf"], folder / "model_throughput.png"))
    return [f"![{p.stem}](plots/{p.name})" for p in made]


def _sweep_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    names = sorted((k for k in results if k.startswith("repeat ")), key=lambda k: (k != "repeat tritonrag", k))
    return [row for name in names for row in results[name] or []]


def _sweep_section(results: dict[str, Any]) -> str:
    rows = _sweep_rows(results)
    c = rows[0]["concurrency"]
    comparison = sweep_comparison(results.get("repeat tritonrag") or [], results.get("repeat ray-serve") or [])
    shown = [{**r, "share": f"{r['share']:.0%}"} for r in rows]
    text = (f"Closed loop at c={c}, each share level its own questions (benchmarks/repeat_questions.yaml): at share s, "
            "that share of a level's requests repeat or paraphrase (half each) a question asked earlier in the level "
            f"(at least {c} requests earlier where possible), the rest are fresh; the same seeded sequence for both "
            "systems ([raw/repeat_mix.json](raw/repeat_mix.json)). Both systems run vLLM with prefix caching; "
            "tritonrag's requests also use its answer cache, in a tenant of their own per level and run, and the "
            "cache columns count the rag model's `cache` output (exact and semantic: answered from the cache; empty: "
            "not reported). Every other RAG measurement of this run bypasses the cache.\n\n"
            + markdown_table(shown, SWEEP_COLUMNS, SWEEP_HEADERS))
    if comparison and any(r["theirs_req_per_s"] is not None for r in comparison):
        text += "\n\n" + markdown_table(
            [{**r, "share": f"{r['share']:.0%}"} for r in comparison],
            ["share", "ours_req_per_s", "theirs_req_per_s", "throughput_ratio", "ours_ttft_p50_ms",
             "theirs_ttft_p50_ms", "ttft_ratio", "cache_hits"],
            ["repeat share", "tritonrag req/s", "Ray Serve req/s", "throughput ratio", "tritonrag TTFT p50 ms",
             "Ray Serve TTFT p50 ms", "TTFT ratio", "tritonrag cache hits"])
    return text


def _engine_section(results: dict[str, Any]) -> str:
    engine = results["engine"]
    text = ("tritonrag's own in-process vLLM engine (VllmEngine), alone on the machine, on the very prompts, stop "
            "strings and sampling the pipeline sends its generator for the RAG levels' questions (built by the "
            "pipeline in process), at the same levels, in the same order, closed loop, streamed; TTFT: submit to "
            "the first non-empty text.\n\n" + markdown_table(engine, ["system", "concurrency", "requests", "errors",
                                                                       "abstained", "req_per_s", "tokens_per_s",
                                                                       "ttft_p50_ms", "ttft_p99_ms",
                                                                       "latency_p50_ms", "latency_p99_ms"],
                                                              ["system", "c", "requests", "errors", "abstained",
                                                               "req/s", "tokens/s", "TTFT p50 ms", "TTFT p99 ms",
                                                               "latency p50 ms", "latency p99 ms"]))
    fractions = engine_fractions(results.get("rag tritonrag") or [], engine,
                                 tuple(sorted({r["concurrency"] for r in engine})))
    if fractions:
        text += ("\n\nEnd-to-end tritonrag (answer cache bypassed) against the engine alone:\n\n" + markdown_table(
            fractions, ["concurrency", "e2e_req_per_s", "engine_req_per_s", "throughput_fraction", "e2e_ttft_p50_ms",
                        "engine_ttft_p50_ms", "ttft_ratio"],
            ["c", "end-to-end req/s", "engine req/s", "throughput fraction", "end-to-end TTFT p50 ms",
             "engine TTFT p50 ms", "TTFT ratio"]))
    return text


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
    if _sweep_rows(results):
        parts.append(_section("Repeated and paraphrased questions (benchmarks/rag_load.py run_shares)",
                              _sweep_section(results)))
    if results.get("engine"):
        parts.append(_section("The engine limit (benchmarks/engine_limit.py)",
                              _engine_section(results) + _engine_agreement(out)))
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


def _engine_agreement(out: Path) -> str:
    """How many questions got the same answer from the engine alone as from end-to-end tritonrag: the same text for
    every question says the engine was asked the same prompts with the same sampling (greedy decoding)."""
    import csv

    answers: dict[str, dict[str, str]] = {}
    for name, path in (("engine", out / "raw" / "engine_requests.csv"),
                       ("tritonrag", out / "raw" / "rag_tritonrag_requests.csv")):
        if not path.exists():
            return ""
        with path.open() as handle:
            for row in csv.DictReader(handle):
                if row["ok"] == "True":
                    answers.setdefault(row["question"], {})[name] = row["answer"]
    both = [a for a in answers.values() if len(a) == 2]
    same = sum(a["engine"] == a["tritonrag"] for a in both)
    return (f"\n\nSame answer text from the engine alone and from end-to-end tritonrag for {same} of {len(both)} "
            "questions (greedy: the same prompt and sampling give the same text, up to batch-dependent float "
            "differences; end-to-end, cited passage numbers that do not exist are dropped from the text).")


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
