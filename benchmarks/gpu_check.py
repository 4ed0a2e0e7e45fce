"""The GPU check's driver: GPU placement, memory caps and the GPU code paths on a real GPU, as one bounded run.

    python3 benchmarks/gpu_check.py --mode gpu --out "$OUT"          # on the lent device (scripts/gpu_check.sh run)
    .venv/bin/python benchmarks/gpu_check.py --mode dry-run --out DIR  # here, on the CPU (scripts/gpu_check.sh dry-run)
    python3 benchmarks/gpu_check.py encode --device cuda --seconds 4   # one in-process encode timing (JSON)

Every step is bounded and a failed one is recorded and the rest go on; the report (gpu_check.md, .json, .log) is
written however far the run got. The dry run renders the spec, checks the kit's size logic and the report's
parsing and verdicts on sample inputs, and reports every GPU step as not checked.
"""

from __future__ import annotations

import argparse
import datetime
import json
import logging
import os
import platform
import shlex
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gpu_check_steps as steps
from gpu_check_report import FAIL, Check, memory_checks, not_checked, parse_compute_apps, verdict, write_report

log = logging.getLogger("gpu_check")
NOT_TRAVELLING = (
    ("generator on vLLM (gpu_memory_utilization)", "vLLM is not on the lent machine and its wheels (~400 MB with "
     "their CUDA libraries) cannot travel in 64 MiB; the transformers engine carries the generator's cap instead"),
    ("retriever on faiss-gpu (FAISS budget, index on the GPU)", "no faiss-gpu wheel fits or exists for CUDA 13; "
     "faiss-cpu travels, so the retriever's faiss path runs on the CPU and the budget math is unit-tested"),
)
SAMPLE_SMI = "4242, 1210\n4243, 1188\n4250, 2050\n4300, [N/A]\n"
SAMPLE_STUBS = {4242: "embedder_0_0", 4243: "embedder_0_1", 4250: "generator_0_0", 4260: "retriever_0_0"}


def run_step(name: str, checks: list[Check], step: Callable[[], list[Check]], ctx: steps.Context,
             needs_s: float = 10.0) -> bool:
    """Run one step, appending its rows; a failure or a spent budget is a row too. True when it ran cleanly."""
    if ctx.left() < needs_s:
        checks.append(not_checked(name, "ran", f"time budget spent ({ctx.left():.0f} s left, needs {needs_s:.0f})"))
        return False
    started = time.monotonic()
    log.info("step %s (%.0f s left)", name, ctx.left())
    try:
        rows = step()
    except Exception as exc:
        log.exception("step %s failed", name)
        checks.append(Check(name, "ran", f"{type(exc).__name__}", FAIL, str(exc).strip()[-300:]))
        _partial(ctx, checks)
        return False
    checks.extend(rows)
    log.info("step %s done in %.1f s: %s", name, time.monotonic() - started, [(c.name, c.status) for c in rows])
    _partial(ctx, checks)
    return True


def _partial(ctx: steps.Context, checks: list[Check]) -> None:
    """A report after every step, so a run killed later (a hang past every timeout) still leaves one."""
    if ctx.found.get("partial"):
        ctx.found["partial"](checks)


def overlay(ctx: steps.Context, paths: dict[str, str]) -> Path:
    """The settings overlay (TRITONRAG_CONFIG) pointing at the travelling models (benchmarks/common.write_overlay)."""
    from common import write_overlay

    return write_overlay(ctx.scratch / "gpu-check.toml", {
        "embedder": {"model": paths["embedder"]},
        "generator": {"model": paths["generator"], "max_prompt_tokens": 4096},
    }, "GPU check: the kit's embedder and generator")


def gpu_steps(ctx: steps.Context, checks: list[Check], paths: dict[str, str]) -> None:
    """Triton on the rendered GPU spec: in-stub probes, nvidia-smi, RAG, served throughput; then in process."""
    settings_file = overlay(ctx, paths)
    os.environ["TRITONRAG_CONFIG"] = str(settings_file)
    if not run_step("triton: start on the GPU spec", checks, lambda: _start(ctx, settings_file), ctx, 150):
        return
    try:
        run_step("in-stub device and cap probes", checks, lambda: steps.stub_diag_checks(ctx), ctx)
        run_step("rag end to end", checks, lambda: steps.rag_checks(ctx), ctx, 60)
        run_step("embedder served on the GPU", checks, lambda: _throughput(ctx, "served"), ctx, 40)
        run_step("nvidia-smi per-process memory", checks, lambda: steps.smi_checks(ctx), ctx)
    finally:
        ctx.found["server"].stop(timeout_s=30)
    for device in ("cuda", "cpu"):
        run_step(f"embedder in process on {device}", checks, lambda d=device: _throughput(ctx, d), ctx, 60)


