from pathlib import Path

from tritonrag.deploy.plan import plan_deployment
from tritonrag.deploy.render import model_specs, render_repository
from tritonrag.deploy.spec import load_spec
from tritonrag.serving.contract import MODEL_IO
from tritonrag.settings import load_settings

COMMITTED = Path(__file__).parents[2] / "model_repository"
MODELS = {"embedder", "retriever", "prompt_builder", "reranker", "generator", "rag"}


def test_committed_configs_match_the_default_settings():
    assert render_repository(load_settings(), COMMITTED, check=True) == []


def test_render_writes_six_configs_and_entry_points(tmp_path):
    written = render_repository(load_settings(), tmp_path)
    configs = [p for p in written if p.name == "config.pbtxt"]
    assert len(written) == 12 and len(configs) == 6
    assert {p.parent.name for p in configs} == MODELS
    assert sorted(tmp_path.glob("*/config.pbtxt")) == sorted(configs)
    assert sorted(tmp_path.glob("*/1/model.py")) == sorted(set(written) - set(configs))
    for model in MODELS:  # each entry point imports the adapter the package ships
        entry = (tmp_path / model / "1" / "model.py").read_text()
        assert f"from tritonrag.serving.models.{model} import TritonPythonModel" in entry
    for path in configs:
        text = path.read_text()
        assert f'name: "{path.parent.name}"' in text
        assert 'backend: "python"' in text
        assert "instance_group" in text
    # a second render finds nothing to change, and check mode writes nothing
    assert render_repository(load_settings(), tmp_path) == []
    assert render_repository(load_settings(), tmp_path, check=True) == []


def test_render_matches_committed_files(tmp_path):
    render_repository(load_settings(), tmp_path)
    for model in MODELS:
        for name in ("config.pbtxt", "1/model.py"):
            assert (tmp_path / model / name).read_text() == (COMMITTED / model / name).read_text()


def test_check_mode_reports_without_writing(tmp_path):
    differing = render_repository(load_settings(), tmp_path, check=True)
    assert len(differing) == 12
    assert not list(tmp_path.iterdir())
    render_repository(load_settings(), tmp_path)
    target = tmp_path / "generator" / "config.pbtxt"
    target.write_text(target.read_text() + "\n# edited by hand\n")
    assert render_repository(load_settings(), tmp_path, check=True) == [target]


def test_decoupled_only_for_generator_and_rag(tmp_path):
    render_repository(load_settings(), tmp_path)
    decoupled = {m for m in MODELS if "decoupled: true" in (tmp_path / m / "config.pbtxt").read_text()}
    assert decoupled == {"generator", "rag"}


def test_the_deployment_spec_drives_instances_and_batching(tmp_path):
    spec = load_spec("components: {embedder: {instances: 3, batching: {max_batch_size: 16, max_queue_delay_us: 100}}}")
    repo = tmp_path / "repo"
    render_repository(load_settings(), repo, plan=plan_deployment(spec, load_settings(), ()))
    text = (repo / "embedder" / "config.pbtxt").read_text()
    assert "max_batch_size: 16" in text
    assert "count: 3" in text
    assert "KIND_CPU" in text  # a spec without GPUs runs everything on the CPU
    assert "dynamic_batching { max_queue_delay_microseconds: 100 }" in text
    retriever = (repo / "retriever" / "config.pbtxt").read_text()  # left out: the spec's defaults
    assert "max_batch_size: 64" in retriever and "max_queue_delay_microseconds: 0" in retriever
    prompt_builder = (repo / "prompt_builder" / "config.pbtxt").read_text()
    assert "dynamic_batching" not in prompt_builder and "max_batch_size: 0" in prompt_builder


def test_settings_overrides_reach_the_instances_through_the_spec(tmp_path):
    spec = load_spec("components: {generator: {engine: {max_num_seqs: 8}}}")
    repo = tmp_path / "repo"
    render_repository(load_settings(), repo, plan=plan_deployment(spec, load_settings(), ()))
    assert 'key: "max_num_seqs"' in (repo / "generator" / "config.pbtxt").read_text()


def test_configs_declare_the_contract(tmp_path):
    render_repository(load_settings(), tmp_path)
    for model in MODEL_IO:
        text = (tmp_path / model.name / "config.pbtxt").read_text()
        for tensor in (*model.inputs, *model.outputs):
            assert f'name: "{tensor.name}"\n    data_type: {tensor.dtype}' in text


def test_model_specs_names():
    assert [spec.name for spec in model_specs(load_settings())] == [
        "embedder", "retriever", "prompt_builder", "reranker", "generator", "rag"
    ] == [model.name for model in MODEL_IO]
