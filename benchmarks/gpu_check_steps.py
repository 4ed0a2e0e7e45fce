"""The GPU check's steps: render the GPU spec, start Triton on it, ask the stubs and nvidia-smi what each instance
got, answer a RAG question, and time the embedder served and in process. Each step returns report rows."""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gpu_check_report import (
    FAIL,
    NOT_CHECKED,
    Check,
    memory_checks,
    not_checked,
    parse_compute_apps,
    stub_checks,
    stub_processes,
    verdict,
)
from gpu_check_stub import DIAG_ENV, install_probes

log = logging.getLogger("gpu_check")
ROOT = Path(__file__).resolve().parents[1]
SPEC = ROOT / "deploy" / "specs" / "gpu-check.yaml"
QUESTION = "Tell me as much as you can about the robbery"
EXPECTED = {"embedder": {"count": 2, "fraction": 0.1}, "generator": {"count": 1, "fraction": 0.5}}


@dataclass
class Context:
    """What the steps share: mode, folders, the time budget, and what earlier steps found."""

    mode: str  # "gpu" or "dry-run"
    out: Path
    scratch: Path
    deadline: float  # time.monotonic() by which every step must be done
    spec: Path = SPEC
    found: dict[str, Any] = field(default_factory=dict)
    sections: dict[str, str] = field(default_factory=dict)

    def left(self) -> float:
        return self.deadline - time.monotonic()


def render(ctx: Context) -> list[Check]:
    """Plan the spec (the machine's GPUs on the device, the spec's own inventory otherwise) and render it with the
    project's renderer into the scratch repository."""
    from tritonrag.deploy.plan import load_plan, plan_rows
    from tritonrag.deploy.render import render_repository
    from tritonrag.settings import load_settings

    settings = load_settings()
    plan = load_plan(ctx.spec, settings, use_machine_gpus=ctx.mode == "gpu")
    repo = ctx.scratch / "repository"
    shutil.rmtree(repo, ignore_errors=True)
    render_repository(settings, repo, plan=plan)
    ctx.found.update(plan=plan, repository=repo)
    rows = ["| component | instances | where | share | cap | instance_group | settings |", "|---" * 7 + "|"]
    rows += ["| " + " | ".join(r) + " |" for r in plan_rows(plan)]
    ctx.sections["Plan (tritonrag render --dry-run)"] = "\n".join(rows)
    return rendered_checks(repo, plan)


def _config(repo: Path, model: str) -> str:
    return (repo / model / "config.pbtxt").read_text()


def _gpu_memory(config: str) -> dict[str, Any]:
    match = re.search(r'key: "gpu_memory"\s*value: \{ string_value: "((?:[^"\\]|\\.)*)" \}', config)
    return json.loads(match.group(1).replace('\\"', '"')) if match else {}


def rendered_checks(repo: Path, plan: Any) -> list[Check]:
    """The rendered config.pbtxt files place what the spec says: KIND_GPU on GPU 0 with the caps, CPU elsewhere."""
    checks = []
    for model, want in EXPECTED.items():
        config = _config(repo, model)
        groups = re.findall(r"count: (\d+)\s*kind: (KIND_\w+)\s*gpus: \[ ([\d, ]+) \]", config)
        seen = ", ".join(f"{k} x{c} gpus [{g}]" for c, k, g in groups) or "no GPU group"
        count = sum(int(c) for c, k, g in groups if k == "KIND_GPU" and g.strip() == "0")
        checks.append(verdict(f"render: {model} instance_group", f"KIND_GPU x{want['count']} gpus [0]", seen,
                              count == want["count"]))
        caps = _gpu_memory(config)
        fraction = (caps.get("0") or {}).get("fraction")
        checks.append(verdict(f"render: {model} gpu_memory cap", f"fraction {want['fraction']} on GPU 0",
                              json.dumps(caps), fraction == want["fraction"]))
    generator = _config(repo, "generator")
    engine = re.search(r'key: "engine"\s*value: \{ string_value: "\\"(\w+)\\"" \}', generator)
    checks.append(verdict("render: generator engine", "transformers", engine.group(1) if engine else "default",
                          bool(engine and engine.group(1) == "transformers")))
    for model in ("retriever", "prompt_builder", "rag"):
        config = _config(repo, model)
        checks.append(verdict(f"render: {model} on the CPU", "KIND_CPU, no gpu_memory",
                              "KIND_CPU" if "KIND_CPU" in config else "not CPU",
                              "KIND_CPU" in config and "gpu_memory" not in config))
    return checks


