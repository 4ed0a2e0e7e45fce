"""Specs applied to settings and GPUs: the example specs' plans, the rendered repository, the CLI's dry run."""

from pathlib import Path

import pytest
from typer.testing import CliRunner

from tritonrag.cli import app
from tritonrag.deploy.placement import Gpu
from tritonrag.deploy.plan import detect_gpus, gpu_rows, load_plan, plan_deployment, plan_rows
from tritonrag.deploy.render import render_repository
from tritonrag.deploy.spec import SpecError, load_spec
from tritonrag.settings import load_settings

ROOT = Path(__file__).resolve().parents[2]
SPECS = ROOT / "deploy" / "specs"
COMMITTED = ROOT / "model_repository"


def plan_of(name: str):
    return load_plan(SPECS / f"{name}.yaml", load_settings())


def test_committed_repository_is_the_rendering_of_the_cpu_spec():
    assert render_repository(load_settings(), COMMITTED, check=True, plan=plan_of("cpu")) == []


def test_one_gpu_example_shares_gpu_zero():
    plan = plan_of("gpu-1")
    groups = {name: c.instance_groups for name, c in plan.components.items()}
    assert groups["embedder"] == ({"count": 1, "kind": "KIND_GPU", "gpus": [0]},)
    assert groups["prompt_builder"] == ({"count": 2, "kind": "KIND_CPU"},)
    caps = {c.name: (c.placements[0].share, c.placements[0].memory_cap_gib) for c in plan.components.values()}
    assert caps["embedder"] == (0.1, 8.0) and caps["retriever"] == (0.1, 8.0) and caps["generator"] == (0.75, 60.0)
    assert caps["reranker"] == (0.05, 4.0)
    assert plan.components["generator"].overrides == {"max_num_seqs": 64, "dtype": "bfloat16"}
    assert gpu_rows(plan) == [("0", "80 GiB", "1.00", "80.0 GiB", "embedder#0 retriever#0 reranker#0 generator#0")]
    assert plan.warnings and "fully shared" in plan.warnings[0]


def test_eight_gpu_example_spreads_tensor_parallel_generators_and_packs_embedders():
    plan = plan_of("gpu-8")
    generator = plan.components["generator"]
    assert [p.gpus for p in generator.placements] == [(0, 1), (2, 3), (4, 5), (6, 7)]
    assert {g["kind"] for g in generator.instance_groups} == {"KIND_MODEL"}
    embedders = plan.components["embedder"].instance_groups
    assert [g["gpus"] for g in embedders] == [[0], [1]]  # packed into the room the generators leave
    assert [g["gpus"] for g in plan.components["retriever"].instance_groups] == [[2], [3]]  # spread
    small = plan.components["generator_small"]  # a second generator, in the room the others leave
    assert small.role == "generator" and [(p.gpus, p.share, p.memory_cap_gib) for p in small.placements] == [
        ((4,), 0.05, 4.0), ((5,), 0.05, 4.0)]
    assert small.overrides == {"max_num_seqs": 64, "dtype": "bfloat16",
                               "model": "{home}/models/smollm2-135m-instruct"}
    assert all(share <= 1.0 for share, _, _ in plan.gpu_load().values())
    assert plan.replicas == (1, 4)


def test_rendered_tensor_parallel_config_tells_each_group_its_gpus(tmp_path):
    render_repository(load_settings(), tmp_path, plan=plan_of("gpu-8"))
    text = (tmp_path / "generator" / "config.pbtxt").read_text()
    assert 'name: "generator_gpus_6_7"' in text and "kind: KIND_MODEL" in text and "gpus:" not in text
    assert '\\"generator_gpus_0_1\\": [0, 1]' in text and 'key: "tensor_parallel_size"' in text
    assert "preferred_batch_size: 32 preferred_batch_size: 64" in (tmp_path / "embedder" / "config.pbtxt").read_text()
    assert (tmp_path / "rag" / "1" / "model.py").read_bytes() == (COMMITTED / "rag" / "1" / "model.py").read_bytes()


@pytest.mark.parametrize(("text", "message"), [
    ("components: {generator: {engine: {max_num_seq: 8}}}", r"components.generator.engine: unknown setting"),
    ("components: {generator: {engine: {instances: 2}}}", "set it as components.generator.instances"),
    ("components: {embedder: {engine: {max_batch_size: 8}}}", "set it as components.embedder.batching"),
    ("components: {rag: {batching: {max_batch_size: 8}}}", "only embedder, retriever and reranker are batched"),
    ("components: {rag: {device: gpu, gpu_share: 0.1}}", "rag does no GPU work"),
    ("components: {embedder: {device: gpu, gpu_share: 2}}", "only the generator spans several GPUs"),
    ("components: {retriever: {model: x}}", "only embedder, reranker, generator have a model"),
    ("components: {generator: {device: gpu, gpu_share: 2, engine: {tensor_parallel_size: 4}}}", "disagree"),
    ("components: {rag: {instances: 2, min_instances: 6}, prompt_builder: {instances: 1, max_instances: 2}}",
     "need 3 servers but max_instances allow only 2"),
])
def test_specs_that_cannot_be_rendered_say_why(text, message):
    with pytest.raises(SpecError, match=message):
        spec = load_spec(text)
        plan_deployment(spec, load_settings(), [Gpu(0, 80.0)])


