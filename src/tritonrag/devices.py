"""Devices and GPU memory caps: which device an instance runs on, and how its GPU share becomes a real limit.

- torch models (embedder, transformers generator): ``torch.cuda.set_per_process_memory_fraction``, a cap on the
  caching allocator (the CUDA context, ~0.3-0.5 GiB per process, is outside it);
- FAISS: the index must fit the cap, and the GPU resources' scratch memory gets what is left (bounded);
- vLLM: ``gpu_memory_utilization`` (weights + activations + KV cache) and ``CUDA_VISIBLE_DEVICES``, which its
  engine-core and worker processes inherit (tritonrag.generation.device_settings).

The caps bound memory only. Instances sharing a GPU time-share its compute; MIG partitions isolate both.
"""

from __future__ import annotations

from dataclasses import dataclass


def pick_device(requested: str) -> str:
    """'auto' means CUDA when torch sees a GPU, else CPU."""
    if requested != "auto":
        return requested
    try:
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    except ImportError:
        return "cpu"


GIB = 1 << 30
FAISS_TEMP_MIN = 64 << 20  # scratch FAISS needs at least for batched searches
FAISS_TEMP_MAX = 1 << 30  # and never more than this (its own default is a share of the GPU's memory)


def limit_torch_memory(device: str, fraction: float | None) -> None:
    """Cap this process's torch allocator on ``device`` (e.g. "cuda:1") at ``fraction`` of that GPU's memory."""
    if fraction is None or not device.startswith("cuda"):
        return
    import torch

    torch.cuda.set_per_process_memory_fraction(fraction, torch.device(device))


def faiss_index_bytes(vectors: int, dimension: int) -> int:
    """GPU memory of a flat or IVF-flat index: float32 vectors plus 64-bit ids."""
    return vectors * (dimension * 4 + 8)


def faiss_temp_memory(cap_gib: float, index_bytes: int) -> int:
    """Scratch bytes for the FAISS GPU resources of an index of ``index_bytes`` under a ``cap_gib`` memory cap."""
    left = int(cap_gib * GIB) - index_bytes
    if left < FAISS_TEMP_MIN:
        raise MemoryError(
            f"the index needs {index_bytes / GIB:.2f} GiB on the GPU plus {FAISS_TEMP_MIN >> 20} MiB of scratch, "
            f"more than the retriever's cap of {cap_gib:.2f} GiB: raise its gpu_share or gpu_memory_gib in the "
            "deployment spec, or run it on the CPU (device: cpu)")
    return min(left, FAISS_TEMP_MAX)


@dataclass(frozen=True)
class InstanceGpus:
    """The GPUs one model instance runs on (physical indexes) and its memory cap on each."""

    devices: tuple[int, ...]
    memory_fraction: float | None = None  # of each GPU's memory; None: no cap
    memory_gib: float | None = None

    @property
    def cuda_visible_devices(self) -> str:
        return ",".join(map(str, self.devices))
