"""PNG plots of a suite run (matplotlib, no display needed): throughput vs concurrency, latency percentiles, TTFT,
and the repeat-share sweep."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt


def _by_system(rows: Sequence[dict[str, Any]], key: str = "system") -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[row[key]].append(row)
    return {name: sorted(group, key=lambda r: r["concurrency"]) for name, group in groups.items()}


def _save(fig: Any, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def rag_throughput(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """End-to-end RAG requests/s and tokens/s vs concurrency, one line per system."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    for system, group in _by_system(rows).items():
        levels = [r["concurrency"] for r in group]
        left.plot(levels, [r["req_per_s"] for r in group], marker="o", label=system)
        right.plot(levels, [r["tokens_per_s"] for r in group], marker="o", label=system)
    left.set(title="RAG throughput", xlabel="concurrency (closed loop)", ylabel="requests/s")
    right.set(title="RAG streamed tokens", xlabel="concurrency (closed loop)", ylabel="tokens/s")
    for ax in (left, right):
        ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, path)


def rag_latency(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """TTFT and total latency percentiles (p50, p90, p99) per system and concurrency, as grouped bars."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    groups = _by_system(rows)
    labels = [f"{system}\nc={r['concurrency']}" for system, group in groups.items() for r in group]
    flat = [r for group in groups.values() for r in group]
    for ax, prefix, title in ((axes[0], "ttft_", "time to first token"), (axes[1], "latency_", "total latency")):
        width = 0.27
        for i, pct in enumerate(("p50", "p90", "p99")):
            xs = [x + (i - 1) * width for x in range(len(flat))]
            ax.bar(xs, [r[f"{prefix}{pct}_ms"] / 1000 for r in flat], width, label=pct)
        ax.set_xticks(range(len(flat)), labels, fontsize=7)
        ax.set(title=f"RAG {title}", ylabel="seconds")
        ax.grid(axis="y", alpha=0.3)
        ax.legend()
    return _save(fig, path)


def rag_ttft(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """p50 and p99 time to first token vs concurrency, one line pair per system."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for system, group in _by_system(rows).items():
        levels = [r["concurrency"] for r in group]
        line = ax.plot(levels, [r["ttft_p50_ms"] / 1000 for r in group], marker="o", label=f"{system} p50")[0]
        ax.plot(levels, [r["ttft_p99_ms"] / 1000 for r in group], marker="x", linestyle="--",
                color=line.get_color(), label=f"{system} p99")
    ax.set(title="RAG time to first token", xlabel="concurrency (closed loop)", ylabel="seconds")
    ax.set_xscale("log", base=2)
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, path)


def repeat_sweep(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """Requests/s and p50 time to first token vs the share of repeated or paraphrased questions, one line per
    system (the sweep's rows: share, system, concurrency, req_per_s, ttft_p50_ms)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for row in rows:
        groups[row["system"]].append(row)
    for system, group in groups.items():
        group = sorted(group, key=lambda r: r["share"])
        shares = [100 * r["share"] for r in group]
        left.plot(shares, [r["req_per_s"] for r in group], marker="o", label=system)
        right.plot(shares, [r["ttft_p50_ms"] / 1000 for r in group], marker="o", label=system)
    c = rows[0]["concurrency"] if rows else "?"
    left.set(title=f"RAG throughput, c={c}", xlabel="repeated or paraphrased questions (%)", ylabel="requests/s")
    right.set(title=f"RAG p50 time to first token, c={c}", xlabel="repeated or paraphrased questions (%)",
              ylabel="seconds")
    for ax in (left, right):
        ax.grid(alpha=0.3)
        ax.legend()
    return _save(fig, path)


def model_throughput(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """perf_analyzer inferences/s vs concurrency per model and protocol (one panel per model)."""
    models = sorted({r["model"] for r in rows})
    fig, axes = plt.subplots(1, len(models), figsize=(3.6 * len(models), 3.6), squeeze=False)
    for ax, model in zip(axes[0], models):
        for protocol in sorted({r["protocol"] for r in rows if r["model"] == model}):
            group = sorted((r for r in rows if r["model"] == model and r["protocol"] == protocol
                            and r.get("infer_per_s") is not None),
                           key=lambda r: r["concurrency"])
            ax.plot([r["concurrency"] for r in group], [r["infer_per_s"] for r in group], marker="o", label=protocol)
        ax.set(title=model, xlabel="concurrency", ylabel="inferences/s")
        ax.set_xscale("log", base=2)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    return _save(fig, path)
