"""In-stub probe for the GPU check: a model's adapter, unchanged, with a report of where it runs.

The GPU check renders its repository with the project's renderer, then replaces each ``1/model.py`` entry point
with ``TritonPythonModel = wrapped("tritonrag.serving.models.<model>")``. After the adapter's own ``initialize``
the probe writes ``$GPU_CHECK_DIAG_DIR/<instance>.json``, from inside the stub process: the pid, the kind and device
Triton gave the instance, what the rendered config told it (``instance_gpus``), ``CUDA_VISIBLE_DEVICES``, the device
of its weights, torch's per-process memory fraction, and whether an allocation past the cap fails (and one under
it succeeds). At ``finalize`` it adds the peak memory. The adapters themselves are not touched, and a probe that
fails only records its error.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import time
import traceback
from pathlib import Path
from typing import Any

DIAG_ENV = "GPU_CHECK_DIAG_DIR"
PROBE_MARGIN = 256 << 20  # the over-cap allocation asks this much more than the cap leaves


def _torch_module(obj: Any, depth: int = 3) -> Any:
    """The first torch module found among ``obj``'s attributes (the embedder's or the generator's model)."""
    torch = sys.modules.get("torch")
    if torch is None or depth < 0:
        return None
    if isinstance(obj, torch.nn.Module):
        return obj
    for value in list(getattr(obj, "__dict__", {}).values()):
        if isinstance(value, (str, bytes, int, float, bool, type(None))):
            continue
        found = _torch_module(value, depth - 1)
        if found is not None:
            return found
    return None


def _allocate(torch: Any, device: int, size: int) -> dict[str, Any]:
    try:
        block = torch.empty(max(size, 1), dtype=torch.uint8, device=f"cuda:{device}")
        del block
        return {"ok": True, "bytes": size}
    except Exception as exc:  # torch.OutOfMemoryError expected past the cap
        return {"ok": False, "bytes": size, "raised": type(exc).__name__, "message": str(exc)[:400]}
    finally:
        torch.cuda.empty_cache()


def torch_probe(device: int) -> dict[str, Any]:
    """torch's view of ``device`` and its cap in this process, and allocations past and under that cap."""
    torch = sys.modules["torch"]
    total = torch.cuda.get_device_properties(device).total_memory
    getter = getattr(torch.cuda, "get_per_process_memory_fraction", None)
    fraction = float(getter(device)) if getter else None
    info: dict[str, Any] = {"device_count": torch.cuda.device_count(), "name": torch.cuda.get_device_name(device),
                            "total_bytes": total, "memory_fraction": fraction,
                            "allocated_bytes": torch.cuda.memory_allocated(device),
                            "reserved_bytes": torch.cuda.memory_reserved(device)}
    result = {"torch": info}
    if fraction is not None and fraction < 1.0:
        left = int(fraction * total) - torch.cuda.memory_reserved(device)
        result["over_cap"] = _allocate(torch, device, left + PROBE_MARGIN)
        result["under_cap"] = _allocate(torch, device, min(PROBE_MARGIN, max(left // 2, 1)))
    return result


def probe(model: Any, args: dict[str, str], phase: str) -> dict[str, Any]:
    """What this stub process sees, for the report."""
    from tritonrag.serving.instance import instance_gpus, model_parameters

    gpus = instance_gpus(args, model_parameters(args))
    diag: dict[str, Any] = {
        "phase": phase, "pid": os.getpid(), "time": time.time(), "model": args.get("model_name"),
        "instance": args.get("model_instance_name"), "kind": args.get("model_instance_kind"),
        "device_id": args.get("model_instance_device_id"), "cuda_visible_devices": os.environ.get(
            "CUDA_VISIBLE_DEVICES"), "told": None if gpus is None else {
            "devices": list(gpus.devices), "fraction": gpus.memory_fraction, "gib": gpus.memory_gib},
        "python": sys.executable, "numpy": getattr(sys.modules.get("numpy"), "__version__", None)}
    if args.get("model_name") == "generator":
        diag["cuda_visible_devices_expected"] = gpus.cuda_visible_devices if gpus else ""
    module = _torch_module(model)
    if module is not None:
        diag["model_device"] = str(next(module.parameters()).device)
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
        device = torch.cuda.current_device()
        if phase == "initialize":
            diag.update(torch_probe(device))
        else:
            diag["peak_reserved_bytes"] = torch.cuda.max_memory_reserved(device)
    faiss = sys.modules.get("faiss")
    if faiss is not None:
        diag["faiss_gpus"] = faiss.get_num_gpus() if hasattr(faiss, "get_num_gpus") else 0
    return diag


def record(model: Any, args: dict[str, str], phase: str) -> None:
    """Write the probe's result (or its error) to $GPU_CHECK_DIAG_DIR/<instance>[.finalize].json."""
    folder = os.environ.get(DIAG_ENV)
    if not folder:
        return
    try:
        diag = probe(model, args, phase)
    except Exception:
        diag = {"phase": phase, "pid": os.getpid(), "instance": args.get("model_instance_name"),
                "error": traceback.format_exc()[-2000:]}
    suffix = "" if phase == "initialize" else f".{phase}"
    path = Path(folder) / f"{args.get('model_instance_name', 'unknown')}{suffix}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(diag, indent=1, default=str))


def wrapped(adapter: str) -> type:
    """The adapter module's TritonPythonModel with the probe after ``initialize`` and before ``finalize``."""
    base = importlib.import_module(adapter).TritonPythonModel

    class TritonPythonModel(base):  # type: ignore[misc, valid-type]
        def initialize(self, args):
            super().initialize(args)
            self._gpu_check_args = dict(args)
            record(self, self._gpu_check_args, "initialize")

        def finalize(self):
            record(self, getattr(self, "_gpu_check_args", {}), "finalize")
            parent = getattr(super(), "finalize", None)
            if parent is not None:
                parent()

    TritonPythonModel.__name__ = TritonPythonModel.__qualname__ = "TritonPythonModel"
    return TritonPythonModel


ENTRY = """# GPU check: the {name} adapter unchanged, with the in-stub probe of benchmarks/gpu_check_stub.py
from gpu_check_stub import wrapped

TritonPythonModel = wrapped("tritonrag.serving.models.{name}")
"""


def install_probes(repository: Path, models: list[str]) -> None:
    """Point the entry points of ``models`` in a rendered repository at the probed adapters."""
    for name in models:
        (repository / name / "1" / "model.py").write_text(ENTRY.format(name=name))
