"""The GPU kit's non-model parts: the Triton runtime trimmed to what a GPU server loads, and the Python packages
the lent machine lacks (as an unpacked site folder), each one compressed archive.

The runtime keeps the server binary, the Python backend, the Python 3.12 stub and the closure of the shared
libraries those three need (their ELF ``NEEDED`` entries, followed through nvidia_pytriton.libs); the other stubs,
the local cache and libpython 3.13 stay behind. ICU's 29 MB data library is needed only by libxml2's legacy
encoding converters, which Triton never opens: with a C compiler it is replaced by a stub that exports its one
symbol (``icudt70_dat``).
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

STUB_PYTHON = "3.12"  # the lent machine's interpreter
SERVER_FILES = ("pytriton/tritonserver/bin/tritonserver",
                "pytriton/tritonserver/backends/python/libtriton_python.so",
                "pytriton/tritonserver/backends/python/triton_python_backend_utils.py",
                f"pytriton/tritonserver/python_backend_stubs/{STUB_PYTHON}/triton_python_backend_stub")
LIBS = "nvidia_pytriton.libs"
ICU_DATA = re.compile(r"libicudata-[0-9a-f]+\.so\.(\d+)(\.\d+)*")
LIBPYTHON = f"libpython{STUB_PYTHON}.so.1.0"
LIBPYTHON_DIR = "libpython-fallback"  # in the runtime archive, for a machine whose Python has no shared libpython

# name==version of each wheel for Python 3.12 manylinux x86_64, and what of it travels
WHEELS = {
    "numpy": "1.26.4",  # < 2: Triton 2.51's Python backend corrupts BYTES tensors under numpy 2
    "faiss-cpu": "1.15.1",  # the retriever's faiss path (no faiss-gpu wheel fits, or exists for this CUDA)
    "tritonclient": "2.51.0",  # its Python modules only (not perf_analyzer): tritonrag_client's gRPC path
    "python-rapidjson": "1.25",  # tritonclient's JSON
}
PLATFORMS = ("manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64", "manylinux_2_17_x86_64",
             "manylinux2014_x86_64", "manylinux1_x86_64")
SITE_DROP = re.compile(r"(^|/)(tests?|__pycache__)(/|$)|\.dist-info/RECORD$|^bin/|\.pyi$")


def needed(binary: Path) -> list[str]:
    """The ``NEEDED`` shared libraries of an ELF file (readelf)."""
    out = subprocess.run(["readelf", "-d", str(binary)], capture_output=True, text=True, check=True).stdout
    return re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", out)


def library_closure(root: Path, roots: tuple[str, ...] = SERVER_FILES) -> list[str]:
    """Names of the libraries in ``root/nvidia_pytriton.libs`` that the ``roots`` load, directly or not."""
    libs, seen = root / LIBS, set()
    todo = [root / r for r in roots if r.endswith((".so", "tritonserver", "_stub"))]
    while todo:
        for name in needed(todo.pop()):
            if name not in seen and (libs / name).exists():
                seen.add(name)
                todo.append(libs / name)
    return sorted(seen)


def icu_stub(target: Path, soname: str, version: str) -> bool:
    """Build a stand-in for ICU's data library (one exported symbol, no data) at ``target``; False without cc."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None:
        return False
    source = target.with_suffix(".c")
    source.write_text(f"/* ICU data stand-in: Triton never opens an ICU converter */\n"
                      f"const unsigned char icudt{version}_dat[64] __attribute__((aligned(16))) = {{0}};\n")
    subprocess.run([compiler, "-shared", "-fPIC", "-O2", f"-Wl,-soname,{soname}", "-o", str(target), str(source)],
                   check=True)
    source.unlink()
    return True


def find_libpython() -> Path | None:
    """A shared libpython 3.12 on this machine (pyenv, the system's), to travel as the stub's fallback."""
    patterns = [os.environ.get("TRITONRAG_LIBPYTHON312", ""), f"{Path.home()}/.pyenv/versions/3.12*/lib/{LIBPYTHON}",
                f"/usr/lib/x86_64-linux-gnu/{LIBPYTHON}", f"/usr/local/lib/{LIBPYTHON}"]
    for pattern in filter(None, patterns):
        found = sorted(glob.glob(pattern))
        if found:
            return Path(found[-1])
    return None


