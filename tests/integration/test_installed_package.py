"""The package works installed for real, without the checkout: a plain (non-editable) `pip install` into a fresh venv
renders a model repository and serves it, and Triton's Python stubs import the adapters from that install.

The fresh venv gets the project venv's dependencies through a ``.pth`` file naming its site-packages (a path line only
extends sys.path: the ``.pth`` files in that folder, such as the editable install's finder, are not executed), so
nothing is downloaded. The package is built from a copy of the working tree's files, so the build neither writes
build/ and *.egg-info into the checkout nor packages what a previous build left in build/lib (which would hide a
file missing from the package data). Fast stand-in embedder and generator (benchmarks/stand_in.toml); the retriever
serves the sample knowledge base.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
import urllib.request
from pathlib import Path

import pytest

from tritonrag.deploy.runtime import find_runtime
from tritonrag.deploy.server import free_port, port_is_free
from tritonrag.kb.versions import published_version
from tritonrag.settings import CONFIG_ENV, load_settings

from .helpers import post_json

pytestmark = pytest.mark.integration

CHECKOUT = Path(__file__).resolve().parents[2]
STAND_IN = CHECKOUT / "benchmarks" / "stand_in.toml"
MODELS = ("embedder", "generator", "prompt_builder", "rag", "reranker", "retriever")
PROBE_ENV = "TRITONRAG_TEST_IMPORT_PROBE"
READY_TIMEOUT_S = 240
# Imported at startup by a .pth line in the fresh venv, in every interpreter of it (the CLI and each Triton stub):
# with $TRITONRAG_TEST_IMPORT_PROBE set, appends "<pid> <path>" for every tritonrag source or bytecode file the
# import system opens (io.open_code raises the "open" audit event), which tells where the stubs imported from.
PROBE_MODULE = f"PROBE = {PROBE_ENV!r}\n" + '''
import os
import sys


def _record(event, args):
    if event != "open" or not args or not isinstance(args[0], str) or "tritonrag" not in args[0]:
        return
    if not args[0].endswith((".py", ".pyc")):
        return
    try:
        fd = os.open(os.environ[PROBE], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, f"{os.getpid()} {args[0]}\\n".encode())
        finally:
            os.close(fd)
    except Exception:  # an audit hook that raises would fail the import it watches
        pass


if os.environ.get(PROBE):
    sys.addaudithook(_record)
'''


def run(command, cwd, env, timeout=300):
    result = subprocess.run([str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True,
                            timeout=timeout)
    assert result.returncode == 0, f"{command} exited {result.returncode}:\n{result.stdout}\n{result.stderr}"
    return result.stdout


def copy_sources(destination: Path) -> Path:
    """The files of the working tree (tracked, and untracked ones git does not ignore) copied to ``destination``."""
    try:
        listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                                cwd=CHECKOUT, capture_output=True, check=True).stdout.decode().split("\0")
    except (OSError, subprocess.CalledProcessError):  # no git, or not a git checkout
        ignore = shutil.ignore_patterns(".git", ".venv", "build", "*.egg-info", "__pycache__", ".*_cache")
        return Path(shutil.copytree(CHECKOUT, destination, ignore=ignore))
    for name in filter(None, listed):
        source = CHECKOUT / name
        if source.is_file():  # a tracked file deleted in the working tree is still listed
            (destination / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, destination / name)
    return destination


def clean_env(venv: Path, **extra: str) -> dict[str, str]:
    """No PYTHONPATH, the fresh venv's bin first on PATH and the project venv's off it, the stand-in config."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    project_bin = str(Path(sys.executable).parent)
    path = [p for p in env.get("PATH", "").split(os.pathsep) if p and p != project_bin]
    env["PATH"] = os.pathsep.join([str(venv / "bin"), *path])
    env.update({CONFIG_ENV: str(STAND_IN), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
                "TOKENIZERS_PARALLELISM": "false"}, **extra)
    return env


