"""The GPU check's verdicts and report: one row per check (expected, seen, pass / fail / not checked and why),
nvidia-smi's per-process memory mapped to Triton's stubs, and the Markdown + JSON files written to $OUT."""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

PASS, FAIL, NOT_CHECKED = "pass", "fail", "not checked"
CONTEXT_ALLOWANCE_MIB = 1536  # a CUDA context (+ cuBLAS workspace) is outside torch's cap: ~0.5-1.4 GiB
STUB = "triton_python_backend_stub"


@dataclass
class Check:
    """One row of the report."""

    name: str
    expected: str
    seen: str
    status: str
    reason: str = ""

    def __post_init__(self) -> None:
        if self.status not in (PASS, FAIL, NOT_CHECKED):
            raise ValueError(f"status must be pass, fail or not checked, got {self.status!r}")


def verdict(name: str, expected: str, seen: Any, ok: bool, reason: str = "") -> Check:
    """A pass/fail row."""
    return Check(name, expected, str(seen), PASS if ok else FAIL, reason)


def not_checked(name: str, expected: str, reason: str) -> Check:
    return Check(name, expected, "–", NOT_CHECKED, reason)


def parse_compute_apps(text: str) -> dict[int, float]:
    """``nvidia-smi --query-compute-apps=pid,used_memory --format=csv,noheader,nounits``: MiB per pid (rows whose
    memory is [N/A] or [Not Supported], as in some VMs, are left out)."""
    usage: dict[int, float] = {}
    for line in text.strip().splitlines():
        fields = [f.strip() for f in line.split(",")]
        if len(fields) < 2 or not fields[0].isdigit():
            continue
        match = re.fullmatch(r"([0-9.]+)(\s*MiB)?", fields[1])
        if match:
            usage[int(fields[0])] = usage.get(int(fields[0]), 0.0) + float(match.group(1))
    return usage


def stub_instance(argv: Sequence[str]) -> str | None:
    """The model instance a Python-backend stub serves, from its command line (2.51: the 9th argument, e.g.
    ``embedder_0_0``; the model folder is the 2nd)."""
    if not argv or not argv[0].endswith(STUB):
        return None
    if len(argv) > 8:
        return argv[8]
    return Path(argv[1]).parent.parent.name if len(argv) > 1 else None


def stub_parent(argv: Sequence[str]) -> int | None:
    """The tritonserver pid a stub serves (its 6th argument)."""
    return int(argv[5]) if len(argv) > 5 and argv[5].isdigit() else None


def stub_processes(proc: Path = Path("/proc"), parent: int | None = None) -> dict[int, str]:
    """pid -> model instance of every running Python-backend stub (of the server ``parent`` when given)."""
    found = {}
    for entry in proc.iterdir() if proc.is_dir() else ():
        if not entry.name.isdigit():
            continue
        try:
            argv = [a.decode(errors="replace") for a in (entry / "cmdline").read_bytes().split(b"\0") if a]
        except OSError:
            continue
        instance = stub_instance(argv)
        if instance and (parent is None or stub_parent(argv) == parent):
            found[int(entry.name)] = instance
    return found


def model_of(instance: str) -> str:
    """``embedder_0_1`` -> ``embedder`` (Triton names instances <group>_<n>; groups <model>_<n> by default)."""
    return re.sub(r"(_\d+)+$", "", instance)


def memory_checks(usage: Mapping[int, float], stubs: Mapping[int, str], caps_gib: Mapping[str, float],
                  server_pid: int | None = None) -> list[Check]:
    """Per stub on the GPU: nvidia-smi's memory under its model's cap plus a CUDA context; CPU stubs hold none."""
    checks = []
    for pid, instance in sorted(stubs.items(), key=lambda kv: kv[1]):
        model, used = model_of(instance), usage.get(pid)
        cap = caps_gib.get(model)
        if cap is None:
            checks.append(verdict(f"nvidia-smi: {instance} (CPU) holds no GPU memory", "not listed",
                                  "not listed" if used is None else f"{used:.0f} MiB (pid {pid})", used is None))
            continue
        limit = cap * 1024 + CONTEXT_ALLOWANCE_MIB
        seen = "not listed" if used is None else f"{used:.0f} MiB (pid {pid})"
        checks.append(verdict(f"nvidia-smi: {instance} under its cap", f"<= {cap:.1f} GiB + context "
                              f"({limit:.0f} MiB)", seen, used is not None and used <= limit,
                              "" if used is not None else "the stub holds no GPU memory: it did not run on the GPU"))
    if server_pid is not None and server_pid in usage:
        checks.append(Check("nvidia-smi: tritonserver itself", "a CUDA context and its memory pools",
                            f"{usage[server_pid]:.0f} MiB (pid {server_pid})", PASS, "outside every model's cap"))
    return checks


