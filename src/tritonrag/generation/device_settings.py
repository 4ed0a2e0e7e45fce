"""The generator's settings and process environment for where Triton placed its instance."""

from __future__ import annotations

from dataclasses import replace

from tritonrag.devices import InstanceGpus
from tritonrag.settings import GeneratorSettings


def generator_settings(settings: GeneratorSettings, gpus: InstanceGpus | None) -> tuple[GeneratorSettings, dict]:
    """The generator's settings and process environment for where Triton placed it: on the CPU, or on its GPUs with
    vLLM's memory share set to the instance's cap and tensor parallelism over all of them."""
    if gpus is None:  # placed on the CPU: a GPU build of vLLM must not grab a GPU the plan gave to others
        return replace(settings, device="cpu"), {"CUDA_VISIBLE_DEVICES": ""}
    changes: dict = {"device": "cuda", "tensor_parallel_size": len(gpus.devices)}
    if gpus.memory_fraction is not None:
        changes["gpu_memory_utilization"] = gpus.memory_fraction
    return replace(settings, **changes), {"CUDA_VISIBLE_DEVICES": gpus.cuda_visible_devices}