@pytest.fixture(scope="module")
def stand_in_settings():
    settings = load_settings(STAND_IN)
    if published_version(settings.index_dir) is None:
        pytest.skip(f"no knowledge base at {settings.index_dir} (the stand-in config's retriever serves it): "
                    "run scripts/setup.sh first")
    try:
        find_runtime(settings.home)
    except FileNotFoundError as exc:
        pytest.skip(str(exc))
    return settings


@pytest.fixture(scope="module")
def installed(tmp_path_factory, stand_in_settings):
    """(venv, its site-packages, working folder): a fresh venv with the package pip-installed (not editable)."""
    work = tmp_path_factory.mktemp("installed")
    venv = work / "venv"
    started = time.monotonic()
    run([sys.executable, "-m", "venv", "--without-pip", venv], work, clean_env(venv))
    site = venv / "lib" / f"python{sys.version_info.major}.{sys.version_info.minor}" / "site-packages"
    assert site.is_dir(), site
    deps = dict.fromkeys(sysconfig.get_paths()[key] for key in ("purelib", "platlib"))
    (site / "_project_dependencies.pth").write_text("".join(f"{path}\n" for path in deps))
    (site / "_tritonrag_import_probe.py").write_text(PROBE_MODULE)
    (site / "_tritonrag_import_probe.pth").write_text("import _tritonrag_import_probe\n")
    python = venv / "bin" / "python"
    env = clean_env(venv)
    not_installed = run([python, "-c", "import importlib.util as u; "
                         "print([m for m in ('tritonrag', 'tritonrag_client') if u.find_spec(m)])"], work, env)
    assert not_installed.strip() == "[]", "the fresh venv imports tritonrag before it is installed"

    sources = copy_sources(work / "sources")
    # pip from the project venv (through the .pth), running in the fresh venv, installs into it; with
    # --ignore-installed it does not even look at the project venv's editable tritonrag
    run([python, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--ignore-installed",
         "--no-index", sources], work, env)
    print(f"venv + non-editable install: {time.monotonic() - started:.1f}s")
    yield venv, site, work


def test_the_fresh_venv_imports_the_installed_copy(installed):
    venv, site, work = installed
    script = (
        "import json, importlib.metadata as m, importlib.resources as r, tritonrag, tritonrag_client; "
        "d = m.distribution('tritonrag'); "
        "print(json.dumps({'tritonrag': tritonrag.__file__, 'client': tritonrag_client.__file__, "
        "'defaults': str(r.files('tritonrag.settings') / 'defaults.toml'), "
        "'templates': sorted(p.name for p in (r.files('tritonrag.prompts') / 'templates').iterdir()), "
        "'dist': str(d.locate_file('')), 'direct_url': json.loads(d.read_text('direct_url.json'))}))"
    )
    found = json.loads(run([venv / "bin" / "python", "-c", script], work, clean_env(venv)))
    for key in ("tritonrag", "client", "defaults"):
        path = Path(found[key]).resolve()
        assert path.is_relative_to(site.resolve()), (key, path)
        assert not path.is_relative_to(CHECKOUT), (key, path)
    assert Path(found["defaults"]).is_file()
    folder = CHECKOUT / "src/tritonrag/prompts/templates"
    assert found["templates"] == sorted([p.name for p in folder.glob("*.j2")] + ["templates.toml"])
    assert Path(found["dist"]).resolve() == site.resolve()
    assert not found["direct_url"].get("dir_info", {}).get("editable"), found["direct_url"]


@pytest.fixture(scope="module")
def repository(installed):
    venv, _, work = installed
    target = work / "repository"
    run([venv / "bin" / "tritonrag", "render", "--output", target], work, clean_env(venv))
    return target


def test_render_writes_every_model(repository):
    files = sorted(str(p.relative_to(repository)) for p in repository.rglob("*") if p.is_file())
    assert files == sorted([f"{m}/config.pbtxt" for m in MODELS] + [f"{m}/1/model.py" for m in MODELS])
    for model in MODELS:
        entry = (repository / model / "1" / "model.py").read_text()
        assert f"from tritonrag.serving.models.{model} import TritonPythonModel" in entry
        assert f'name: "{model}"' in (repository / model / "config.pbtxt").read_text()


