"""Build-time helper for docker/Dockerfile: keep the NGC image's own packages while adding tritonrag's.

    python3 image_deps.py constraints > base-constraints.txt   # before installing anything
    python3 image_deps.py check base-constraints.txt           # after installing everything

`constraints` pins every distribution installed in this interpreter (but grpcio, see FLOATING) to its version, so
that `pip install -c base-constraints.txt ...` can add packages but never replace the image's torch, vllm,
transformers, numpy or protobuf: a requirement that would need another version fails the build instead.
`check` fails the build when a package of the base image changed version anyway, when faiss-cpu is installed
(faiss-cpu and faiss-gpu-cu12 both provide the module `faiss`), or when the image's vLLM or transformers is
older than the generator's code needs. Needs only the standard library and `packaging` (pip's own copy when the
package is absent), so it runs in any image with pip; it imports none of the packages it inspects, so no GPU
is needed at build time.
"""

from __future__ import annotations

import importlib.metadata as md
import re
import sys

try:
    from packaging.version import InvalidVersion, Version
except ImportError:  # pragma: no cover - every image with pip has this copy
    from pip._vendor.packaging.version import InvalidVersion, Version

# What the code needs from the image (checked by `check`):
# - vLLM's V1 engine: `from vllm.v1.engine.async_llm import AsyncLLM`, `AsyncEngineArgs`, RequestOutputKind.DELTA;
# - transformers >= 4.56: generation.py and model_prep.py call from_pretrained(..., dtype=...), the argument
#   that replaced torch_dtype in 4.56.
MIN_VERSIONS = {"vllm": "0.10.2", "transformers": "4.56"}
VLLM_V1_FILE = "vllm/v1/engine/async_llm.py"
FAISS_GPU = "faiss-gpu-cu12"
FORBIDDEN = {"faiss-cpu": "faiss-cpu and faiss-gpu-cu12 both install the module `faiss`; keep only faiss-gpu-cu12"}
# Left free for pip to upgrade: tritonclient[grpc] accepts only narrow grpcio ranges (2.57-2.71: >=1.63,<1.68;
# 2.73: >=1.81.1), so an image whose grpcio falls between them would otherwise have no tritonclient at all.
# vLLM requires grpcio without an upper bound.
FLOATING = {"grpcio": "tritonclient[grpc] needs a grpcio range of its own"}


def normalize(name: str) -> str:
    """PEP 503 name: `Foo_Bar.baz` and `foo-bar-baz` are the same project."""
    return re.sub(r"[-_.]+", "-", name).lower()


def installed() -> dict[str, str]:
    """{normalized name: version} of what this interpreter imports first (the first of duplicates on sys.path)."""
    found: dict[str, str] = {}
    for dist in md.distributions():
        name = dist.metadata["Name"]
        if name and normalize(name) not in found:
            found[normalize(name)] = dist.version
    return found


def constraints(packages: dict[str, str]) -> list[str]:
    """`name==version` lines pip accepts as constraints; versions pip cannot parse become comments."""
    lines = []
    for name, version in sorted(packages.items()):
        if name in FLOATING:
            lines.append(f"# {name} {version}: left free ({FLOATING[name]})")
            continue
        try:
            Version(version)
        except InvalidVersion:
            lines.append(f"# {name} {version}: not a PEP 440 version, left unconstrained")
            continue
        lines.append(f"{name}=={version}")
    return lines


def read_constraints(text: str) -> dict[str, str]:
    pins = {}
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if "==" in line:
            name, version = line.split("==", 1)
            pins[normalize(name)] = version.strip()
    return pins


def has_file(dist_name: str, path: str) -> bool:
    try:
        files = md.distribution(dist_name).files or []
    except md.PackageNotFoundError:
        return False
    return any(str(f).replace("\\", "/") == path for f in files)


def problems(packages: dict[str, str], base: dict[str, str] | None = None, vllm_v1: bool | None = None) -> list[str]:
    """Everything wrong with ``packages`` for the GPU image (empty: fine)."""
    found = []
    for name, reason in FORBIDDEN.items():
        if name in packages:
            found.append(f"{name} {packages[name]} is installed: {reason}")
    if FAISS_GPU not in packages:
        found.append(f"{FAISS_GPU} is not installed: the retriever would have no GPU faiss")
    for name, minimum in MIN_VERSIONS.items():
        version = packages.get(name)
        if version is None:
            found.append(f"{name} is not installed (need >= {minimum})")
        elif Version(version) < Version(minimum):
            found.append(f"{name} {version} is older than {minimum}, which tritonrag needs")
    if vllm_v1 is None:
        vllm_v1 = has_file("vllm", VLLM_V1_FILE)
    if "vllm" in packages and not vllm_v1:
        found.append(f"vllm {packages['vllm']} has no {VLLM_V1_FILE} (the V1 AsyncLLM the generator uses)")
    for name, version in sorted((base or {}).items()):
        now = packages.get(name)
        if name in FLOATING:
            continue
        if now != version:
            found.append(f"base image package {name} changed: {version} -> {now or 'removed'}")
    return found


def main(argv: list[str]) -> int:
    if argv[:1] == ["constraints"] and len(argv) == 1:
        print("\n".join(constraints(installed())))
        return 0
    if argv[:1] == ["check"] and len(argv) <= 2:
        base = None
        if len(argv) == 2:
            with open(argv[1], encoding="utf-8") as f:
                base = read_constraints(f.read())
        found = problems(installed(), base)
        for line in found:
            print(f"image check: {line}", file=sys.stderr)
        if not found:
            print("image check: ok")
        return 1 if found else 0
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
