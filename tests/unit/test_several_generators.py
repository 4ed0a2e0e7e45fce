"""Several generator models in one deployment: components of the spec's own with ``role: generator``, each its own
Triton model (the generator's IO and adapter) with its own instances, device and GPU share."""

import json
import re
from pathlib import Path

import pytest

from tritonrag.deploy.placement import Gpu, PlacementError
from tritonrag.deploy.plan import load_plan, plan_deployment, plan_rows
from tritonrag.deploy.render import default_plan, model_specs, render_repository
from tritonrag.deploy.spec import COMPONENTS, NAME_PATTERN, SpecError, load_spec
from tritonrag.serving.contract import GENERATOR_MODELS_PARAMETER, MODEL_IO
from tritonrag.settings import load_settings

SPECS = Path(__file__).resolve().parents[2] / "deploy" / "specs"

TWO = """
cluster: {gpus: 1, gpu_memory_gib: 80}
components:
  critic: {role: generator, model: "{home}/models/smollm2-135m-instruct", device: gpu, gpu_share: 0.15,
           engine: {max_num_seqs: 16}, min_instances: 1, max_instances: 3}
  embedder: {device: gpu, gpu_share: 0.1}
  generator: {device: gpu, gpu_share: 0.7, role: generator}
  rewriter: {role: generator, instances: 2}
"""


def test_extra_generators_are_served_right_after_the_generator_in_file_order():
    spec = load_spec(TWO)
    assert spec.served_models() == [("embedder", "embedder"), ("retriever", "retriever"),
                                    ("prompt_builder", "prompt_builder"), ("reranker", "reranker"),
                                    ("generator", "generator"), ("critic", "generator"), ("rewriter", "generator"),
                                    ("rag", "rag")]
    assert spec.generators() == ["generator", "critic", "rewriter"]
    assert spec.generator_models() == {"generator": None, "critic": "{home}/models/smollm2-135m-instruct",
                                       "rewriter": None}
    assert spec.role("critic") == "generator" and spec.role("rag") == "rag"
    critic = spec.component("critic")
    assert (critic.device, critic.gpu_share, critic.engine) == ("gpu", 0.15, {"max_num_seqs": 16})
    assert [(d.component, d.instances, d.share) for d in spec.demands()] == [
        ("embedder", 1, 0.1), ("retriever", 1, 0.0), ("prompt_builder", 1, 0.0), ("reranker", 1, 0.0),
        ("generator", 1, 0.7),
        ("critic", 1, 0.15), ("rewriter", 2, 0.0), ("rag", 1, 0.0)]
    assert spec.replica_range() == (1, 3)  # the extra generator's bounds count too


def test_without_extra_generators_the_served_models_are_the_contracts():
    spec = load_spec("components: {generator: {instances: 2}}")
    assert spec.served_models() == [(name, name) for name in COMPONENTS]
    assert spec.generators() == ["generator"] and spec.generator_models() == {"generator": None}


def test_an_extra_generator_takes_every_generator_key():
    spec = load_spec("""
cluster: {gpus: 4, gpu_memory_gib: 80}
components:
  big: {role: generator, device: gpu, gpu_share: 2, placement: spread, gpu_memory_gib: 60, instances: 1,
        model: /m/big, engine: {tensor_parallel_size: 2, dtype: bfloat16}}
  wide: {role: generator, device: gpu, gpu_share: 0.5, engine: {tensor_parallel_size: 2}}
""")
    assert spec.component("big").gpus_per_instance == 2 and spec.component("wide").gpus_per_instance == 2
    plan = plan_deployment(spec, load_settings(), [Gpu(i, 80.0) for i in range(4)])
    big, wide = plan.components["big"], plan.components["wide"]
    assert [p.gpus for p in big.placements] == [(0, 1)] and big.placements[0].memory_cap_gib == 60.0
    assert big.instance_groups == ({"name": "big_gpus_0_1", "count": 1, "kind": "KIND_MODEL",
                                    "visible_gpus": [0, 1]},)
    assert big.overrides == {"tensor_parallel_size": 2, "dtype": "bfloat16", "model": "/m/big"}
    assert [p.gpus for p in wide.placements] == [(2, 3)] and wide.placements[0].share == 0.5