def _start(ctx: steps.Context, settings_file: Path) -> list[Check]:
    started = time.monotonic()
    try:
        steps.start_server(ctx, settings_file, probes=True)
    except Exception as exc:
        log.warning("start with probes failed (%s); retrying with the plain entry points", exc)
        steps.render(ctx)
        steps.start_server(ctx, settings_file, probes=False)
        return [Check("triton: start on the GPU spec", "ready", "ready only without the in-stub probes", FAIL,
                      str(exc)[-300:])]
    return [verdict("triton: start on the GPU spec", "ready", f"ready in {time.monotonic() - started:.0f} s", True)]


def _throughput(ctx: steps.Context, how: str) -> list[Check]:
    seconds = 4.0
    if how == "served":
        result = steps.served_throughput(ctx.found["server"].http_url, steps.sample_texts(), seconds)
    else:
        result = steps.inprocess_throughput(how, seconds, timeout_s=min(120.0, ctx.left() - 5))
    ctx.found.setdefault("throughput", {})[how] = result
    name = {"served": "embedder served (2 GPU instances, HTTP)", "cuda": "embedder in process, GPU",
            "cpu": "embedder in process, CPU"}[how]
    return [verdict(f"throughput: {name}", "> 0 texts/s", f"{result['texts_per_s']} texts/s", result["texts"] > 0)]


def dry_run_steps(ctx: steps.Context, checks: list[Check]) -> None:
    """The CPU half: the kit's size logic, nvidia-smi parsing and verdicts on samples; GPU steps not checked."""
    run_step("kit size check", checks, kit_checks, ctx)
    run_step("nvidia-smi parsing and verdicts (sample)", checks, sample_checks, ctx)
    for name in ("triton: start on the GPU spec", "in-stub device and cap probes", "rag end to end",
                 "embedder served on the GPU", "nvidia-smi per-process memory", "embedder in process on cuda",
                 "embedder in process on cpu", "pytest -m gpu"):
        checks.append(not_checked(name, "ran", "no GPU (dry run)"))


def kit_checks() -> list[Check]:
    import gpu_kit

    fake = {"runtime.tar.xz": 40 << 20, "models.tar.xz": 30 << 20}
    try:
        gpu_kit.check_size(1 << 20, fake)
        refused = "accepted"
    except gpu_kit.KitTooLarge as exc:
        refused = "refused" if "Trim the largest" in str(exc) and "runtime.tar.xz" in str(exc) else str(exc)
    rows = [verdict("kit: a 71 MiB kit is refused", "refused, naming what to trim", refused, refused == "refused")]
    real = gpu_kit.kit_parts()
    if real:
        try:
            rows.append(verdict("kit: the packed .gpu_kit fits", "<= 64 MiB",
                                gpu_kit.check_size(gpu_kit.tree_bytes(), real), True))
        except gpu_kit.KitTooLarge as exc:
            rows.append(verdict("kit: the packed .gpu_kit fits", "<= 64 MiB", "too large", False, str(exc)[:300]))
    else:
        rows.append(not_checked("kit: the packed .gpu_kit fits", "<= 64 MiB", "not packed here (scripts/gpu_check.sh "
                                "pack)"))
    return rows


def sample_checks() -> list[Check]:
    usage = parse_compute_apps(SAMPLE_SMI)
    rows = memory_checks(usage, SAMPLE_STUBS, {"embedder": 13.9, "generator": 69.5})
    ok = len(usage) == 3 and [r.status for r in rows] == ["pass", "pass", "pass", "pass"]
    return [verdict("nvidia-smi sample parsed and mapped", "3 GPU stubs under their caps, retriever holds none",
                    ", ".join(f"{r.name.split(': ')[1]}={r.status}" for r in rows), ok)]


