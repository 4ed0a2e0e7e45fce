"""Pack (here) and unpack (on the lent GPU machine) the GPU check kit: what must travel beside the working tree.

    .venv/bin/python benchmarks/gpu_kit.py pack            # builds .gpu_kit/ (idempotent; --force rebuilds)
    .venv/bin/python benchmarks/gpu_kit.py size            # what would travel, against the 64 MiB limit
    python3 benchmarks/gpu_kit.py unpack --scratch DIR     # on the device: runtime, site, models, knowledge base

The kit is four .tar.xz archives and a manifest in .gpu_kit/ (git-ignored; a device call carries it); downloads
and staging folders stay in .gpu_kit_cache/, which never travels. scripts/gpu_check.sh wraps these commands.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import gpu_kit_models as models
import gpu_kit_parts as parts

ROOT = Path(__file__).resolve().parents[1]
KIT = ROOT / ".gpu_kit"
CACHE = ROOT / ".gpu_kit_cache"
MANIFEST = "manifest.json"
LIMIT_BYTES = 64 << 20  # what one device call may carry: working tree + carried paths
ARCHIVES = ("runtime", "site", "models", "kb")
TRIM_HINTS = {
    "runtime": "build it with a C compiler present (ICU's data becomes a stub) or drop the libpython fallback "
               "(TRITONRAG_LIBPYTHON312=/nonexistent)",
    "site": "drop a wheel from gpu_kit_parts.WHEELS (tritonclient and python-rapidjson are optional)",
    "models": "the embedder is already int8; a larger generator config (gpu_kit_models.LM_CONFIG) adds nothing",
    "kb": "index fewer characters of the book (gpu_kit_models.CORPUS_CHARS)",
    "working tree": "move large untracked files out of the checkout, or ignore them (git status shows them)",
}


class KitTooLarge(RuntimeError):
    """What would travel is over the device call's limit."""


def mib(n: int) -> str:
    return f"{n / (1 << 20):.1f} MiB"


