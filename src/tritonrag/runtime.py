"""Find or install the Triton server runtime and run it on a model repository."""

from __future__ import annotations

import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import tempfile
import time
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

PYTRITON_VERSION = "0.7.0"  # bundles tritonserver 2.51 with the Python backend and per-Python stubs
_WHEEL_PREFIXES = ("pytriton/tritonserver/", "nvidia_pytriton.libs/")


@dataclass(frozen=True)
class TritonRuntime:
    """Where a tritonserver binary and its Python backend live."""

    server: Path
    python_backend: Path  # folder with libtriton_python.so and triton_python_backend_utils.py
    stub: Path | None  # triton_python_backend_stub for this interpreter; None = the backend's own
    lib_dirs: tuple[Path, ...]
    origin: str  # "system" (e.g. NGC container) or "local"


def local_runtime_dir(home: Path) -> Path:
    return home / "triton" / f"pytriton-{PYTRITON_VERSION}"


def _python_tag() -> str:
    return f"{sys.version_info.major}.{sys.version_info.minor}"


def find_runtime(home: Path) -> TritonRuntime:
    """Prefer a ``tritonserver`` on PATH (the NGC container), else the local install under ``home``."""
    on_path = shutil.which("tritonserver")
    if on_path and os.environ.get("TRITONRAG_USE_LOCAL_TRITON") != "1":
        root = Path(on_path).resolve().parent.parent
        backend = root / "backends" / "python"
        if backend.is_dir():
            return TritonRuntime(Path(on_path), backend, None, (), "system")
    root = local_runtime_dir(home)
    server = root / "pytriton" / "tritonserver" / "bin" / "tritonserver"
    if not server.exists():
        raise FileNotFoundError(
            f"no tritonserver on PATH and none installed under {root}: run `tritonrag install-runtime` "
            "(scripts/setup.sh does it for you)"
        )
    base = root / "pytriton" / "tritonserver"
    stub = base / "python_backend_stubs" / _python_tag() / "triton_python_backend_stub"
    if not stub.exists():
        available = sorted(p.name for p in (base / "python_backend_stubs").iterdir())
        raise FileNotFoundError(
            f"the bundled Triton has no Python backend stub for Python {_python_tag()} ({sys.executable}); "
            f"stubs exist for {', '.join(available)}: create the venv with one of those"
        )
    return TritonRuntime(server, base / "backends" / "python", stub, (root / "nvidia_pytriton.libs",), "local")


def install_runtime(home: Path, wheel: Path | None = None) -> Path:
    """Unpack tritonserver, its Python backend and libraries from the nvidia-pytriton wheel (idempotent)."""
    root = local_runtime_dir(home)
    marker = root / ".installed"
    if marker.exists():
        prepare_perf_analyzer(home)
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=root.parent) as tmp:
        if wheel is None:
            log.info("downloading nvidia-pytriton==%s (no dependencies) with pip", PYTRITON_VERSION)
            subprocess.run(
                [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "-q",
                 "-d", tmp, f"nvidia-pytriton=={PYTRITON_VERSION}"],
                check=True,
            )
            wheel = next(Path(tmp).glob("nvidia_pytriton-*.whl"))
        staging = Path(tmp) / "runtime"
        with zipfile.ZipFile(wheel) as zf:
            for info in zf.infolist():
                if info.filename.startswith(_WHEEL_PREFIXES) and "__pycache__" not in info.filename:
                    target = zf.extract(info, staging)
                    mode = (info.external_attr >> 16) & 0o777
                    if mode:
                        os.chmod(target, mode)
        for binary in staging.glob("pytriton/tritonserver/**/*"):
            if binary.is_file() and binary.name in {"tritonserver", "triton_python_backend_stub"}:
                binary.chmod(0o755)
        if root.exists():
            shutil.rmtree(root)
        staging.rename(root)
    marker.write_text(PYTRITON_VERSION)
    prepare_perf_analyzer(home)
    return root