def machine() -> str:
    """This machine in one line: host, CPU, Python and the GPUs nvidia-smi names."""
    try:
        gpu = subprocess.run(["nvidia-smi", "--query-gpu=name,memory.total,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        gpu = ""
    return (f"{platform.node()}, {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
            f"GPU: {gpu or 'none'}")


def check(args: argparse.Namespace) -> int:
    """The whole check; writes the report into ``args.out``; exit 1 when a check failed."""
    args.out.mkdir(parents=True, exist_ok=True)
    scratch = args.scratch or Path(tempfile.mkdtemp(prefix="gpu-check-"))
    handlers = [logging.FileHandler(args.out / "gpu_check.log"), logging.StreamHandler()]
    for handler in handlers:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
        for name in ("gpu_check", "tritonrag"):
            logging.getLogger(name).addHandler(handler)
            logging.getLogger(name).setLevel(logging.INFO)
    try:
        return _check(args, scratch)
    finally:
        for handler in handlers:
            for name in ("gpu_check", "tritonrag"):
                logging.getLogger(name).removeHandler(handler)
            handler.close()


def _check(args: argparse.Namespace, scratch: Path) -> int:
    ctx = steps.Context(args.mode, args.out, scratch, time.monotonic() + args.budget_s, args.spec)
    started, checks = time.monotonic(), []
    started_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    paths = json.loads(args.paths) if args.paths else {}
    ctx.found["embedder_path"] = paths.get("embedder", "")
    partial_meta = {"mode": args.mode, "command": args.command_line or shlex.join(sys.argv), "started": started_at,
                    "machine": "(partial report: the run did not finish)"}
    ctx.found["partial"] = lambda rows: write_report(args.out, rows, partial_meta)
    run_step("render the GPU spec", checks, lambda: steps.render(ctx), ctx)
    if args.mode == "gpu":
        if "repository" in ctx.found:
            gpu_steps(ctx, checks, paths)
        run_step("pytest -m gpu", checks, lambda: steps.pytest_checks(ctx, min(150.0, ctx.left() - 10)), ctx, 30)
    else:
        dry_run_steps(ctx, checks)
    checks += [not_checked(name, "runs on the GPU", reason) for name, reason in NOT_TRAVELLING]
    sections = {**ctx.sections}
    if ctx.found.get("throughput"):
        sections["Embedder throughput"] = throughput_table(ctx.found["throughput"])
    meta = {"mode": args.mode, "command": args.command_line or shlex.join(sys.argv), "machine": machine(),
            "started": started_at,
            "elapsed_s": time.monotonic() - started, "rag": ctx.found.get("rag"),
            "throughput": ctx.found.get("throughput"), "sections": sections}
    for path in write_report(args.out, checks, meta):
        log.info("wrote %s", path)
    _copy_server_log(ctx)
    print((args.out / "gpu_check.md").read_text())
    return 1 if any(c.status == FAIL for c in checks) else 0


def throughput_table(results: dict[str, dict]) -> str:
    """Texts/s of each way of embedding, and each against in-process encode on the GPU."""
    names = {"served": "served by Triton (2 GPU instances, HTTP, 8 clients x 16 texts)",
             "cuda": "in process on the GPU (batches of 64)", "cpu": "in process on the CPU (batches of 64)"}
    reference = (results.get("cuda") or {}).get("texts_per_s")
    rows = ["| how | texts/s | vs in-process GPU |", "| --- | --- | --- |"]
    for how, result in results.items():
        ratio = f"{result['texts_per_s'] / reference:.2f}" if reference else "–"
        rows.append(f"| {names.get(how, how)} | {result['texts_per_s']} | {ratio} |")
    return "\n".join(rows)


def _copy_server_log(ctx: steps.Context, limit: int = 8 << 20) -> None:
    source = ctx.scratch / "tritonserver.log"
    if source.exists():
        data = source.read_bytes()
        (ctx.out / "tritonserver.log").write_bytes(data[-limit:])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("action", nargs="?", default="check", choices=("check", "encode"))
    parser.add_argument("--mode", choices=("gpu", "dry-run"), default="dry-run")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/tmp/gpu-check"))
    parser.add_argument("--scratch", type=Path, help="working folder (default: a new temporary one)")
    parser.add_argument("--spec", type=Path, default=steps.SPEC)
    parser.add_argument("--budget-s", type=float, default=360.0, help="every step must end within this")
    parser.add_argument("--paths", help="JSON from `gpu_kit.py unpack` (the travelling models)")
    parser.add_argument("--command-line", help="the command to record in the report")
    parser.add_argument("--device", default="cuda", help="encode: the torch device")
    parser.add_argument("--seconds", type=float, default=4.0, help="encode: how long to time")
    args = parser.parse_args(argv)
    if args.action == "encode":
        print(json.dumps(steps.encode_benchmark(args.device, args.seconds)))
        return 0
    return check(args)


if __name__ == "__main__":
    sys.exit(main())