def start_server(ctx: Context, overlay: Path, probes: bool = True) -> Any:
    """tritonserver on the rendered repository with the project's launcher (free ports, bounded wait)."""
    from tritonrag.deploy.server import Ports, TritonServer
    from tritonrag.settings import load_settings

    repo = ctx.found["repository"]
    if probes:
        install_probes(repo, ["embedder", "retriever", "generator"])
    diag = ctx.scratch / "diag"
    shutil.rmtree(diag, ignore_errors=True)
    env = {"TRITONRAG_CONFIG": str(overlay), DIAG_ENV: str(diag)}
    server = TritonServer(repo, load_settings().home, Ports.choose(0, 0, 0), ctx.scratch / "tritonserver.log",
                          env=env, extra_args=("--allow-gpu-metrics=false", "--log-verbose=0"))
    server.start(timeout_s=max(30.0, min(240.0, ctx.left() - 150)))
    ctx.found.update(server=server, diag=diag)
    return server


def stub_diag_checks(ctx: Context) -> list[Check]:
    """Each GPU instance's own report (written from inside its stub by gpu_check_stub.py)."""
    diag_dir: Path = ctx.found["diag"]
    reports = {p.stem: json.loads(p.read_text()) for p in sorted(diag_dir.glob("*.json"))
               if not p.stem.endswith(".finalize")}
    ctx.found["diag_reports"] = reports
    ctx.sections["In-stub reports"] = "```json\n" + json.dumps(reports, indent=1, default=str)[:12000] + "\n```"
    checks = []
    for model, want in EXPECTED.items():
        mine = {k: v for k, v in reports.items() if v.get("model") == model or k.startswith(model + "_")}
        checks.append(verdict(f"stubs: {model} instances reporting", str(want["count"]), len(mine),
                              len(mine) == want["count"]))
        for report in mine.values():
            if "error" in report:
                checks.append(verdict(f"{report.get('instance')}: in-stub probe", "ran", "raised", False,
                                      report["error"].splitlines()[-1]))
                continue
            checks += stub_checks(report, want["fraction"], "0")
    retriever = next((v for v in reports.values() if v.get("model") == "retriever"), None)
    if retriever is not None:
        checks.append(verdict("retriever: faiss GPUs seen", "0 (faiss-cpu travels; no faiss-gpu)",
                              retriever.get("faiss_gpus"), retriever.get("faiss_gpus") in (0, None)))
    return checks


def smi_checks(ctx: Context) -> list[Check]:
    """nvidia-smi's memory per process, mapped to the stubs, against each model's cap."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-compute-apps=pid,used_memory", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=30, check=True).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return [not_checked("nvidia-smi per-process memory", "each stub under its cap", f"nvidia-smi failed: {exc}")]
    ctx.sections["nvidia-smi --query-compute-apps"] = "```\n" + out.strip() + "\n```"
    usage = parse_compute_apps(out)
    if not usage:
        return [not_checked("nvidia-smi per-process memory", "each stub under its cap",
                            "nvidia-smi lists no per-process memory on this machine (a VM without pid mapping)")]
    plan = ctx.found["plan"]
    caps = {name: min(p.memory_cap_gib for p in c.placements) for name, c in plan.components.items()
            if any(p.gpus for p in c.placements)}
    server = ctx.found["server"].process.pid if ctx.found.get("server") else None
    return memory_checks(usage, stub_processes(parent=server), caps, server)


def rag_checks(ctx: Context) -> list[Check]:
    """One RAG question end to end over HTTP (tritonrag_client), and the retriever's stats."""
    from tritonrag_client import RagClient
    from tritonrag_client.client import retriever_stats

    server = ctx.found["server"]
    started = time.perf_counter()
    client = RagClient(server.http_url, "http", timeout_s=120)
    answer = client.ask(QUESTION, top_k=4, max_tokens=32, seed=0, min_score=0)  # min_score 0: always generate
    elapsed = time.perf_counter() - started
    sources = [{"chunk": s.get("chunk_id"), "score": s.get("score"), "section": s.get("section")}
               for s in (answer.sources or [])]
    ctx.found["rag"] = {"question": QUESTION, "answer": answer.text, "finish_reason": answer.finish_reason,
                        "sources": sources, "seconds": round(elapsed, 3)}
    ctx.sections["RAG answer"] = (f"Q: {QUESTION}\n\nA (a random-initialised model: noise is expected): "
                                  f"`{answer.text[:300]!r}`\n\nsources: `{json.dumps(sources)}`")
    checks = [verdict("rag: HTTP generate end to end", "an answer with sources", f"{len(answer.text)} chars, "
                      f"{len(sources)} sources, {answer.finish_reason}, {elapsed:.2f} s",
                      bool(sources) and answer.finish_reason in ("stop", "length"))]
    stats = retriever_stats(server.http_url)
    device = (stats.get("index") or {}).get("device")
    checks.append(verdict("retriever: stats device (faiss-cpu)", "cpu", device, device == "cpu"))
    try:
        grpc_client = RagClient(server.grpc_url, "grpc", timeout_s=120)
        grpc_answer = grpc_client.ask(QUESTION, top_k=2, max_tokens=8, min_score=0)
        checks.append(verdict("rag: gRPC stream (tritonclient)", "an answer", f"{len(grpc_answer.text)} chars",
                              grpc_answer.finish_reason in ("stop", "length")))
    except (ImportError, RuntimeError) as exc:  # tritonclient raises RuntimeError when grpc will not import
        checks.append(not_checked("rag: gRPC stream (tritonclient)", "an answer", f"tritonclient.grpc: {exc}"))
    except Exception as exc:
        checks.append(verdict("rag: gRPC stream (tritonclient)", "an answer", type(exc).__name__, False, str(exc)))
    return checks


