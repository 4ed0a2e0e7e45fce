"""Faults under load: SIGKILL each model's stub in turn (the generator together with its vLLM engine processes),
then tritonserver itself, while clients keep asking; count the failed requests per fault and the seconds until
`tritonrag serve`'s supervisor has the service answering again. Writes a fault table.

    .venv/bin/python benchmarks/faults.py                                   # stand-in models (~3 min)
    .venv/bin/python benchmarks/faults.py --config tests/integration/settings.toml \\
        --faults embedder,retriever,prompt_builder,generator,vllm-engine,rag,tritonserver   # vLLM (SmolLM2-135M)
    .venv/bin/python benchmarks/faults.py --faults embedder,tritonserver --concurrency 8

tests/integration/test_faults.py runs the same faults on the stand-ins in CI.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import asdict, dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from tritonrag.deploy.server import free_port  # noqa: E402
from tritonrag.deploy.supervisor import kill_all, model_processes, process_table  # noqa: E402

FAULTS = ("embedder", "retriever", "prompt_builder", "generator", "rag", "tritonserver")
ENGINE = "vllm-engine"  # the generator's vLLM engine processes alone, its stub left alive (vLLM settings only)
QUESTIONS = ("Describe the body of water in Utah", "Tell me as much as you can about the robbery",
             "Did Phileas Fogg really rob the bank?")
OUT = ROOT / "benchmarks" / "results" / "faults"
API_KEY = "faults-" + "k" * 32


def unlimited_config(config: str, folder: Path) -> str:
    """``config`` with the ingress's per-key limits off (the load retries at once; it measures faults, not limits)
    and a start-up timeout long enough for vLLM on a busy CPU."""
    text = Path(config).read_text()
    for section in ("[ingress]", "[server]"):
        if section in text:
            raise ValueError(f"{config} has an {section} section: pass settings without it")
    path = folder / "faults.toml"
    path.write_text(f"{text}\n[server]\nstartup_timeout_s = 1200\n"
                    "[ingress]\nrate_limit_rpm = 0\nmax_concurrency_per_key = 0\n")
    return str(path)


class ServeProcess:
    """`tritonrag serve` (Triton, the ingress and the supervisor) as a child process on free ports."""

    def __init__(self, config: str, log_file: Path, ingress: bool = True) -> None:
        self.http, self.grpc, self.metrics, self.ingress_port, self.health = (free_port() for _ in range(5))
        self.config = unlimited_config(config, log_file.parent)
        self.log_file, self.with_ingress = log_file, ingress
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 1200) -> ServeProcess:
        command = [sys.executable, "-m", "tritonrag.cli", "serve", "--http-port", str(self.http),
                   "--grpc-port", str(self.grpc), "--metrics-port", str(self.metrics),
                   "--health-port", str(self.health)]
        command += ["--ingress-port", str(self.ingress_port)] if self.with_ingress else ["--no-ingress"]
        env = {**os.environ, "TRITONRAG_CONFIG": self.config, "TRITONRAG_API_KEYS": f"faults:{API_KEY}"}
        with open(self.log_file, "wb") as out:
            self.process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env,
                                            start_new_session=True)
        deadline = time.monotonic() + timeout_s
        while not (self.ready() and (not self.with_ingress or _status(f"{self.ingress_url}/health") == 200)):
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"tritonrag serve did not come up; see {self.log_file}")
            time.sleep(0.5)
        return self

    @property
    def ingress_url(self) -> str:
        return f"http://127.0.0.1:{self.ingress_port}"

    def ready(self) -> bool:
        """The supervisor's readiness (what load balancers and probes check)."""
        return _status(f"http://127.0.0.1:{self.health}/health/ready") == 200

    def triton_ready(self) -> bool:
        return _status(f"http://127.0.0.1:{self.http}/v2/health/ready") == 200

    def tritonserver_pid(self) -> int:
        """The tritonserver now running under this serve (it changes when the supervisor restarts it)."""
        table = process_table()
        for proc in table.values():
            if proc.ppid == self.process.pid and proc.cmdline and proc.cmdline[0].endswith("tritonserver"):
                return proc.pid
        raise RuntimeError("no tritonserver below tritonrag serve")

    def kill(self, fault: str) -> int:
        """SIGKILL the fault's processes: a model's stubs and what they spawned, or tritonserver; how many."""
        pid = self.tritonserver_pid()
        if fault == "tritonserver":
            os.kill(pid, signal.SIGKILL)
            return 1
        models = model_processes(process_table(), pid, ROOT / "model_repository")
        if fault == ENGINE:
            return kill_all(models["generator"].spawned)
        return kill_all(models[fault].stubs | models[fault].spawned)

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def _status(url: str) -> int | None:
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


