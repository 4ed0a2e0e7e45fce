"""The deployment spec: parsing, validation messages that say where, and the planner's input."""

import pytest

from tritonrag.deploy.placement import gpus_used, plan
from tritonrag.deploy.spec import COMPONENTS, DEFAULT_BATCHING, Batching, IngressSpec, SpecError, load_spec

ONE_GPU = """
cluster: {gpus: 1, gpu_memory_gib: 80}
components:
  embedder: {device: gpu, gpu_share: 0.1, batching: {max_batch_size: 64, preferred_batch_sizes: [16, 32]}}
  retriever: {device: gpu, gpu_share: 0.1}
  prompt_builder: {instances: 2}
  generator: {device: gpu, gpu_share: 0.8, engine: {max_num_seqs: 64}}
  rag: {instances: 1, min_instances: 1, max_instances: 4}
"""


def test_one_gpu_spec_plans_on_one_gpu():
    spec = load_spec(ONE_GPU)
    assert [g.memory_gib for g in spec.gpus] == [80.0]
    embedder = spec.components[0]
    assert embedder.batching.preferred_batch_sizes == (16, 32) and embedder.batching.max_batch_size == 64
    assert spec.components[3].engine == {"max_num_seqs": 64}
    placements = plan(spec.demands(), spec.gpus)
    assert gpus_used(placements) == {0}
    assert [p.component for p in placements if not p.gpus] == ["prompt_builder", "prompt_builder", "reranker", "rag"]


def test_detect_and_gpu_lists():
    assert load_spec("cluster: {gpus: detect}\ncomponents: {}").gpus is None
    assert [g.memory_gib for g in load_spec("cluster: {gpus: [80, 40]}").gpus] == [80.0, 40.0]
    assert load_spec("components: {rag: {}}").gpus == ()


@pytest.mark.parametrize(("text", "message"), [
    ("components: {embeder: {}}", r"components: unknown key\(s\) embeder; allowed: embedder"),
    ("components: {embeder: {}}", "or a name of your own with role: generator"),
    ("components: {critic: {model: x}}", r"unknown key\(s\) critic; .* role: generator"),
    ("components: {embedder: {role: generator}}", "components.embedder.role: embedder is a standard component"),
    ("components: {embedder: {gpu_shar: 0.1}}", r"components.embedder: unknown key\(s\) gpu_shar"),
    ("components: {embedder: {device: tpu}}", "components.embedder.device: must be one of cpu, gpu"),
    ("components: {embedder: {gpu_share: 0.5}}", "a CPU component takes no GPU share"),
    ("components: {generator: {device: gpu, gpu_share: 1.5}}", "whole number of GPUs"),
    ("components: {generator: {device: gpu, gpu_share: 0}}", "needs a share above 0"),
    ("components: {embedder: {instances: 0}}", "components.embedder.instances: must be at least 1"),
    ("components: {embedder: {instances: two}}", "expected a number"),
    ("components: {rag: {min_instances: 4, max_instances: 2}}", "min_instances 4 is above max_instances 2"),
    ("components: {embedder: {placement: random}}", "must be one of pack, spread"),
    ("components: {embedder: {batching: {max_batch_size: 8, preferred_batch_sizes: [16]}}}", "must not exceed"),
    ("cluster: {gpus: 2}", "cluster.gpu_memory_gib: give each GPU's memory"),
    ("cluster: {gpus: 2, gpu_memory_gib: 80}\nextra: 1", r"spec: unknown key\(s\) extra"),
    ("components: [1, 2", "not valid YAML"),
    ("- just a list", "spec: expected a mapping"),
    ("components: {embedder: !!python/object/apply:os.system [echo]}", "not valid YAML"),
])
def test_bad_specs_say_where_and_why(text, message):
    with pytest.raises(SpecError, match=message):
        load_spec(text)


def test_what_a_spec_leaves_out_takes_the_spec_defaults():
    spec = load_spec("components: {embedder: {instances: 2, batching: {max_queue_delay_us: 500}}}")
    assert [spec.instances(name) for name in COMPONENTS] == [2, 1, 1, 1, 1, 1]
    assert spec.component("generator").device == "cpu"
    assert spec.batching("embedder") == Batching(64, (), 500)  # max_batch_size from DEFAULT_BATCHING
    assert spec.batching("retriever") == DEFAULT_BATCHING["retriever"] == Batching(64, (), 0)
    assert spec.batching("rag") == Batching(0, (), None)  # not batched by Triton