@pytest.mark.parametrize(("text", "message"), [
    ("components: {Critic: {role: generator}}", r"components.Critic: .* must match \^\[a-z\]"),
    ("components: {gen-small: {role: generator}}", "components.gen-small: a component of your own"),
    ("components: {2nd: {role: generator}}", "components.2nd: .* must match"),
    (f"components: {{{'g' * 33}: {{role: generator}}}}", "at most 32 characters"),
    ("components: {critic: {role: embedder}}",
     r"components.critic.role: must be generator \(another generator model\), got 'embedder'"),
    ("components: {critic: {role: generator, gpu_shar: 0.1}}", r"components.critic: unknown key\(s\) gpu_shar"),
    ("components: {critic: {role: generator, device: gpu, gpu_share: 1.5}}",
     "components.critic.gpu_share: above 1 it is a whole number"),
    ("components: {critic: {role: generator, device: gpu, gpu_share: 2, engine: {tensor_parallel_size: 4}}}",
     "components.critic.engine.tensor_parallel_size: .* disagree"),
    ("components: {critic: {role: generator, instances: 0}}", "components.critic.instances: must be at least 1"),
    ("components: {rag: {role: generator}}", "components.rag.role: rag is a standard component"),
    ("components: {generator: {role: rag}}", "components.generator.role: generator is a standard component"),
])
def test_bad_extra_generators_say_which_component_and_key(text, message):
    with pytest.raises(SpecError, match=message):
        load_spec(text)


@pytest.mark.parametrize(("text", "message"), [
    ("components: {critic: {role: generator, engine: {max_num_seq: 8}}}", "components.critic.engine: unknown setting"),
    ("components: {critic: {role: generator, engine: {model: x}}}", "set it as components.critic.model"),
    ("components: {critic: {role: generator, batching: {max_batch_size: 8}}}",
     "components.critic.batching: only embedder, retriever and reranker are batched"),
])
def test_extra_generators_are_checked_against_the_generator_settings(text, message):
    with pytest.raises(SpecError, match=message):
        plan_deployment(load_spec(text), load_settings(), ())


def test_name_pattern():
    assert all(NAME_PATTERN.match(n) for n in ("critic", "generator_small", "g2", "a" * 32))
    assert not any(NAME_PATTERN.match(n) for n in ("Critic", "_g", "2g", "g-2", "g.2", "a" * 33, ""))


def test_an_extra_generator_on_a_fractional_share_of_the_generators_gpu():
    plan = plan_deployment(load_spec(TWO), load_settings(), [Gpu(0, 80.0)])
    critic = plan.components["critic"]
    assert critic.role == "generator" and plan.components["generator"].role == "generator"
    assert [(p.gpus, p.share, p.memory_cap_gib, p.memory_fraction) for p in critic.placements] == [
        ((0,), 0.15, 12.0, 0.15)]
    assert critic.instance_groups == ({"count": 1, "kind": "KIND_GPU", "gpus": [0]},)
    # its engine and model override the [generator] section, as the generator's do
    assert critic.overrides == {"max_num_seqs": 16, "model": "{home}/models/smollm2-135m-instruct"}
    assert plan.components["rewriter"].instance_groups == ({"count": 2, "kind": "KIND_CPU"},)
    share, memory, names = plan.gpu_load()[0]
    assert share == pytest.approx(0.95) and memory == pytest.approx(76.0)
    assert names == ["embedder#0", "generator#0", "critic#0"]
    assert [row[0] for row in plan_rows(plan)] == ["embedder", "retriever", "prompt_builder", "reranker",
                                                   "generator", "critic", "rewriter", "rag", "ingress"]
    # 0.7 + 0.25 + 0.1 > 1: the biggest shares are placed first, so the embedder is left without room
    with pytest.raises(PlacementError, match=r"embedder instance 1 of 1 \(share 0.1\) does not fit"):
        plan_deployment(load_spec(TWO.replace("0.15", "0.25")), load_settings(), [Gpu(0, 80.0)])


def _without(text: str, *prefixes: str) -> str:
    return "".join(line for line in text.splitlines(keepends=True) if not line.startswith(prefixes))


def _blocks(text: str) -> str:
    """A config.pbtxt without its name line, instance groups and parameters."""
    head = text.split("instance_group [")[0]
    return _without(head, "name: ")


