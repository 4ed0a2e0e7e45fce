import numpy as np
import pytest

from tritonrag.kb.faiss_index import (
    INDEX_TYPES,
    IndexSpec,
    build_index,
    gpu_count,
    index_bytes,
    index_type_of,
    nlist_for,
    place_index,
    search_parameters,
)


def clustered(n, dim=32, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, dim))
    v = centres[rng.integers(0, 20, n)] + 0.3 * rng.normal(size=(n, dim))
    return (v / np.linalg.norm(v, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("kind", INDEX_TYPES)
def test_each_type_builds_and_recalls_well(kind):
    data, queries = clustered(3000), clustered(50, seed=1)
    exact = build_index(data, IndexSpec("flat")).search(queries, 10)[1]
    index = build_index(data, IndexSpec(kind))
    assert index_type_of(index) == kind and index.ntotal == 3000
    params = search_parameters(index, nprobe=32, ef_search=128)
    found = index.search(queries, 10, params=params)[1] if params else index.search(queries, 10)[1]
    recall = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact, found)])
    assert recall >= 0.95
    assert index_bytes(index) >= 3000 * 32 * 4


def test_query_time_knobs_matter():
    data, queries = clustered(3000), clustered(50, seed=1)
    index = build_index(data, IndexSpec("ivf", ivf_nlist=64))
    exact = build_index(data, IndexSpec("flat")).search(queries, 10)[1]

    def recall(nprobe):
        found = index.search(queries, 10, params=search_parameters(index, nprobe, 0))[1]
        return np.mean([len(set(a) & set(b)) / 10 for a, b in zip(exact, found)])

    assert recall(1) < recall(64) == 1.0


def test_nlist():
    assert nlist_for(10000) == 400
    assert nlist_for(3) == 3 and nlist_for(0) == 1
    assert nlist_for(10000, 50) == 50


def test_tiny_and_empty_indexes():
    for kind in INDEX_TYPES:
        assert build_index(clustered(2), IndexSpec(kind)).ntotal == 2
        assert build_index(np.zeros((0, 32), np.float32), IndexSpec(kind)).ntotal == 0


def test_spec_validation_and_description():
    with pytest.raises(ValueError, match="unknown index type"):
        IndexSpec("annoy")
    with pytest.raises(ValueError, match="invalid"):
        IndexSpec("hnsw", hnsw_m=1)
    assert IndexSpec("ivf").describe(10000) == {"type": "ivf", "nlist": 400}
    assert IndexSpec("hnsw").describe(5)["m"] == 32


def test_placement_without_a_gpu():
    index = build_index(clustered(10), IndexSpec("flat"))
    assert place_index(index, "auto") is index and place_index(index, "cpu") is index
    with pytest.raises(ValueError, match="auto, cpu or gpu"):
        place_index(index, "tpu")
    if gpu_count() == 0:
        with pytest.raises(RuntimeError, match="faiss-gpu"):
            place_index(index, "gpu")


def test_flat_has_no_parameters_unless_filtered():
    import faiss

    index = build_index(clustered(10), IndexSpec("flat"))
    assert search_parameters(index, 1, 1) is None
    sel = faiss.IDSelectorBatch(np.array([1, 2], np.int64))
    assert search_parameters(index, 1, 1, sel).sel is not None