@dataclass
class Outcome:
    started: float
    ended: float
    status: int | None  # None: no HTTP answer (connection refused or reset)
    message: str


@dataclass
class Load:
    """``concurrency`` clients sending non-streamed rag requests until stopped: to the ingress's
    /v1/chat/completions (``ingress_url``), else to Triton's HTTP generate."""

    http_port: int
    concurrency: int = 4
    max_tokens: int = 8
    ingress_url: str = ""
    outcomes: list[Outcome] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def _request(self, question: str) -> urllib.request.Request:
        if self.ingress_url:
            body = {"model": "rag", "messages": [{"role": "user", "content": question}],
                    "max_tokens": self.max_tokens}
            return urllib.request.Request(f"{self.ingress_url}/v1/chat/completions", data=json.dumps(body).encode(),
                                          method="POST", headers={"Content-Type": "application/json",
                                                                  "Authorization": f"Bearer {API_KEY}"})
        body = {"text_input": question, "parameters": {"max_tokens": self.max_tokens}}
        return urllib.request.Request(f"http://127.0.0.1:{self.http_port}/v2/models/rag/generate",
                                      data=json.dumps(body).encode(), method="POST",
                                      headers={"Content-Type": "application/json"})

    def _ask(self, question: str) -> Outcome:
        request = self._request(question)
        started = time.time()
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                response.read()
                return Outcome(started, time.time(), response.status, "")
        except urllib.error.HTTPError as exc:
            return Outcome(started, time.time(), exc.code, exc.read().decode(errors="replace")[:300])
        except OSError as exc:
            return Outcome(started, time.time(), None, str(exc)[:300])

    def _client(self, index: int) -> None:
        n = index
        while not self._stop.is_set():
            outcome = self._ask(QUESTIONS[n % len(QUESTIONS)])
            self.outcomes.append(outcome)
            n += 1
            if outcome.status != 200:
                time.sleep(0.1)  # a client that retries, not a busy loop

    def __enter__(self) -> Load:
        self.threads = [threading.Thread(target=self._client, args=(i,), daemon=True)
                        for i in range(self.concurrency)]
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self.threads:
            thread.join(130)


@dataclass
class FaultResult:
    fault: str
    killed_processes: int
    failed_requests: int
    answered_requests: int
    not_ready_seen: bool  # the supervisor's /health/ready turned false during the fault
    triton_not_ready_s: float  # how long Triton's own /v2/health/ready said so (sampled every ~0.1 s)
    recovery_s: float | None  # from the kill to ready again with a request answered; None: not recovered
    statuses: dict[str, int]
    sample_error: str
    samples: dict[str, str]  # a failure's message per HTTP status


def inject(serve: ServeProcess, fault: str, concurrency: int = 4, max_tokens: int = 8,
           recover_timeout_s: float = 600, settle_s: float = 3, via_ingress: bool = True) -> FaultResult:
    """Kill ``fault`` under load; wait until readiness is back and a request started after it succeeds."""
    ingress = serve.ingress_url if via_ingress and serve.with_ingress else ""
    with Load(serve.http, concurrency, max_tokens, ingress) as load:
        time.sleep(settle_s)
        killed = serve.kill(fault)
        t0 = time.time()
        not_ready_seen, recovered_at, triton_not_ready, last = False, None, 0.0, t0
        while time.time() - t0 < recover_timeout_s:
            now = time.time()
            triton_not_ready += (now - last) * (not serve.triton_ready())
            last = now
            if not serve.ready():
                not_ready_seen = True
            elif any(o.status == 200 and o.started > t0 + 0.5 for o in load.outcomes):
                recovered_at = min(o.ended for o in load.outcomes if o.status == 200 and o.started > t0 + 0.5)
                if serve.ready():
                    break
            time.sleep(0.1)
        time.sleep(settle_s)  # and keeps answering
    during = [o for o in load.outcomes if o.ended >= t0]
    failed = [o for o in during if o.status != 200]
    statuses: dict[str, int] = {}
    samples: dict[str, str] = {}
    for outcome in failed:
        statuses[str(outcome.status)] = statuses.get(str(outcome.status), 0) + 1
        samples.setdefault(str(outcome.status), outcome.message)
    return FaultResult(fault, killed, len(failed), len(during) - len(failed), not_ready_seen,
                       round(triton_not_ready, 1), None if recovered_at is None else round(recovered_at - t0, 1),
                       statuses, failed[0].message if failed else "", samples)