def stub_checks(diag: Mapping[str, Any], expected_fraction: float, expected_devices: str) -> list[Check]:
    """Verdicts from one GPU instance's in-stub probe (gpu_check_stub.py): device, CUDA_VISIBLE_DEVICES, cap."""
    instance = diag.get("instance", "?")
    torch_info = diag.get("torch") or {}
    checks = [verdict(f"{instance}: Triton placed it", f"KIND_GPU, device {expected_devices}",
                      f"{diag.get('kind')}, device {diag.get('device_id')}",
                      diag.get("kind") == "GPU" and str(diag.get("device_id")) == expected_devices)]
    model_device = diag.get("model_device")
    checks.append(verdict(f"{instance}: weights on", "cuda", model_device, str(model_device).startswith("cuda")))
    if "cuda_visible_devices_expected" in diag:
        want = diag["cuda_visible_devices_expected"]
        checks.append(verdict(f"{instance}: CUDA_VISIBLE_DEVICES", repr(want), repr(diag.get("cuda_visible_devices")),
                              diag.get("cuda_visible_devices") == want))
    fraction = torch_info.get("memory_fraction")
    checks.append(verdict(f"{instance}: torch memory fraction", f"{expected_fraction:g}", fraction,
                          fraction is not None and abs(float(fraction) - expected_fraction) < 1e-3))
    over = diag.get("over_cap") or {}
    checks.append(verdict(f"{instance}: allocation past the cap", "OutOfMemoryError",
                          over.get("raised") or f"allocated {over.get('bytes', 0) / 2**30:.1f} GiB",
                          over.get("raised") == "OutOfMemoryError", over.get("message", "")[:160]))
    under = diag.get("under_cap") or {}
    checks.append(verdict(f"{instance}: allocation under the cap", "succeeds", under.get("raised") or "succeeded",
                          under.get("ok") is True))
    return checks


def markdown(checks: Sequence[Check], meta: Mapping[str, Any]) -> str:
    """The report: what ran where, then the table of checks, then the measurements."""
    counts = {s: sum(c.status == s for c in checks) for s in (PASS, FAIL, NOT_CHECKED)}
    lines = [f"# GPU check ({meta.get('mode', '?')})", "",
             f"- command: `{meta.get('command', '?')}`", f"- machine: {meta.get('machine', '?')}",
             f"- when: {meta.get('started', '?')}, {meta.get('elapsed_s', 0):.0f} s",
             f"- result: {counts[PASS]} pass, {counts[FAIL]} fail, {counts[NOT_CHECKED]} not checked", "",
             "| check | expected | seen | verdict |", "| --- | --- | --- | --- |"]
    for c in checks:
        status = c.status + (f": {c.reason}" if c.reason else "")
        lines.append("| " + " | ".join(_cell(x) for x in (c.name, c.expected, c.seen, status)) + " |")
    for title, body in (meta.get("sections") or {}).items():
        lines += ["", f"## {title}", "", str(body)]
    return "\n".join(lines) + "\n"


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def write_report(out: Path, checks: Iterable[Check], meta: Mapping[str, Any]) -> list[Path]:
    """gpu_check.md and gpu_check.json in ``out``."""
    checks = list(checks)
    out.mkdir(parents=True, exist_ok=True)
    md = out / "gpu_check.md"
    md.write_text(markdown(checks, meta))
    js = out / "gpu_check.json"
    js.write_text(json.dumps({"meta": dict(meta), "checks": [asdict(c) for c in checks]}, indent=1, default=str))
    return [md, js]