def test_an_extra_generator_renders_as_the_generator_under_its_own_name(tmp_path):
    plan = plan_deployment(load_spec(TWO), load_settings(), [Gpu(0, 80.0)])
    render_repository(load_settings(), tmp_path, plan=plan)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*COMPONENTS, "critic", "rewriter"])
    generator = (tmp_path / "generator" / "config.pbtxt").read_text()
    for name in ("critic", "rewriter"):
        text = (tmp_path / name / "config.pbtxt").read_text()
        assert f'name: "{name}"\n' in text and "model_transaction_policy { decoupled: true }" in text
        assert _blocks(text) == _blocks(generator)  # the same inputs, outputs and batching
        entry = (tmp_path / name / "1" / "model.py").read_text()
        assert "from tritonrag.serving.models.generator import TritonPythonModel" in entry
        assert f"the `{name}` model" in entry
    critic = (tmp_path / "critic" / "config.pbtxt").read_text()
    assert "gpus: [ 0 ]" in critic and 'key: "max_num_seqs"' in critic and 'key: "gpu_memory"' in critic
    assert '\\"{home}/models/smollm2-135m-instruct\\"' in critic  # as written: expanded by the instance
    rewriter = (tmp_path / "rewriter" / "config.pbtxt").read_text()
    assert "count: 2" in rewriter and "KIND_CPU" in rewriter and "parameters [" not in rewriter
    io = {m.name: m for m in MODEL_IO}["generator"]
    specs = {s.name: s for s in model_specs(load_settings(), plan)}
    assert specs["critic"].io.inputs == io.inputs and specs["critic"].io.outputs == io.outputs
    assert specs["critic"].adapter == "generator" and specs["rag"].adapter == "rag"


def _generator_models(config: str) -> dict | None:
    match = re.search(r'key: "generator_models"\n    value: \{ string_value: "(.*)" \}', config)
    return None if match is None else json.loads(match.group(1).replace('\\"', '"'))


def test_prompt_builder_and_rag_learn_the_served_generators_only_when_several(tmp_path):
    render_repository(load_settings(), tmp_path / "two", plan=load_plan(SPECS / "cpu-two-generators.yaml",
                                                                       load_settings()))
    expected = {"generator": None, "generator_small": "{home}/models/smollm2-135m-instruct"}
    for name in ("embedder", "retriever", "generator", "generator_small", "prompt_builder", "rag"):
        config = (tmp_path / "two" / name / "config.pbtxt").read_text()
        assert _generator_models(config) == (expected if name in ("prompt_builder", "rag") else None), name
        assert (GENERATOR_MODELS_PARAMETER in config) == (name in ("prompt_builder", "rag"))
    rag = (tmp_path / "two" / "rag" / "config.pbtxt").read_text()
    assert list(_generator_models(rag)) == ["generator", "generator_small"]  # the standard one first
    render_repository(load_settings(), tmp_path / "one", plan=load_plan(SPECS / "cpu.yaml", load_settings()))
    assert not any(GENERATOR_MODELS_PARAMETER in p.read_text() for p in (tmp_path / "one").glob("*/config.pbtxt"))


def test_a_second_generator_changes_nothing_else_in_the_rendering(tmp_path):
    render_repository(load_settings(), tmp_path / "default", plan=default_plan(load_settings()))
    render_repository(load_settings(), tmp_path / "cpu", plan=load_plan(SPECS / "cpu.yaml", load_settings()))
    render_repository(load_settings(), tmp_path / "two", plan=load_plan(SPECS / "cpu-two-generators.yaml",
                                                                       load_settings()))
    default = {p.relative_to(tmp_path / "default"): p.read_text() for p in (tmp_path / "default").rglob("*.*")}
    assert {p.relative_to(tmp_path / "cpu"): p.read_text() for p in (tmp_path / "cpu").rglob("*.*")} == default
    two = {p.relative_to(tmp_path / "two"): p.read_text() for p in (tmp_path / "two").rglob("*.*")}
    assert set(two) - set(default) == {Path("generator_small/config.pbtxt"), Path("generator_small/1/model.py")}
    for path, text in default.items():
        if path.parts[0] in ("prompt_builder", "rag") and path.name == "config.pbtxt":
            assert two[path].startswith(text.split("parameters [")[0]) and two[path] != text
        else:
            assert two[path] == text, path
