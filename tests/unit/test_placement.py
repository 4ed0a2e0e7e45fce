"""The placement planner: shares and memory honoured, pack vs spread, determinism, clear errors."""

import pytest

from tritonrag.deploy.placement import Demand, Gpu, PlacementError, gpus_used, instance_groups, plan
from tritonrag.deploy.spec import load_spec

EIGHT = [Gpu(i, 80.0) for i in range(8)]


def test_one_gpu_split_by_fractions_with_memory_caps():
    placements = plan([Demand("embedder", 1, 0.1), Demand("retriever", 1, 0.1), Demand("generator", 1, 0.8)],
                      [Gpu(0, 80.0)])
    assert [(p.component, p.gpus, p.share) for p in placements] == [
        ("embedder", (0,), 0.1), ("retriever", (0,), 0.1), ("generator", (0,), 0.8)]
    assert [p.memory_cap_gib for p in placements] == pytest.approx([8.0, 8.0, 64.0])
    assert instance_groups(placements, "generator") == [{"count": 1, "kind": "KIND_GPU", "gpus": [0]}]


def test_pack_uses_fewest_gpus_and_spread_uses_most():
    packed = plan([Demand("embedder", 4, 0.25, strategy="pack")], EIGHT)
    spread = plan([Demand("embedder", 4, 0.25, strategy="spread")], EIGHT)
    assert gpus_used(packed) == {0}
    assert gpus_used(spread) == {0, 1, 2, 3}
    assert instance_groups(packed, "embedder") == [{"count": 4, "kind": "KIND_GPU", "gpus": [0]}]


def test_tensor_parallel_generators_spread_and_embedders_packed():
    placements = plan([Demand("generator", 3, 2, strategy="spread"), Demand("embedder", 3, 0.1, strategy="pack")],
                      EIGHT)
    generators = [p for p in placements if p.component == "generator"]
    assert [p.gpus for p in generators] == [(0, 1), (2, 3), (4, 5)]
    assert instance_groups(placements, "embedder") == [{"count": 3, "kind": "KIND_GPU", "gpus": [6]}]
    assert instance_groups(placements, "generator")[0] == {
        "name": "generator_gpus_0_1", "count": 1, "kind": "KIND_MODEL", "visible_gpus": [0, 1]}
    assert generators[0].kind == "KIND_MODEL" and generators[0].memory_fraction == 1.0
    with pytest.raises(PlacementError, match="embedder instance 1 of 3"):  # every GPU is full
        plan([Demand("generator", 4, 2), Demand("embedder", 3, 0.1)], EIGHT)


def test_tensor_parallel_at_a_fraction_of_each_gpu_leaves_room_for_packed_embedders():
    placements = plan([Demand("generator", 4, 0.8, strategy="spread", gpus=2),
                       Demand("embedder", 4, 0.1, strategy="pack"),
                       Demand("retriever", 2, 0.1, strategy="spread")], EIGHT)
    assert [p.gpus for p in placements if p.component == "generator"] == [(0, 1), (2, 3), (4, 5), (6, 7)]
    assert instance_groups(placements, "embedder") == [{"count": 2, "kind": "KIND_GPU", "gpus": [0]},
                                                       {"count": 2, "kind": "KIND_GPU", "gpus": [1]}]
    assert instance_groups(placements, "retriever") == [{"count": 1, "kind": "KIND_GPU", "gpus": [2]},
                                                        {"count": 1, "kind": "KIND_GPU", "gpus": [3]}]
    assert {p.memory_fraction for p in placements if p.component == "generator"} == {0.8}
    packed = plan([Demand("generator", 2, 0.4, strategy="pack", gpus=2)], EIGHT)
    assert instance_groups(packed, "generator") == [
        {"name": "generator_gpus_0_1", "count": 2, "kind": "KIND_MODEL", "visible_gpus": [0, 1]}]
    with pytest.raises(PlacementError, match="not both"):
        Demand("generator", 1, 2, gpus=2)
    whole = plan([Demand("generator", 1, 1.0, gpus=2)], EIGHT)  # all of each of two GPUs
    assert whole[0].gpus == (0, 1) and whole[0].share == 1.0


def test_memory_fraction_follows_each_gpus_size():
    placements = plan([Demand("embedder", 2, 0.1, memory_gib=4.0, strategy="spread")], [Gpu(0, 16.0), Gpu(1, 80.0)])
    assert [(p.gpus, p.memory_cap_gib, p.memory_fraction) for p in placements] == [((0,), 4.0, 0.25),
                                                                                  ((1,), 4.0, 0.05)]


def test_shares_and_memory_never_overflow_a_gpu():
    with pytest.raises(PlacementError, match=r"generator instance 2 of 2 \(share 0.6\) does not fit: GPU 0: 0.40"):
        plan([Demand("generator", 2, 0.6)], [Gpu(0, 80.0)])
    with pytest.raises(PlacementError, match=r"30.0 GiB\) does not fit: GPU 0: 0.50 share and 20.0 GiB free"):
        plan([Demand("a", 1, 0.5, memory_gib=60.0), Demand("b", 1, 0.1, memory_gib=30.0)], [Gpu(0, 80.0)])
    exact = plan([Demand("a", 10, 0.1)], [Gpu(0, 16.0)])  # ten tenths fill a GPU exactly (float sums)
    assert gpus_used(exact) == {0}


def test_cpu_instances_and_determinism():
    demands = [Demand("rag", 2), Demand("embedder", 2, 0.5, strategy="spread"), Demand("generator", 1, 1)]
    first, second = plan(demands, EIGHT[:2]), plan(list(reversed(demands)), EIGHT[:2])
    assert sorted(first, key=str) == sorted(second, key=str)
    assert instance_groups(first, "rag") == [{"count": 2, "kind": "KIND_CPU"}]
    assert [p.component for p in first] == ["rag", "rag", "embedder", "embedder", "generator"]
    assert next(p for p in first if p.component == "generator").gpus == (0,)  # whole GPU placed first


@pytest.mark.parametrize(("demand", "message"), [
    (dict(component="x", instances=0), "at least 1"),
    (dict(component="x", instances=1, share=1.5), "whole number"),
    (dict(component="x", instances=1, share=-0.1), ">= 0"),
    (dict(component="x", instances=1, share=0.1, strategy="random"), "pack, spread"),
    (dict(component="x", instances=1, share=0.1, memory_gib=0), "positive"),
])
def test_bad_demands_are_refused(demand, message):
    with pytest.raises(PlacementError, match=message):
        Demand(**demand)


def test_gpu_demand_without_gpus_and_duplicates():
    with pytest.raises(PlacementError, match="no GPU"):
        plan([Demand("embedder", 1, 0.1)], [])
    with pytest.raises(PlacementError, match="unique"):
        plan([Demand("a", 1), Demand("a", 1)], [])


def test_the_ingress_takes_no_place_on_the_gpus():
    text = """
cluster: {gpus: 1, gpu_memory_gib: 80}
components:
  embedder: {device: gpu, gpu_share: 0.1}
  generator: {device: gpu, gpu_share: 0.85}
"""
    without = load_spec(text)
    sized = load_spec(text + "ingress: {min_replicas: 2, max_replicas: 16, workers: 8, cpu: 4, memory_gib: 8}\n")
    assert sized.demands() == without.demands()
    assert plan(sized.demands(), [Gpu(0, 80.0)]) == plan(without.demands(), [Gpu(0, 80.0)])
    assert "ingress" not in {p.component for p in plan(sized.demands(), [Gpu(0, 80.0)])}