# perf_analyzer (installed by the tritonclient wheel) links these; the nvidia-pytriton wheel ships them under
# auditwheel-mangled names (libb64-98cb6333.so.0d, libcudart-09529672.so.12.6.77).
PERF_ANALYZER_LIBS = ("libb64.so.0d", "libcudart.so.12")


def perf_analyzer_libs_dir(home: Path) -> Path:
    return home / "triton" / "perf-analyzer-libs"


def find_mangled_lib(soname: str, folders: tuple[Path, ...]) -> Path | None:
    """The file in ``folders`` that auditwheel renamed from ``soname`` (``libX-<hash>.so.N[.M...]``)."""
    stem, _, suffix = soname.partition(".")
    pattern = re.compile(rf"{re.escape(stem)}-[0-9a-f]+\.{re.escape(suffix)}(\.[0-9]+)*")
    for folder in folders:
        if not folder.is_dir():
            continue
        for candidate in sorted(folder.iterdir()):
            if candidate.name == soname or pattern.fullmatch(candidate.name):
                return candidate
    return None


def link_libs(folder: Path, targets: dict[str, Path]) -> Path:
    """Make ``folder/name`` a symlink to each target (idempotent; a stale link is replaced)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, target in targets.items():
        link = folder / name
        if link.is_symlink() or link.exists():
            if link.resolve() == target.resolve():
                continue
            link.unlink()
        link.symlink_to(target)
    return folder


def prepare_perf_analyzer(home: Path) -> Path | None:
    """Link the libraries perf_analyzer needs, under their real names, into ``perf_analyzer_libs_dir(home)``.

    Returns the folder, or None when the local runtime is not installed or lacks them (e.g. in the NGC SDK
    container, where perf_analyzer finds its libraries itself)."""
    source = local_runtime_dir(home) / "nvidia_pytriton.libs"
    found = {name: find_mangled_lib(name, (source,)) for name in PERF_ANALYZER_LIBS}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        log.debug("perf_analyzer libraries %s not found in %s", ", ".join(missing), source)
        return None
    return link_libs(perf_analyzer_libs_dir(home), {name: path for name, path in found.items() if path})


def perf_analyzer_env(home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment to run perf_analyzer with: the linked libraries first on LD_LIBRARY_PATH."""
    env = dict(os.environ)
    folder = prepare_perf_analyzer(home)
    if folder is not None:
        env["LD_LIBRARY_PATH"] = os.pathsep.join(p for p in (str(folder), env.get("LD_LIBRARY_PATH", "")) if p)
    env.update(extra or {})
    return env


def find_perf_analyzer() -> Path:
    """perf_analyzer next to this interpreter (the tritonclient wheel's, same version as the client), else on PATH."""
    beside = Path(sys.executable).parent / "perf_analyzer"
    if beside.is_file() and os.access(beside, os.X_OK):
        return beside
    on_path = shutil.which("perf_analyzer")
    if on_path:
        return Path(on_path)
    raise FileNotFoundError(
        f"no perf_analyzer next to {sys.executable} or on PATH: install tritonclient[all] (its wheel ships the binary)"
    )

def prepare_backend_dir(runtime: TritonRuntime, home: Path) -> Path:
    """A backend directory whose python/ holds the backend and the stub matching this interpreter."""
    folder = home / "triton" / f"backends-py{_python_tag()}"
    python_dir = folder / "python"
    links = {name: runtime.python_backend / name for name in ("libtriton_python.so", "triton_python_backend_utils.py")}
    if runtime.stub is not None:
        links["triton_python_backend_stub"] = runtime.stub
    link_libs(python_dir, links)
    return folder


def server_env(runtime: TritonRuntime, extra: dict[str, str] | None = None) -> dict[str, str]:
    """Environment for tritonserver: its libraries, this interpreter's libpython, and this venv first on PATH
    (the stub's embedded Python finds the venv's site-packages through it)."""
    env = dict(os.environ)
    lib_dirs = [str(p) for p in runtime.lib_dirs]
    libpython_dir = sysconfig.get_config_var("LIBDIR")
    if libpython_dir:
        lib_dirs.append(libpython_dir)
    if env.get("LD_LIBRARY_PATH"):
        lib_dirs.append(env["LD_LIBRARY_PATH"])
    env["LD_LIBRARY_PATH"] = os.pathsep.join(lib_dirs)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env.setdefault("HF_HUB_OFFLINE", "1")
    env.setdefault("TRANSFORMERS_OFFLINE", "1")
    env.setdefault("TOKENIZERS_PARALLELISM", "false")
    env.update(extra or {})
    return env


