"""Turning an instance's GPU share into real memory caps, per kind of engine.

- torch models (embedder, transformers generator): ``torch.cuda.set_per_process_memory_fraction``, a cap on the
  caching allocator (the CUDA context, ~0.3-0.5 GiB per process, is outside it);
- FAISS: the index must fit the cap, and the GPU resources' scratch memory gets what is left (bounded);
- vLLM: ``gpu_memory_utilization`` (weights + activations + KV cache) and ``CUDA_VISIBLE_DEVICES``, which its
  engine-core and worker processes inherit.

The caps bound memory only. Instances sharing a GPU time-share its compute; MIG partitions isolate both.
"""

from __future__ import annotations

from dataclasses import replace

from .config import GeneratorSettings
from .model_parameters import InstanceGpus

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


def generator_settings(settings: GeneratorSettings, gpus: InstanceGpus | None) -> tuple[GeneratorSettings, dict]:
    """The generator's settings and process environment for where Triton placed it: on the CPU, or on its GPUs with
    vLLM's memory share set to the instance's cap and tensor parallelism over all of them."""
    if gpus is None:  # placed on the CPU: a GPU build of vLLM must not grab a GPU the plan gave to others
        return replace(settings, device="cpu"), {"CUDA_VISIBLE_DEVICES": ""}
    changes: dict = {"device": "cuda", "tensor_parallel_size": len(gpus.devices)}
    if gpus.memory_fraction is not None:
        changes["gpu_memory_utilization"] = gpus.memory_fraction
    return replace(settings, **changes), {"CUDA_VISIBLE_DEVICES": gpus.cuda_visible_devices}
