"""The generator's settings, device and process environment for where Triton placed its instance."""

from __future__ import annotations

from dataclasses import replace
from typing import NamedTuple

from tritonrag.devices import InstanceGpus
from tritonrag.settings import GeneratorSettings


class PlacedGenerator(NamedTuple):
    settings: GeneratorSettings
    device: str  # the transformers engine's torch device ("cpu" or "cuda"); vLLM follows the environment
    environment: dict[str, str]


def generator_settings(settings: GeneratorSettings, gpus: InstanceGpus | None) -> PlacedGenerator:
    """The generator's settings, device and process environment for where Triton placed it: on the CPU, or on its
    GPUs with vLLM's memory share set to the instance's cap and tensor parallelism over all of them."""
    if gpus is None:  # placed on the CPU: a GPU build of vLLM must not grab a GPU the plan gave to others
        return PlacedGenerator(settings, "cpu", {"CUDA_VISIBLE_DEVICES": ""})
    changes: dict = {"tensor_parallel_size": len(gpus.devices)}
    if gpus.memory_fraction is not None:
        changes["gpu_memory_utilization"] = gpus.memory_fraction
    # CUDA_VISIBLE_DEVICES leaves only the instance's GPUs: "cuda" is the first of them
    return PlacedGenerator(replace(settings, **changes), "cuda", {"CUDA_VISIBLE_DEVICES": gpus.cuda_visible_devices})