def port_is_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class Ports:
    http: int
    grpc: int
    metrics: int

    @classmethod
    def choose(cls, http: int, grpc: int, metrics: int) -> Ports:
        """The preferred ports where free, otherwise any free ones (logged)."""
        chosen: list[int] = []
        for name, port in (("http", http), ("grpc", grpc), ("metrics", metrics)):
            if port <= 0 or port in chosen or not port_is_free(port):
                new = free_port()
                while new in chosen:
                    new = free_port()
                if port > 0:
                    log.warning("%s port %d is busy; using %d", name, port, new)
                port = new
            chosen.append(port)
        return cls(*chosen)


def _detach_and_die_with_parent() -> None:
    """In the child: own process group (Ctrl-C goes to the launcher, which stops Triton in order), and
    SIGTERM to Triton if the launcher dies without stopping it, so no server outlives its launcher."""
    os.setsid()
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


class TritonServer:
    """A tritonserver process on a model repository: start, wait until ready, stop cleanly."""

    def __init__(
        self,
        model_repository: Path,
        home: Path,
        ports: Ports,
        log_file: Path | None = None,
        env: dict[str, str] | None = None,
        extra_args: tuple[str, ...] = (),
        address: str = "127.0.0.1",
    ) -> None:
        self.model_repository = Path(model_repository).resolve()
        self.home = home
        self.ports = ports
        self.log_file = log_file or home / "logs" / f"tritonserver-{ports.http}.log"
        self.extra_env = env or {}
        self.extra_args = extra_args
        self.address = address
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def http_url(self) -> str:
        return f"127.0.0.1:{self.ports.http}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.ports.grpc}"

    @property
    def metrics_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.metrics}/metrics"

    def command(self) -> list[str]:
        runtime = find_runtime(self.home)
        args = [
            str(runtime.server),
            f"--model-repository={self.model_repository}",
            f"--http-port={self.ports.http}",
            f"--grpc-port={self.ports.grpc}",
            f"--metrics-port={self.ports.metrics}",
            f"--http-address={self.address}",
            f"--grpc-address={self.address}",
            "--exit-on-error=true",
            "--strict-readiness=true",
            "--exit-timeout-secs=20",
        ]
        if runtime.origin == "local":
            args.append(f"--backend-directory={prepare_backend_dir(runtime, self.home)}")
        return [*args, *self.extra_args]

    def start(self, timeout_s: float = 300.0) -> TritonServer:
        runtime = find_runtime(self.home)
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        log.info("starting tritonserver (%s), log: %s", runtime.origin, self.log_file)
        with open(self.log_file, "wb") as out:
            self.process = subprocess.Popen(
                self.command(), stdout=out, stderr=subprocess.STDOUT, env=server_env(runtime, self.extra_env),
                preexec_fn=_detach_and_die_with_parent,
            )
        self.wait_ready(timeout_s)
        return self

    def log_tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def wait_ready(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        url = f"http://{self.http_url}/v2/health/ready"
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(
                    f"tritonserver exited with code {self.process.returncode} while loading models; "
                    f"last lines of {self.log_file}:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:
                    if resp.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"tritonserver not ready after {timeout_s:.0f}s; see {self.log_file}:\n{self.log_tail()}")

    def stop(self, timeout_s: float = 30.0) -> None:
        """SIGINT (Triton drains in-flight requests and unloads the models), then SIGKILL whatever is left of
        its process group."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGINT)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                log.warning("tritonserver did not stop in %.0fs; killing it", timeout_s)
        # Whatever is left of Triton's process group (a stub, or processes an engine such as vLLM spawned)
        # would otherwise outlive the server.
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        self.process.wait()

    def __enter__(self) -> TritonServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