def sample_texts(n: int = 256) -> list[str]:
    """Chunks of the travelling knowledge base (its docstore), cycled to ``n``."""
    import sqlite3

    from tritonrag.settings import load_settings

    index = Path(load_settings().retriever.index_dir)
    version = json.loads((index / "published.json").read_text())["version"]
    with sqlite3.connect(index / "versions" / version / "docstore.sqlite") as db:
        texts = [row[0] for row in db.execute("SELECT text FROM chunks ORDER BY id LIMIT ?", (n,))]
    return [texts[i % len(texts)] for i in range(n)]


def _infer(url: str, texts: list[str]) -> int:
    from tritonrag.serving.contract import EMBEDDER

    body = {"inputs": [{"name": EMBEDDER.text, "datatype": "BYTES", "shape": [len(texts), 1], "data": texts}],
            "outputs": [{"name": EMBEDDER.embedding, "parameters": {"binary_data": True}}]}
    request = urllib.request.Request(f"http://{url}/v2/models/{EMBEDDER.model}/infer", json.dumps(body).encode(),
                                     {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as response:
        response.read()
    return len(texts)


def served_throughput(url: str, texts: list[str], seconds: float, batch: int = 16, concurrency: int = 8) -> dict:
    """Texts/s through the served embedder: ``concurrency`` HTTP clients sending ``batch`` texts each."""
    _infer(url, texts[:batch])  # warm-up
    stop = time.monotonic() + seconds
    done = [0] * concurrency

    def client(i: int) -> None:
        k = i
        while time.monotonic() < stop:
            done[i] += _infer(url, [texts[(k + j) % len(texts)] for j in range(batch)])
            k += batch

    started = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(client, range(concurrency)))
    elapsed = time.perf_counter() - started
    return {"texts": sum(done), "seconds": round(elapsed, 2), "texts_per_s": round(sum(done) / elapsed, 1),
            "batch": batch, "concurrency": concurrency}


def inprocess_throughput(device: str, seconds: float, timeout_s: float) -> dict:
    """Texts/s of the project's TextEmbedder encoding in a fresh process on ``device`` (bounded by a timeout)."""
    command = [sys.executable, str(Path(__file__).resolve().parent / "gpu_check.py"), "encode", "--device", device,
               "--seconds", str(seconds)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s)
    if done.returncode != 0:
        raise RuntimeError(f"encode on {device} exited {done.returncode}: {done.stderr.strip()[-400:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def encode_benchmark(device: str, seconds: float) -> dict:
    """In this process: TextEmbedder on ``device``, batches of 64 chunks, for about ``seconds``."""
    from tritonrag.embedding.encoder import TextEmbedder
    from tritonrag.settings import load_settings

    texts = sample_texts()
    embedder = TextEmbedder(load_settings().embedder, device)
    embedder.encode(texts[:64])  # warm-up (CUDA kernels, tokenizer)
    count, started = 0, time.perf_counter()
    while time.perf_counter() - started < seconds:
        embedder.encode(texts[count % len(texts):][:64] or texts[:64])
        count += 64
    elapsed = time.perf_counter() - started
    return {"device": embedder.device, "texts": count, "seconds": round(elapsed, 2),
            "texts_per_s": round(count / elapsed, 1)}


def pytest_checks(ctx: Context, timeout_s: float) -> list[Check]:
    """``pytest -m gpu`` (tests/unit/test_gpu_paths.py) in a subprocess."""
    command = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-p", "no:cacheprovider",
               str(ROOT / "tests" / "unit" / "test_gpu_paths.py")]
    try:
        env = {**os.environ, "GPU_CHECK_EMBEDDER": str(ctx.found.get("embedder_path", ""))}
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, cwd=ROOT, env=env)
    except subprocess.TimeoutExpired:
        return [Check("pytest -m gpu", "all pass", f"timed out after {timeout_s:.0f} s", FAIL)]
    summary = (done.stdout.strip().splitlines() or ["(no output)"])[-1]
    ctx.sections["pytest -m gpu"] = "```\n" + done.stdout[-6000:] + done.stderr[-2000:] + "\n```"
    if "skipped" in summary and "passed" not in summary and "failed" not in summary:
        return [Check("pytest -m gpu", "all pass", summary, NOT_CHECKED, "skipped: no CUDA")]
    return [verdict("pytest -m gpu", "all pass", summary, done.returncode == 0)]
