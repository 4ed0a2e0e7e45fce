"""Start the Ray Serve baseline (ray_serve_rag.py): from the command line, or as a subprocess from Python.

    .venv/bin/python benchmarks/baselines/serve_baseline.py --port 8100            # serves until Ctrl-C
    .venv/bin/python benchmarks/baselines/serve_baseline.py --port 8100 --engine transformers --replicas chat=1

    from serve_baseline import BaselineServer
    with BaselineServer(port=8100, env={"TRITONRAG_CONFIG": "dev.toml"}) as server:
        ...  # POST f"{server.url}/generate" or f"{server.url}/generate_stream"

Settings come from tritonrag (defaults.toml + $TRITONRAG_CONFIG), exactly as for the Triton server.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType

HERE = Path(__file__).resolve().parent
COMPAT = HERE / "_ray_compat"  # sitecustomize.py: a start-up fix every Ray process needs (see the file)
READY_MARK = "baseline ready:"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8100, help="Serve's HTTP port (default 8100)")
    parser.add_argument("--engine", choices=("vllm", "transformers"), help="default: [generator] engine")
    parser.add_argument("--replicas", default="", help="replicas per deployment, e.g. embedder=1,chat=1 (default 1)")
    parser.add_argument("--num-cpus", default="", help="ray_actor_options num_cpus per deployment, e.g. chat=1,"
                        "embedder=0.5 (defaults fit --ray-cpus 2)")
    parser.add_argument("--ray-cpus", type=int, default=2, help="ray.init(num_cpus=...) (default 2)")
    parser.add_argument("--max-ongoing-requests", type=int, default=0,
                        help="per replica; 0 = [rag] max_concurrency (Ray Serve's default would be 5)")
    parser.add_argument("--embed-batching", action="store_true", help="@serve.batch on the Embedder (default off)")
    parser.add_argument("--embed-max-batch-size", type=int, default=16)
    parser.add_argument("--embed-batch-wait-ms", type=float, default=2.0)
    parser.add_argument("--omp-threads", type=int, default=0, help="OMP_NUM_THREADS of the replicas; 0 = all cores")
    parser.add_argument("--object-store-mb", type=int, default=256, help="Ray object store size (MiB)")
    parser.add_argument("--temp-dir", help="Ray's session folder (default /tmp/ray_tritonrag_PORT)")
    return parser.parse_args(argv)


def options_from_args(args: argparse.Namespace):  # -> BaselineOptions (imported lazily: it pulls in Ray)
    from ray_serve_rag import BaselineOptions, parse_counts

    return BaselineOptions(
        engine=args.engine, replicas=parse_counts(args.replicas, int), num_cpus=parse_counts(args.num_cpus, float),
        ray_cpus=float(args.ray_cpus), max_ongoing_requests=args.max_ongoing_requests,
        embed_batching=args.embed_batching, embed_max_batch_size=args.embed_max_batch_size,
        embed_batch_wait_s=args.embed_batch_wait_ms / 1000, omp_threads=args.omp_threads,
    )


def worker_env() -> dict[str, str]:
    """What every Ray worker needs: this folder importable (deployments are pickled by reference), tritonrag's
    settings overlay and home, and the offline/tokenizer settings tritonrag gives tritonserver."""
    env = {
        "PYTHONPATH": os.pathsep.join(p for p in (str(COMPAT), str(HERE), os.environ.get("PYTHONPATH", "")) if p),
        "HF_HUB_OFFLINE": os.environ.get("HF_HUB_OFFLINE", "1"),
        "TRANSFORMERS_OFFLINE": os.environ.get("TRANSFORMERS_OFFLINE", "1"),
        "TOKENIZERS_PARALLELISM": os.environ.get("TOKENIZERS_PARALLELISM", "false"),
    }
    for name in ("TRITONRAG_CONFIG", "TRITONRAG_HOME"):
        if os.environ.get(name):
            env[name] = str(Path(os.environ[name]).expanduser().resolve())
    return env


def start_ray(args: argparse.Namespace) -> None:
    """A private local Ray instance: its own session folder, no dashboard, no usage reporting."""
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    env = worker_env()
    os.environ["PYTHONPATH"] = env["PYTHONPATH"]  # Ray's own processes (raylet, agents) inherit the driver's env
    sys.path.insert(0, str(COMPAT))
    import ray
    import sitecustomize  # noqa: F401  (the same fix in this driver process, before Ray starts)

    ray.init(
        address="local", num_cpus=args.ray_cpus, include_dashboard=False, namespace="tritonrag-baseline",
        object_store_memory=args.object_store_mb * 2**20, _temp_dir=args.temp_dir or f"/tmp/ray_tritonrag_{args.port}",
        runtime_env={"env_vars": env}, log_to_driver=True,
    )


def serve_until_stopped(args: argparse.Namespace) -> None:
    """Build the Chroma collection, start Ray and the app, print the ready line, serve until SIGINT/SIGTERM."""
    sys.path.insert(0, str(HERE))
    from ray_serve_rag import build_app, ensure_collection

    from tritonrag.settings import load_settings

    started = time.perf_counter()
    settings = load_settings()
    options = options_from_args(args)
    options.check()
    chroma = ensure_collection(settings)
    start_ray(args)
    import ray
    from ray import serve

    def stop(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # Both explicitly: a process started in the background by a shell inherits SIGINT ignored.
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, stop)
    try:
        serve.start(http_options={"host": args.host, "port": args.port, "location": "HeadOnly"})
        serve.run(build_app(settings, options), name="rag", route_prefix="/")
        print(f"{READY_MARK} http://{args.host}:{args.port} in {time.perf_counter() - started:.1f}s "
              f"(engine {options.engine or settings.generator.engine}, chroma {chroma['fingerprint']}, "
              f"{chroma['chunks']} chunks)", flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        print("baseline: stopping", flush=True)
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, signal.SIG_DFL)  # a second Ctrl-C ends this process at once
        try:
            serve.shutdown()
        finally:
            ray.shutdown()
        print("baseline: stopped", flush=True)


# ----------------------------------------------------------------------------------------- as a managed subprocess


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def session_processes(sid: int) -> list[str]:
    """'PID COMMAND' of every live process in session ``sid`` (the launcher's: it runs with start_new_session)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            raw = stat.read_text()
        except OSError:
            continue
        head, _, rest = raw.rpartition(")")
        fields = rest.split()
        if len(fields) > 3 and fields[0] != "Z" and int(fields[3]) == sid:
            found.append(f"{stat.parent.name} {head.partition('(')[2]}")
    return sorted(found)


class BaselineServer:
    """Run ``serve_baseline.py`` as a subprocess in its own session (Ray and vLLM live in its process tree).

    ``start`` waits until ``GET /healthz`` answers 200; ``stop`` sends SIGINT (serve.shutdown, ray.shutdown),
    then SIGTERM/SIGKILL to the whole process group, and checks that no process of the session is left.
    """

    def __init__(self, port: int = 8100, host: str = "127.0.0.1", env: Mapping[str, str] | None = None,
                 log_path: str | os.PathLike[str] | None = None, args: Sequence[str] = (),
                 startup_timeout_s: float = 900.0, stop_timeout_s: float = 60.0,
                 python: str = sys.executable) -> None:
        self.host, self.port = host, port
        self.env = {**os.environ, **(env or {})}
        self.log_path = Path(log_path or f"/tmp/tritonrag_baseline_{port}.log")
        self.args = list(args)
        self.startup_timeout_s, self.stop_timeout_s = startup_timeout_s, stop_timeout_s
        self.python = python
        self.process: subprocess.Popen[bytes] | None = None
        self.startup_s: float | None = None
        self.leftovers: list[str] = []

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def start(self) -> BaselineServer:
        if not port_is_free(self.host, self.port):
            raise RuntimeError(f"port {self.port} is in use: stop what runs there or pick another --port")
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        command = [self.python, str(HERE / "serve_baseline.py"), "--host", self.host, "--port", str(self.port),
                   *self.args]
        started = time.perf_counter()
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=self.env,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        try:
            self._wait_ready(started)
        except BaseException:
            self.stop()
            raise
        self.startup_s = time.perf_counter() - started
        return self

    def _wait_ready(self, started: float) -> None:
        assert self.process is not None
        while time.perf_counter() - started < self.startup_timeout_s:
            if self.process.poll() is not None:
                raise RuntimeError(f"the baseline exited with code {self.process.returncode} while starting; "
                                   f"log {self.log_path}:\n{self.log_tail()}")
            if self.healthy():
                return
            time.sleep(1.0)
        raise TimeoutError(f"the baseline was not ready after {self.startup_timeout_s:.0f}s; log {self.log_path}:\n"
                           f"{self.log_tail()}")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/healthz", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def stop(self) -> list[str]:
        """Stop the launcher and everything it started; returns the processes that survived (should be none)."""
        if self.process is None:
            return []
        sid = self.process.pid
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout=self.stop_timeout_s)
            except subprocess.TimeoutExpired:
                pass
        for sig, grace in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
            survivors = session_processes(sid)
            if not survivors:
                break
            for line in survivors:  # the session, not just the process group: Ray's children may regroup
                try:
                    os.kill(int(line.split()[0]), sig)
                except ProcessLookupError:
                    pass
            deadline = time.monotonic() + grace
            while session_processes(sid) and time.monotonic() < deadline:
                time.sleep(0.2)
        if self.process.poll() is None:
            self.process.wait(timeout=5)
        self.leftovers = session_processes(sid)
        self.process = None
        return self.leftovers

    def __enter__(self) -> BaselineServer:
        return self.start()

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.stop()


if __name__ == "__main__":
    serve_until_stopped(parse_args())
