"""What a rendered config tells its instances: setting overrides, GPUs and memory caps, as Triton passes them."""

import json

import pytest

from tritonrag.devices import GIB, InstanceGpus, faiss_index_bytes, faiss_temp_memory, limit_torch_memory
from tritonrag.generation.device_settings import generator_settings
from tritonrag.serving.contract import GPU_MEMORY_PARAMETER, INSTANCE_GPUS_PARAMETER
from tritonrag.serving.instance import (
    configured_section,
    encode_instance_parameters,
    instance_config,
    instance_device,
    instance_gpus,
    model_parameters,
)
from tritonrag.settings import load_settings, override


def triton_args(params: dict[str, str], kind: str = "CPU", device: int = 0, name: str = "m_0_0") -> dict[str, str]:
    """``initialize`` args as the Python backend passes them (parameters as string_value objects)."""
    config = {"parameters": {k: {"string_value": v} for k, v in params.items()}}
    return {"model_config": json.dumps(config), "model_instance_kind": kind,
            "model_instance_device_id": str(device), "model_instance_name": name}


def test_overrides_round_trip_through_the_model_config():
    params = encode_instance_parameters({"max_num_seqs": 64, "dtype": "bfloat16", "enforce_eager": True})
    settings, gpus = instance_config(triton_args(params), load_settings(), "generator")
    assert (settings.max_num_seqs, settings.dtype, settings.enforce_eager) == (64, "bfloat16", True)
    assert gpus is None and instance_device(gpus) == "cpu"
    assert model_parameters({}) == {}


def test_home_expands_in_overridden_paths():
    settings = load_settings()
    generator = configured_section(settings, "generator", encode_instance_parameters({"model": "{home}/models/other"}))
    assert generator.model == f"{settings.home}/models/other"


@pytest.mark.parametrize(("overrides", "message"), [
    ({"max_num_seq": 1}, "unknown setting 'max_num_seq'; known: engine"),
    ({"max_num_seqs": "64"}, r"max_num_seqs: expected int like 32, got '64'"),
    ({"enforce_eager": 1}, "expected bool"),
    ({"max_model_len": 1.5}, "expected int"),
])
def test_bad_overrides_name_the_setting(overrides, message):
    with pytest.raises(ValueError, match=message):
        override(load_settings().generator, overrides, "components.generator.engine")


def test_floats_accept_whole_numbers():
    assert override(load_settings().generator, {"temperature_default": 1}, "x").temperature_default == 1.0


def test_bad_json_in_the_config_says_to_render_again():
    with pytest.raises(ValueError, match=r"not JSON.*tritonrag render"):
        instance_config(triton_args({"max_num_seqs": "{"}), load_settings(), "generator")


def test_gpu_instance_gets_its_device_and_cap():
    params = encode_instance_parameters({}, {0: (0.1, 8.0), 3: (0.25, 4.0)})
    assert set(params) == {GPU_MEMORY_PARAMETER}
    gpus = instance_gpus(triton_args(params, "GPU", 3), params)
    assert gpus == InstanceGpus((3,), 0.25, 4.0)
    assert instance_device(gpus) == "cuda:3"
    assert instance_gpus(triton_args({}, "GPU", 1), {}) == InstanceGpus((1,))  # a hand-written config: no cap


def test_tensor_parallel_instance_finds_its_group_by_name():
    params = encode_instance_parameters({}, {g: (0.8, 64.0) for g in range(4)},
                                        {"generator_gpus_0_1": [0, 1], "generator_gpus_2_3": [2, 3]})
    assert set(params) == {GPU_MEMORY_PARAMETER, INSTANCE_GPUS_PARAMETER}
    gpus = instance_gpus(triton_args(params, "MODEL", name="generator_gpus_2_3_0"), params)
    assert gpus == InstanceGpus((2, 3), 0.8, 64.0) and gpus.cuda_visible_devices == "2,3"
    with pytest.raises(ValueError, match="none of the tensor-parallel groups"):
        instance_gpus(triton_args(params, "MODEL", name="generator_0_0"), params)


def test_generator_settings_follow_the_placement():
    base = load_settings().generator
    settings, device, env = generator_settings(base, None)
    assert settings == base and device == "cpu" and env == {"CUDA_VISIBLE_DEVICES": ""}
    settings, device, env = generator_settings(base, InstanceGpus((4, 5), 0.8, 64.0))
    assert (device, settings.tensor_parallel_size, settings.gpu_memory_utilization) == ("cuda", 2, 0.8)
    assert env == {"CUDA_VISIBLE_DEVICES": "4,5"}
    settings, device, _ = generator_settings(base, InstanceGpus((0,)))
    assert device == "cuda"
    assert settings.gpu_memory_utilization == base.gpu_memory_utilization  # no cap rendered: the setting stays


def test_faiss_budget_fits_the_index_under_the_cap():
    index = faiss_index_bytes(1_000_000, 384)
    assert index == 1_000_000 * (384 * 4 + 8)
    assert faiss_temp_memory(8.0, index) == 1 << 30  # plenty left: FAISS's scratch is bounded
    assert faiss_temp_memory(2.0, index) == int(2.0 * GIB) - index
    with pytest.raises(MemoryError, match="raise its gpu_share or gpu_memory_gib"):
        faiss_temp_memory(1.0, index)


def test_torch_cap_is_a_no_op_on_the_cpu():
    limit_torch_memory("cpu", 0.1)
    limit_torch_memory("cuda:0", None)