def test_a_spec_that_does_not_fit_names_the_file(tmp_path):
    spec = tmp_path / "big.yaml"
    spec.write_text("cluster: {gpus: 1, gpu_memory_gib: 24}\ncomponents: {generator: {device: gpu, instances: 2}}")
    with pytest.raises(SpecError, match=r"big.yaml: generator instance 2 of 2 \(share 1.0\) does not fit"):
        load_plan(spec, load_settings())
    with pytest.raises(SpecError, match="cannot read the deployment spec"):
        load_plan(tmp_path / "missing.yaml", load_settings())


def test_detect_reads_nvidia_smi_and_machine_gpus_replace_the_inventory(tmp_path):
    assert detect_gpus(lambda cmd: "0, 81559\n1, 81559\n") == (Gpu(0, 79.6), Gpu(1, 79.6))
    spec = tmp_path / "detect.yaml"
    spec.write_text("cluster: {gpus: detect}\ncomponents: {embedder: {device: gpu, gpu_share: 0.5}}")
    plan = load_plan(spec, load_settings(), detect=lambda: (Gpu(0, 24.0),))
    assert plan.components["embedder"].placements[0].memory_cap_gib == 12.0
    plan = load_plan(SPECS / "gpu-1.yaml", load_settings(), detect=lambda: (Gpu(0, 40.0),), use_machine_gpus=True)
    assert plan.components["generator"].placements[0].memory_cap_gib == 30.0


SERVED = {"embedder", "retriever", "prompt_builder", "reranker", "generator", "rag"}
SMALL = {"generator_small"}


@pytest.mark.parametrize(("name", "served"), [("cpu", SERVED), ("gpu-1", SERVED), ("gpu-8", SERVED | SMALL),
                                              ("cpu-two-generators", SERVED | SMALL)])
def test_dry_run_prints_the_plan_of_each_example(name, served, tmp_path):
    before = sorted(p.read_text() for p in COMMITTED.glob("*/config.pbtxt"))
    result = CliRunner().invoke(app, ["render", "--spec", str(SPECS / f"{name}.yaml"), "--dry-run"],
                                env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    assert "Plan for" in result.output and "Cluster:" in result.output
    assert ("KIND_MODEL" in result.output) == (name == "gpu-8")
    assert sorted(p.read_text() for p in COMMITTED.glob("*/config.pbtxt")) == before  # a dry run writes nothing
    assert ("Generators: generator (the [generator] model), generator_small" in result.output) == (served != SERVED)
    rows = plan_rows(plan_of(name))
    assert {row[0] for row in rows} == served | {"ingress"}
    assert rows[-1][0] == "ingress" and "ingress" in result.output and "not a Triton model" in result.output


@pytest.mark.parametrize(("name", "row"), [
    ("cpu", ("ingress", "1", "CPU, own process", "-", "-", "none: not a Triton model", "workers=1, port=8080")),
    ("gpu-1", ("ingress", "1", "CPU, own process", "-", "-", "none: not a Triton model", "workers=2, port=8080")),
    ("gpu-8", ("ingress", "2 (2..8)", "CPU, own process", "-", "-", "none: not a Triton model",
               "workers=2, port=8080, cpu=1, memory=1 GiB")),
])
def test_each_example_plans_the_ingress_as_a_row_of_its_own(name, row):
    plan = plan_of(name)
    assert plan_rows(plan)[-1] == row
    assert "ingress" not in plan.components  # no Triton model: nothing placed, nothing rendered
    assert plan.ingress.settings.port == 8080 and plan.ingress.settings.triton_grpc == "127.0.0.1:8001"


def test_the_ingress_block_overrides_the_ingress_settings_and_renders_nothing(tmp_path):
    plan = plan_deployment(load_spec("ingress: {replicas: 3, workers: 4, port: 9090}"), load_settings(), ())
    assert (plan.ingress.replicas, plan.ingress.replica_range) == (3, (3, 3))
    assert plan.ingress.overrides == {"workers": 4, "port": 9090}
    assert (plan.ingress.settings.workers, plan.ingress.settings.port) == (4, 9090)
    assert plan.ingress.settings.api_keys_env == load_settings().ingress.api_keys_env  # the rest as configured
    assert plan.replicas == (1, None)  # the Triton servers' count is not the ingress's
    render_repository(load_settings(), tmp_path, plan=plan)
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == sorted(plan.components)
    assert not (tmp_path / "ingress").exists()
    # a spec without the block: one replica on the [ingress] settings
    default = plan_deployment(load_spec("components: {}"), load_settings(), ())
    assert (default.ingress.replicas, default.ingress.overrides) == (1, {})
    assert default.ingress.settings == load_settings().ingress


@pytest.mark.parametrize(("port", "which"), [(8000, "http"), (8001, "grpc"), (8002, "metrics")])
def test_the_ingress_may_not_take_a_triton_port(port, which):
    with pytest.raises(SpecError, match=rf"ingress.port: {port} is Triton's {which} port \(\[server\] {which}_port\)"):
        plan_deployment(load_spec(f"ingress: {{port: {port}}}"), load_settings(), ())


def test_render_errors_exit_2_with_the_reason(tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text("components: {embedder: {gpu_shar: 0.1}}")
    result = CliRunner().invoke(app, ["render", "--spec", str(spec), "--dry-run"])
    assert result.exit_code == 2 and "unknown key(s) gpu_shar" in result.output
    result = CliRunner().invoke(app, ["render", "--detect-gpus", "--dry-run"])
    assert result.exit_code == 2 and "--detect-gpus needs --spec" in result.output
