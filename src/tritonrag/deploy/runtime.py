"""Find or install the Triton server runtime (tritonserver, its Python backend, perf_analyzer's libraries)."""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import sys
import sysconfig
import tempfile
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
