"""perf_analyzer support: linking the wheel's mangled libraries under their real names, and finding the binary."""

import os
import sys
from pathlib import Path

import pytest

from tritonrag.deploy import runtime
from tritonrag.deploy.runtime import (
    PERF_ANALYZER_LIBS,
    find_mangled_lib,
    find_perf_analyzer,
    link_libs,
    local_runtime_dir,
    perf_analyzer_env,
    perf_analyzer_libs_dir,
    prepare_perf_analyzer,
)

WHEEL_LIBS = ("libb64-98cb6333.so.0d", "libcudart-09529672.so.12.6.77", "libcurl-75a2bf80.so.4.7.0",
              "libb64x-11111111.so.0d", "libcudart-abcdef12.so.120")


def fake_runtime(home: Path, names=WHEEL_LIBS) -> Path:
    libs = local_runtime_dir(home) / "nvidia_pytriton.libs"
    libs.mkdir(parents=True)
    for name in names:
        (libs / name).write_bytes(b"\x7fELF")
    return libs


@pytest.mark.parametrize(("soname", "expected"), [
    ("libb64.so.0d", "libb64-98cb6333.so.0d"),
    ("libcudart.so.12", "libcudart-09529672.so.12.6.77"),
    ("libcurl.so.4", "libcurl-75a2bf80.so.4.7.0"),
    ("libcurl.so.5", None),
    ("libssl.so.3", None),
])
def test_find_mangled_lib(tmp_path, soname, expected):
    libs = fake_runtime(tmp_path)
    found = find_mangled_lib(soname, (tmp_path / "missing", libs))
    assert (found.name if found else None) == expected


def test_find_mangled_lib_takes_an_unmangled_file(tmp_path):
    (tmp_path / "libb64.so.0d").write_bytes(b"")
    assert find_mangled_lib("libb64.so.0d", (tmp_path,)) == tmp_path / "libb64.so.0d"


def test_prepare_perf_analyzer_links_real_names(tmp_path):
    libs = fake_runtime(tmp_path)
    folder = prepare_perf_analyzer(tmp_path)
    assert folder == perf_analyzer_libs_dir(tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == sorted(PERF_ANALYZER_LIBS)
    assert (folder / "libb64.so.0d").resolve() == (libs / "libb64-98cb6333.so.0d").resolve()
    assert (folder / "libcudart.so.12").resolve() == (libs / "libcudart-09529672.so.12.6.77").resolve()


def test_prepare_perf_analyzer_is_idempotent_and_fixes_stale_links(tmp_path):
    libs = fake_runtime(tmp_path)
    folder = prepare_perf_analyzer(tmp_path)
    (folder / "libb64.so.0d").unlink()
    (folder / "libb64.so.0d").symlink_to(tmp_path / "elsewhere")
    assert prepare_perf_analyzer(tmp_path) == folder
    assert prepare_perf_analyzer(tmp_path) == folder
    assert (folder / "libb64.so.0d").resolve() == (libs / "libb64-98cb6333.so.0d").resolve()


def test_prepare_perf_analyzer_without_the_libraries(tmp_path):
    assert prepare_perf_analyzer(tmp_path) is None
    fake_runtime(tmp_path, names=("libb64-98cb6333.so.0d",))
    assert prepare_perf_analyzer(tmp_path) is None
    assert not perf_analyzer_libs_dir(tmp_path).exists()


def test_link_libs_replaces_a_plain_file(tmp_path):
    target = tmp_path / "real.so"
    target.write_bytes(b"")
    (tmp_path / "links").mkdir()
    (tmp_path / "links" / "lib.so.1").write_bytes(b"old")
    link_libs(tmp_path / "links", {"lib.so.1": target})
    assert (tmp_path / "links" / "lib.so.1").resolve() == target


def test_perf_analyzer_env_puts_the_links_first(tmp_path, monkeypatch):
    fake_runtime(tmp_path)
    monkeypatch.setenv("LD_LIBRARY_PATH", "/opt/other")
    env = perf_analyzer_env(tmp_path, {"EXTRA": "1"})
    assert env["LD_LIBRARY_PATH"].split(os.pathsep) == [str(perf_analyzer_libs_dir(tmp_path)), "/opt/other"]
    assert env["EXTRA"] == "1"


def test_perf_analyzer_env_without_a_local_runtime(tmp_path, monkeypatch):
    monkeypatch.delenv("LD_LIBRARY_PATH", raising=False)
    assert "LD_LIBRARY_PATH" not in perf_analyzer_env(tmp_path)


def test_find_perf_analyzer_prefers_the_venv(tmp_path, monkeypatch):
    venv_bin, path_bin = tmp_path / "venv" / "bin", tmp_path / "path"
    for folder in (venv_bin, path_bin):
        folder.mkdir(parents=True)
        (folder / "perf_analyzer").write_text("#!/bin/sh\n")
        (folder / "perf_analyzer").chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(venv_bin / "python"))
    monkeypatch.setenv("PATH", str(path_bin))
    assert find_perf_analyzer() == venv_bin / "perf_analyzer"
    (venv_bin / "perf_analyzer").unlink()
    assert find_perf_analyzer() == path_bin / "perf_analyzer"
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))
    with pytest.raises(FileNotFoundError, match="tritonclient"):
        find_perf_analyzer()


def test_install_runtime_links_perf_analyzer_libs_when_installed(tmp_path):
    fake_runtime(tmp_path)
    (local_runtime_dir(tmp_path) / ".installed").write_text("x")
    assert runtime.install_runtime(tmp_path) == local_runtime_dir(tmp_path)
    assert (perf_analyzer_libs_dir(tmp_path) / "libb64.so.0d").is_symlink()