def tree_bytes(root: Path = ROOT) -> int:
    """Bytes of the working tree a device call sends: tracked and untracked-not-ignored files."""
    out = subprocess.run(["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         capture_output=True, check=True).stdout
    total = 0
    for name in filter(None, out.split(b"\0")):
        path = root / os.fsdecode(name)
        if path.is_file() and not path.is_symlink():
            total += path.stat().st_size
    return total


def kit_parts(kit: Path = KIT) -> dict[str, int]:
    """Bytes of each file in the kit folder."""
    return {p.name: p.stat().st_size for p in sorted(kit.iterdir()) if p.is_file()} if kit.is_dir() else {}


def check_size(tree: int, kit: Mapping[str, int], limit: int = LIMIT_BYTES) -> str:
    """A one-line summary of what would travel; KitTooLarge, naming the biggest parts and what to trim, when it is
    over ``limit``."""
    total = tree + sum(kit.values())
    rows = [("working tree", tree), *sorted(kit.items(), key=lambda kv: -kv[1])]
    summary = f"would travel {mib(total)} of {mib(limit)}: " + ", ".join(f"{n} {mib(b)}" for n, b in rows)
    if total <= limit:
        return summary
    hints = []
    for name, size in sorted(rows, key=lambda kv: -kv[1])[:3]:
        key = name.split(".")[0] if name != "working tree" else name
        hints.append(f"{name} ({mib(size)}): {TRIM_HINTS.get(key, 'leave it out of the kit')}")
    raise KitTooLarge(f"the GPU kit does not fit one device call: {summary}; over by {mib(total - limit)}. "
                      "Trim the largest: " + "; ".join(hints))


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def folder_bytes(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def stage_dir(name: str) -> Path:
    """Where a part is staged before it is compressed (kept in the cache)."""
    return CACHE / f"stage-{name}"


def _runtime(stage: Path, kit: Path) -> dict[str, object]:
    home = Path(os.environ.get("TRITONRAG_HOME", Path.home() / ".cache" / "tritonrag"))
    return parts.stage_runtime(home / "triton" / "pytriton-0.7.0", stage)


def _site(stage: Path, kit: Path) -> dict[str, object]:
    return {"wheels": parts.stage_site(parts.download_wheels(CACHE / "wheels"), stage)}


def _models(stage: Path, kit: Path) -> dict[str, object]:
    models.stage_embedder(stage / models.EMBEDDER_DIR)
    models.stage_lm(stage / models.LM_DIR)
    return {"embedder": f"{models.EMBEDDER_DIR}: all-MiniLM-L6-v2, int8 per-row weights ({models.QUANTIZED})",
            "generator": f"{models.LM_DIR}: random-initialised Llama, {models.LM_CONFIG['num_hidden_layers']} "
                         f"layers, hidden {models.LM_CONFIG['hidden_size']}, seed {models.LM_SEED} (weights made "
                         "on the device)"}


def _kb(stage: Path, kit: Path) -> dict[str, object]:
    restored = CACHE / "restored"
    if not (restored / models.EMBEDDER_DIR / models.QUANTIZED).exists():
        parts.extract(kit / "models.tar.xz", restored)  # the very bytes that travel
    embedder = models.restore_embedder(restored / models.EMBEDDER_DIR)
    work = CACHE / "kb-build"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(models.build_kb(work, embedder, work / "overlay.toml"), stage, dirs_exist_ok=True)
    return {"corpus": models.corpus(work)[1], "embedder": "the dequantized int8 all-MiniLM-L6-v2 (the one served)"}


BUILDERS: dict[str, Callable[[Path, Path], dict[str, object]]] = {
    "runtime": _runtime, "site": _site, "models": _models, "kb": _kb}


def build_part(name: str, kit: Path, force: bool = False) -> dict[str, object] | None:
    """Stage and compress one part into ``kit/<name>.tar.xz`` unless it is there; its manifest entry when built."""
    archive = kit / f"{name}.tar.xz"
    stage = stage_dir(name)
    if archive.exists() and not force:
        return None
    shutil.rmtree(stage, ignore_errors=True)
    stage.mkdir(parents=True)
    print(f"gpu kit: building {name} ...", flush=True)
    notes = BUILDERS[name](stage, kit)
    parts.compress(stage, archive)
    return {"file": archive.name, "raw_bytes": folder_bytes(stage), **notes}


def pack(kit: Path = KIT, force: bool = False, limit: int = LIMIT_BYTES) -> str:
    """Build every missing part, write the manifest, and check what would travel; returns the size summary."""
    kit.mkdir(exist_ok=True)
    manifest_path = kit / MANIFEST
    manifest = json.loads(manifest_path.read_text()) if manifest_path.exists() else {"parts": {}}
    for name in ARCHIVES:
        entry = build_part(name, kit, force or name not in manifest["parts"])
        if entry is not None:
            manifest["parts"][name] = entry
    for name, entry in manifest["parts"].items():
        archive = kit / str(entry["file"])
        entry.update(bytes=archive.stat().st_size, sha256=sha256(archive))
        print(f"  {name:8s} {mib(int(entry['bytes'])):>10s} compressed, {mib(int(entry['raw_bytes'])):>10s} raw")
    manifest["limit_bytes"] = limit
    manifest_path.write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
    return check_size(tree_bytes(), kit_parts(kit), limit)


def unpack(kit: Path, scratch: Path) -> dict[str, str]:
    """Lay the kit out under ``scratch`` (home/ = TRITONRAG_HOME, site/ = PYTHONPATH) and restore the models;
    returns the paths the run needs."""
    manifest = json.loads((kit / MANIFEST).read_text())
    home = scratch / "home"
    targets = {"runtime": home / "triton", "site": scratch / "site", "models": home / "models",
               "kb": home / "index" / "default"}
    for name, target in targets.items():
        archive = kit / manifest["parts"][name]["file"]
        if sha256(archive) != manifest["parts"][name]["sha256"]:
            raise RuntimeError(f"{archive} does not match the manifest: run `scripts/gpu_check.sh pack` again")
        if not (target / ".unpacked").exists():
            parts.extract(archive, target)
            (target / ".unpacked").write_text(manifest["parts"][name]["sha256"])
    embedder = models.restore_embedder(home / "models" / models.EMBEDDER_DIR)
    lm = models.restore_lm(home / "models" / models.LM_DIR, embedder)
    python = make_venv(scratch / "venv", scratch / "site")
    return {"home": str(home), "site": str(scratch / "site"), "embedder": str(embedder), "generator": str(lm),
            "libpython": str(home / "triton" / parts.LIBPYTHON_DIR), "python": str(python)}


def make_venv(venv: Path, site_dir: Path) -> Path:
    """A venv of this interpreter whose path is: the kit's site first (numpy<2 before this interpreter's numpy),
    then this interpreter's own site-packages, then the checkout's src/, client/ and benchmarks/; returns its python.

    Triton's Python-backend stub ignores PYTHONPATH (its embedded interpreter reads no PYTHON* variables); it finds
    its packages through the ``python3`` first on PATH, which the launcher makes this venv's."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    base = Path(getattr(sys, "_base_executable", sys.executable)).resolve()
    (venv / "bin").mkdir(parents=True, exist_ok=True)
    for name in ("python3", "python", f"python{version}"):
        link = venv / "bin" / name
        if not link.is_symlink():
            link.symlink_to(base)
    (venv / "pyvenv.cfg").write_text(f"home = {base.parent}\ninclude-system-site-packages = false\n"
                                     f"version = {sys.version.split()[0]}\n")
    own = [p for p in sys.path if p.endswith(("site-packages", "dist-packages")) and Path(p).is_dir()]
    lines = [str(site_dir)] + [f"import site; site.addsitedir({p!r})" for p in own]
    lines += [str(ROOT / "src"), str(ROOT / "client"), str(ROOT / "benchmarks")]
    packages = venv / "lib" / f"python{version}" / "site-packages"
    packages.mkdir(parents=True, exist_ok=True)
    (packages / "tritonrag_gpu_check.pth").write_text("\n".join(lines) + "\n")
    return venv / "bin" / "python3"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("command", choices=("pack", "size", "unpack"))
    parser.add_argument("--kit", type=Path, default=KIT, help="kit folder (default .gpu_kit/)")
    parser.add_argument("--scratch", type=Path, help="unpack: where to lay the kit out")
    parser.add_argument("--force", action="store_true", help="pack: rebuild every part")
    args = parser.parse_args(argv)
    try:
        if args.command == "pack":
            print(pack(args.kit, args.force))
        elif args.command == "size":
            print(check_size(tree_bytes(), kit_parts(args.kit)))
        else:
            if args.scratch is None:
                parser.error("unpack needs --scratch DIR")
            print(json.dumps(unpack(args.kit, args.scratch)))
    except KitTooLarge as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