def report(results: list[FaultResult], command: str, config: str, concurrency: int, via: str) -> str:
    rows = ["| fault | processes killed | failed requests | answered during the fault | supervisor's readiness "
            "false | Triton's readiness false (s) | recovery (s) | failures by HTTP status |",
            "|---|---|---|---|---|---|---|---|"]
    for r in results:
        statuses = ", ".join(f"{s}: {n}" for s, n in sorted(r.statuses.items())) or "-"
        rows.append(f"| {r.fault} | {r.killed_processes} | {r.failed_requests} | {r.answered_requests} | "
                    f"{'yes' if r.not_ready_seen else 'no'} | {r.triton_not_ready_s} | "
                    f"{'not recovered' if r.recovery_s is None else r.recovery_s} | {statuses} |")
    errors = [f"- {r.fault}, {status}: `{message.strip()[:240]}`"
              for r in results for status, message in sorted(r.samples.items())]
    return "\n".join([
        "# Faults under load", "",
        f"Command: `{command}`", "",
        f"Settings: `{config}`; {concurrency} clients sending non-streamed rag requests ({via}) without pause (a "
        "failed one retries after 0.1 s), to `tritonrag serve` with its supervisor. Recovery: from the SIGKILL until "
        "the supervisor's `/health/ready` is 200 again and a request started after the kill was answered. Triton's "
        "own `/v2/health/ready` turns 200 again as soon as a broken model is unloaded, which is why load balancers "
        "and probes check the supervisor's.", "",
        *rows, "", "A failure's message, per fault and status:", "", *errors, ""])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=str(ROOT / "benchmarks" / "stand_in.toml"),
                        help="settings to serve with (TRITONRAG_CONFIG); default: the stand-in models")
    parser.add_argument("--faults", default=",".join(FAULTS),
                        help=f"comma-separated, from {', '.join((*FAULTS, ENGINE))}")
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=8)
    parser.add_argument("--via", choices=("ingress", "triton"), default="ingress",
                        help="send the load to the ingress's /v1/chat/completions or to Triton's HTTP generate")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)
    faults = [f.strip() for f in args.faults.split(",") if f.strip()]
    unknown = sorted(set(faults) - {*FAULTS, ENGINE})
    if unknown:
        parser.error(f"unknown fault(s) {', '.join(unknown)}: choose from {', '.join((*FAULTS, ENGINE))}")
    args.out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="tritonrag-faults-"))  # the served settings and serve's log
    serve = ServeProcess(args.config, work / "serve.log", ingress=True)
    print(f"starting tritonrag serve ({args.config}); log {serve.log_file}", flush=True)
    serve.start()
    results = []
    try:
        for fault in faults:
            print(f"killing {fault} under load...", flush=True)
            result = inject(serve, fault, args.concurrency, args.max_tokens, via_ingress=args.via == "ingress")
            print(f"  {result.failed_requests} failed, {result.answered_requests} answered, recovered in "
                  f"{result.recovery_s}s", flush=True)
            results.append(result)
    finally:
        serve.stop()
    command = "python benchmarks/faults.py " + " ".join(argv if argv is not None else sys.argv[1:])
    via = "the ingress's /v1/chat/completions" if args.via == "ingress" else "Triton's HTTP generate"
    text = report(results, command.strip(), args.config, args.concurrency, via)
    (args.out / "report.md").write_text(text)
    (args.out / "results.json").write_text(json.dumps([asdict(r) for r in results], indent=1) + "\n")
    print(text)
    return 0 if all(r.recovery_s is not None for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