def compress(folder: Path, archive: Path) -> Path:
    """``folder``'s contents as ``archive`` (.tar.xz, xz -9 on every core), written atomically."""
    partial = archive.with_name(archive.name + ".partial")
    subprocess.run(["tar", "-C", str(folder), "--owner=0", "--group=0", "--sort=name", "-I", "xz -9 -T0",
                    "-cf", str(partial), "."], check=True)
    partial.rename(archive)
    return archive


def extract(archive: Path, target: Path) -> None:
    """Unpack a .tar.xz with Python alone (the lent machine may lack xz)."""
    target.mkdir(parents=True, exist_ok=True)
    with tarfile.open(archive, "r:xz") as tar:
        tar.extractall(target, filter="tar" if hasattr(tarfile, "tar_filter") else None)  # noqa: S202  (ours: pack())


def stage_runtime(runtime_root: Path, stage: Path, use_icu_stub: bool = True) -> dict[str, object]:
    """Copy what a GPU server loads from ``runtime_root`` (…/pytriton-0.7.0) into ``stage/pytriton-0.7.0``."""
    if not (runtime_root / SERVER_FILES[0]).exists():
        raise FileNotFoundError(f"no Triton runtime in {runtime_root}: run `.venv/bin/tritonrag install-runtime` "
                                "(scripts/setup.sh does it), or set TRITONRAG_HOME to where it is installed")
    target = stage / runtime_root.name
    for name in SERVER_FILES:
        (target / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(runtime_root / name, target / name)
    libs = library_closure(runtime_root)
    (target / LIBS).mkdir(parents=True, exist_ok=True)
    stubbed = []
    for name in libs:
        match = ICU_DATA.fullmatch(name)
        if use_icu_stub and match and icu_stub(target / LIBS / name, name, match.group(1)):
            stubbed.append(name)
            continue
        shutil.copy2(runtime_root / LIBS / name, target / LIBS / name)
    (target / ".installed").write_text((runtime_root / ".installed").read_text()
                                       if (runtime_root / ".installed").exists() else "0.7.0")
    libpython = find_libpython()
    if libpython is not None:
        (stage / LIBPYTHON_DIR).mkdir(exist_ok=True)
        copy = stage / LIBPYTHON_DIR / LIBPYTHON
        shutil.copy2(libpython, copy)
        subprocess.run(["strip", "--strip-unneeded", str(copy)], check=False)
    return {"libraries": libs, "icu_stub": stubbed, "libpython_fallback": str(libpython) if libpython else None,
            "left_out": sorted(set(os.listdir(runtime_root / LIBS)) - set(libs))}


def download_wheels(cache: Path, wheels: dict[str, str] = WHEELS) -> list[Path]:
    """The wheels for Python 3.12 manylinux x86_64 in ``cache`` (pip download, only those not there yet)."""
    cache.mkdir(parents=True, exist_ok=True)
    found = []
    for name, version in wheels.items():
        stem = name.replace("-", "_")
        have = sorted(cache.glob(f"{stem}-{version}-*.whl"))
        if not have:
            platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
            subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                            "--python-version", STUB_PYTHON, "--implementation", "cp", *platforms, "-d", str(cache),
                            f"{name}=={version}"], check=True)
            have = sorted(cache.glob(f"{stem}-{version}-*.whl"))
        if not have:
            raise FileNotFoundError(f"pip download of {name}=={version} left no wheel in {cache}")
        found.append(have[-1])
    return found


def unpack_wheel(wheel: Path, site: Path) -> int:
    """Install a wheel into ``site`` the way ``pip install --target`` lays it out (purelib/platlib at the top),
    leaving out tests, scripts and data files (perf_analyzer); returns the bytes written."""
    written = 0
    with zipfile.ZipFile(wheel) as zf:
        for info in zf.infolist():
            name = re.sub(r"^[^/]+\.data/(purelib|platlib)/", "", info.filename)
            if info.is_dir() or ".data/" in name or SITE_DROP.search(name):
                continue
            path = site / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(zf.read(info))
            mode = (info.external_attr >> 16) & 0o777
            if mode:
                path.chmod(mode)
            written += info.file_size
    return written


def stage_site(wheels: list[Path], site: Path) -> dict[str, int]:
    """Unpack every wheel into ``site``; bytes per wheel."""
    return {wheel.name: unpack_wheel(wheel, site) for wheel in wheels}
