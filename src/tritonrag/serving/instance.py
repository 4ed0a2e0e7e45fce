"""What a rendered config.pbtxt tells its model instances through ``parameters``, and how an instance reads it back.

The renderer (tritonrag.deploy.render) writes, per model:
- each setting the deployment spec overrides (``engine``/``model`` keys), under its own name, JSON-encoded;
- ``gpu_memory`` (contract.GPU_MEMORY_PARAMETER): per GPU the instance may run on, its memory cap
  ({"0": {"fraction": 0.1, "gib": 8.0}});
- ``instance_gpus`` (contract.INSTANCE_GPUS_PARAMETER): for tensor-parallel instances (KIND_MODEL), the GPUs of each
  instance group;
- ``generator_models`` (contract.GENERATOR_MODELS_PARAMETER), for the prompt builder and rag when the spec serves
  several generators: each one's name and model (null: the [generator] model).

An instance then knows its device and its memory cap (how a fractional GPU share is enforced): vLLM's
``gpu_memory_utilization``, torch's per-process memory fraction, or the FAISS index's memory budget. Caps bound
memory only; instances sharing a GPU time-share its compute (use MIG for isolation).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from tritonrag.devices import InstanceGpus
from tritonrag.serving.contract import (
    GENERATOR,
    GENERATOR_MODELS_PARAMETER,
    GPU_MEMORY_PARAMETER,
    INSTANCE_GPUS_PARAMETER,
)
from tritonrag.settings import Settings, override

# not settings: where the instance runs, and which generators the deployment serves
RESERVED = (GPU_MEMORY_PARAMETER, INSTANCE_GPUS_PARAMETER, GENERATOR_MODELS_PARAMETER)


def encode_instance_parameters(settings: Mapping[str, Any],
                               gpu_memory: Mapping[int, tuple[float, float]] | None = None,
                               instance_gpus: Mapping[str, list[int]] | None = None) -> dict[str, str]:
    """The model parameters (string values) the renderer writes: setting overrides, per-GPU (fraction, GiB) caps
    and the GPUs of each tensor-parallel group."""
    params = {name: json.dumps(value) for name, value in sorted(settings.items())}
    if gpu_memory:
        params[GPU_MEMORY_PARAMETER] = json.dumps({str(gpu): {"fraction": round(f, 4), "gib": round(g, 3)}
                                         for gpu, (f, g) in sorted(gpu_memory.items())}, sort_keys=True)
    if instance_gpus:
        params[INSTANCE_GPUS_PARAMETER] = json.dumps(dict(sorted(instance_gpus.items())))
    return params


def model_parameters(args: Mapping[str, str]) -> dict[str, str]:
    """The ``parameters`` of the model's config, from Triton's ``initialize`` args, as plain strings."""
    raw = json.loads(args.get("model_config", "{}")).get("parameters", {})
    return {key: value.get("string_value", "") if isinstance(value, Mapping) else str(value)
            for key, value in raw.items()}


def _decode(params: Mapping[str, str], key: str) -> Any:
    try:
        return json.loads(params[key])
    except json.JSONDecodeError as exc:
        raise ValueError(f"config.pbtxt parameter {key!r} is not JSON ({exc}); re-render with `tritonrag render`") \
            from None


def configured_section(settings: Settings, section: str, params: Mapping[str, str]) -> Any:
    """The ``section`` settings with the model's parameters applied (``{home}`` expanded as in the settings)."""
    overrides = {}
    for key in params:
        if key not in RESERVED:
            value = _decode(params, key)
            overrides[key] = value.replace("{home}", str(settings.home)) if isinstance(value, str) else value
    return override(getattr(settings, section), overrides, f"config.pbtxt parameters of {section}")


def instance_gpus(args: Mapping[str, str], params: Mapping[str, str]) -> InstanceGpus | None:
    """Where Triton placed this instance: None on the CPU; its GPU for KIND_GPU; its group's GPUs for KIND_MODEL
    (tensor parallel, found from the instance name ``<group>_<n>``), with the memory cap the renderer set."""
    kind = args.get("model_instance_kind", "CPU")
    if kind == "GPU":
        devices: tuple[int, ...] = (int(args.get("model_instance_device_id", 0)),)
    elif kind == "MODEL" and INSTANCE_GPUS_PARAMETER in params:
        groups = _decode(params, INSTANCE_GPUS_PARAMETER)
        name = args.get("model_instance_name", "")
        group = max((g for g in groups if name.startswith(g + "_") or name == g), key=len, default=None)
        if group is None:
            raise ValueError(f"instance {name!r} is in none of the tensor-parallel groups {sorted(groups)}")
        devices = tuple(groups[group])
    else:
        return None
    caps = _decode(params, GPU_MEMORY_PARAMETER) if GPU_MEMORY_PARAMETER in params else {}
    known = [caps[str(d)] for d in devices if str(d) in caps]
    if not known:
        return InstanceGpus(devices)
    return InstanceGpus(devices, min(c["fraction"] for c in known), min(c["gib"] for c in known))


def instance_config(args: Mapping[str, str], settings: Settings, section: str) -> tuple[Any, InstanceGpus | None]:
    """For a model's ``initialize``: its section of the settings as its rendered config.pbtxt says (the overrides
    of the deployment spec applied), and the GPUs Triton placed this instance on (None: the CPU)."""
    params = model_parameters(args)
    return configured_section(settings, section, params), instance_gpus(args, params)


def instance_device(gpus: InstanceGpus | None) -> str:
    """The torch device of an instance: its first GPU, or the CPU."""
    return f"cuda:{gpus.devices[0]}" if gpus else "cpu"


def served_generators(args: Mapping[str, str], settings: Settings) -> dict[str, str | None]:
    """The generators this deployment serves, by name, with their models ({home} expanded; None: the [generator]
    model of the settings): the rendered ``generator_models`` parameter, else the one standard generator."""
    params = model_parameters(args)
    if GENERATOR_MODELS_PARAMETER not in params:
        return {GENERATOR.model: None}
    models = _decode(params, GENERATOR_MODELS_PARAMETER)
    return {name: model.replace("{home}", str(settings.home)) if isinstance(model, str) else None
            for name, model in models.items()}