@pytest.mark.parametrize(("name", "batching", "message"), [
    ("embedder", "{preferred_batch_sizes: [128]}", r"embedder.batching.preferred_batch_sizes: .* max_batch_size 64"),
    ("generator", "{max_queue_delay_us: 0}", "generator.batching: only embedder, retriever and reranker are batched"),
])
def test_batching_is_checked_against_the_defaults(name, batching, message):
    spec = load_spec(f"components: {{{name}: {{batching: {batching}}}}}")
    with pytest.raises(SpecError, match=message):
        spec.batching(name)


def test_the_ingress_is_a_block_of_its_own_not_a_component():
    spec = load_spec(ONE_GPU + "ingress: {min_replicas: 2, max_replicas: 8, workers: 4, port: 9000, cpu: 0.5, "
                               "memory_gib: 1.5}\n")
    assert spec.ingress == IngressSpec(None, 2, 8, 4, 9000, 0.5, 1.5)
    assert spec.ingress.count == 2 and spec.ingress.replica_range() == (2, 8)
    assert spec.ingress.overrides() == {"workers": 4, "port": 9000}
    # no Triton model: not served, not placed, no bearing on how many Triton servers run
    assert "ingress" not in {name for name, _ in spec.served_models()}
    assert "ingress" not in {d.component for d in spec.demands()}
    assert spec.replica_range() == load_spec(ONE_GPU).replica_range() == (1, 4)


@pytest.mark.parametrize(("block", "count", "bounds"), [
    ("", 1, (1, 1)),  # left out: one replica, the [ingress] settings' workers and port
    ("ingress: {}", 1, (1, 1)),
    ("ingress: {replicas: 3}", 3, (3, 3)),  # a fixed count
    ("ingress: {min_replicas: 2}", 2, (2, None)),  # no maximum
    ("ingress: {max_replicas: 5}", 1, (1, 5)),
    ("ingress: {replicas: 4, min_replicas: 2, max_replicas: 10}", 4, (2, 10)),  # 4 to start with
])
def test_ingress_replicas_and_their_bounds(block, count, bounds):
    ingress = load_spec(f"components: {{}}\n{block}").ingress
    assert (ingress.count, ingress.replica_range()) == (count, bounds)
    if block in ("", "ingress: {}"):
        assert ingress == IngressSpec() and ingress.overrides() == {}


@pytest.mark.parametrize(("text", "message"), [
    ("ingress: {replica: 2}", r"ingress: unknown key\(s\) replica; allowed: cpu, max_replicas, memory_gib"),
    ("ingress: [2]", "ingress: expected a mapping of cpu, .* not a component"),
    ("ingress: 2", "ingress: expected a mapping"),
    ("ingress: {replicas: 0}", "ingress.replicas: must be at least 1"),
    ("ingress: {replicas: 1.5}", "ingress.replicas: expected a whole number"),
    ("ingress: {workers: 0}", "ingress.workers: must be at least 1"),
    ("ingress: {workers: two}", "ingress.workers: expected a number"),
    ("ingress: {port: 0}", "ingress.port: must be at least 1"),
    ("ingress: {port: 70000}", "ingress.port: must be at most 65535"),
    ("ingress: {port: '8080'}", "ingress.port: expected a number"),
    ("ingress: {cpu: 0}", "ingress.cpu: must be at least"),
    ("ingress: {memory_gib: true}", "ingress.memory_gib: expected a number"),
    ("ingress: {min_replicas: 4, max_replicas: 2}", "ingress: min_replicas 4 is above max_replicas 2"),
    ("ingress: {replicas: 1, min_replicas: 2}", "ingress.replicas: 1 is below min_replicas 2"),
    ("ingress: {replicas: 9, max_replicas: 8}", "ingress.replicas: 9 is above max_replicas 8"),
    ("components: {ingress: {instances: 2}}", "components.ingress: the ingress is no Triton model: size it in a "
                                              "top-level `ingress:` block"),
])
def test_bad_ingress_blocks_say_where_and_why(text, message):
    with pytest.raises(SpecError, match=message):
        load_spec(text)