def _ready(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/v2/health/ready", timeout=2) as response:
            return response.status == 200
    except OSError:
        return False


def _processes_mentioning(text: str) -> list[int]:
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and text.encode() in (proc / "cmdline").read_bytes():
                pids.append(int(proc.name))
        except OSError:
            continue
    return pids


def _serve_child_setup() -> None:
    """In the `tritonrag serve` child: SIGINT raises KeyboardInterrupt even when this test runs in a background job
    (which ignores SIGINT, and a child inherits that), and SIGINT it if this test process dies."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGINT)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def test_serve_answers_with_the_installed_adapters(installed, repository, stand_in_settings):
    venv, site, work = installed
    http, grpc, metrics = free_port(), free_port(), free_port()
    while len({http, grpc, metrics}) < 3:
        grpc, metrics = free_port(), free_port()
    probe = work / "imports.txt"
    triton_log = stand_in_settings.home / "logs" / f"tritonserver-{http}.log"
    serve_log = work / "serve.log"
    command = [venv / "bin" / "tritonrag", "serve", "--model-repository", repository, "--http-port", http,
               "--grpc-port", grpc, "--metrics-port", metrics]
    started = time.monotonic()
    with open(serve_log, "wb") as out:
        process = subprocess.Popen([str(c) for c in command], cwd=work, env=clean_env(venv, **{PROBE_ENV: str(probe)}),
                                   stdout=out, stderr=subprocess.STDOUT, preexec_fn=_serve_child_setup)

    def logs() -> str:
        tail = triton_log.read_text(errors="replace")[-4000:] if triton_log.exists() else "(no Triton log)"
        return f"tritonrag serve:\n{serve_log.read_text(errors='replace')[-4000:]}\n{triton_log}:\n{tail}"

    try:
        while not _ready(http):
            assert process.poll() is None, f"tritonrag serve exited {process.returncode} before ready\n{logs()}"
            assert time.monotonic() - started < READY_TIMEOUT_S, f"not ready in {READY_TIMEOUT_S}s\n{logs()}"
            time.sleep(0.5)
        print(f"serve ready in {time.monotonic() - started:.1f}s")

        status, body = post_json(f"http://127.0.0.1:{http}/v2/models/rag/generate",
                                 {"text_input": "Who is Passepartout?", "parameters": {"max_tokens": 8}})
        assert status == 200, (body, logs())
        assert len(body["text_output"].split()) == 8, body  # the stand-in generator streams max_tokens words
        sources = json.loads(body["sources"])
        assert sources and all({"chunk_id", "score", "title"} <= set(s) for s in sources), sources

        opened = [line.split(" ", 1) for line in probe.read_text().splitlines()]
        from_checkout = sorted({path for _, path in opened
                                if Path(path).resolve().is_relative_to(CHECKOUT / "src")
                                or Path(path).resolve().is_relative_to(CHECKOUT / "client")})
        assert not from_checkout, f"imported from the checkout: {from_checkout}"
        for model in MODELS:  # only Triton's stubs import the adapters
            adapter = site / "tritonrag" / "serving" / "models"
            stubs = {pid for pid, path in opened
                     if Path(path) in (adapter / f"{model}.py", adapter / "__pycache__" / f"{model}.cpython-"
                                       f"{sys.version_info.major}{sys.version_info.minor}.pyc")}
            assert stubs, f"no stub imported {adapter / model}.py; files opened:\n" + "\n".join(p for _, p in opened)
            assert str(process.pid) not in stubs
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
        try:
            process.wait(90)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        leftovers = _processes_mentioning(str(repository))  # Triton or stubs a failed stop left behind
        for pid in leftovers:
            os.kill(pid, signal.SIGKILL)
    print(f"serve, ask and stop: {time.monotonic() - started:.1f}s")
    assert process.returncode == 0, f"tritonrag serve exited {process.returncode} on SIGINT\n{logs()}"
    assert not leftovers, f"processes {leftovers} (Triton or its stubs) outlived `tritonrag serve`"
    assert port_is_free(http), f"port {http} still taken after the server stopped"
