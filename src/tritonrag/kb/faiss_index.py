"""FAISS index types: build (flat, IVF, HNSW), move to a GPU when there is one, and query-time parameters.

Vectors are L2-normalised, so every index uses inner product (= cosine similarity). Row ``i`` of the vectors
is id ``i`` in the index. Indexes are always stored as CPU indexes; a GPU copy is made when loading.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

INDEX_TYPES = ("flat", "ivf", "hnsw")


@dataclass(frozen=True)
class IndexSpec:
    """How to build an index; ``ivf_nlist`` 0 picks 4 * sqrt(n) lists."""

    type: str = "flat"
    ivf_nlist: int = 0
    hnsw_m: int = 32
    hnsw_ef_construction: int = 80

    def __post_init__(self) -> None:
        if self.type not in INDEX_TYPES:
            raise ValueError(f"unknown index type {self.type!r}; choose one of {', '.join(INDEX_TYPES)}")
        if self.ivf_nlist < 0 or self.hnsw_m < 4 or self.hnsw_ef_construction < 1:
            raise ValueError(f"invalid index settings {self}")

    @classmethod
    def from_settings(cls, index) -> IndexSpec:  # index: config.IndexSettings
        return cls(index.type, index.ivf_nlist, index.hnsw_m, index.hnsw_ef_construction)

    @classmethod
    def from_manifest(cls, index: dict) -> IndexSpec:
        """The spec a version was built with (its manifest's ``index``), to rebuild it the same way."""
        return cls(str(index["type"]), int(index.get("nlist", 0)), int(index.get("m", 32)),
                   int(index.get("ef_construction", 80)))

    def describe(self, n: int) -> dict[str, object]:
        """The parameters that matter for this type, as recorded in a manifest."""
        if self.type == "ivf":
            return {"type": "ivf", "nlist": nlist_for(n, self.ivf_nlist)}
        if self.type == "hnsw":
            return {"type": "hnsw", "m": self.hnsw_m, "ef_construction": self.hnsw_ef_construction}
        return {"type": "flat"}


def nlist_for(n: int, requested: int = 0) -> int:
    """IVF list count: the requested one, or 4 * sqrt(n); never more lists than vectors."""
    nlist = requested or int(4 * math.sqrt(max(n, 1)))
    return max(1, min(nlist, n))


def build_index(vectors: np.ndarray, spec: IndexSpec):
    """A CPU FAISS index of ``spec.type`` holding ``vectors`` (ids = row numbers)."""
    import faiss

    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    n, dim = vectors.shape
    if spec.type == "flat":
        index = faiss.IndexFlatIP(dim)
    elif spec.type == "ivf":
        nlist = nlist_for(n, spec.ivf_nlist)
        index = faiss.IndexIVFFlat(faiss.IndexFlatIP(dim), dim, nlist, faiss.METRIC_INNER_PRODUCT)
        index.cp.min_points_per_centroid = 1  # small knowledge bases: no "please provide more points" noise
        if n:
            index.train(vectors)
    else:
        index = faiss.IndexHNSWFlat(dim, spec.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = spec.hnsw_ef_construction
    if n:
        index.add(vectors)
    return index


def index_type_of(index) -> str:
    """flat, ivf or hnsw for a (CPU or GPU) index."""
    import faiss

    if isinstance(index, faiss.IndexHNSW):
        return "hnsw"
    if faiss.try_extract_index_ivf(index) is not None or "IVF" in type(index).__name__:
        return "ivf"
    return "flat"


def gpu_count() -> int:
    """GPUs faiss can use (0 with faiss-cpu)."""
    import faiss

    get = getattr(faiss, "get_num_gpus", None)
    return int(get()) if get else 0


def place_index(index, device: str, gpu: int = 0, memory_cap_gib: float | None = None):
    """Return ``index`` on the device asked for: "cpu", "gpu" (GPU number ``gpu``), or "auto" (GPU when faiss has
    one), within ``memory_cap_gib`` of GPU memory when given (the instance's share; see tritonrag.devices).

    Flat and IVF indexes move to the GPU; HNSW has no GPU form in faiss and stays on the CPU.
    """
    if device not in ("auto", "cpu", "gpu"):
        raise ValueError(f"retriever device must be auto, cpu or gpu, got {device!r}")
    gpus = gpu_count()
    if device == "gpu" and gpus == 0:
        raise RuntimeError("retriever device is 'gpu' but this faiss has no GPU support (install faiss-gpu)")
    if device == "cpu" or gpus == 0 or index_type_of(index) == "hnsw":
        return index
    import faiss

    from tritonrag.devices import faiss_index_bytes, faiss_temp_memory

    resources = faiss.StandardGpuResources()
    if memory_cap_gib is not None:
        resources.setTempMemory(faiss_temp_memory(memory_cap_gib, faiss_index_bytes(index.ntotal, index.d)))
    gpu_index = faiss.index_cpu_to_gpu(resources, gpu, index)
    gpu_index.referenced_resources = resources  # keep the resources alive as long as the index
    return gpu_index


def on_gpu(index) -> bool:
    return type(index).__name__.startswith("Gpu")


def search_parameters(index, nprobe: int, ef_search: int, selector=None):
    """Query-time settings for ``index`` (nprobe for IVF, efSearch for HNSW) plus an optional ID selector."""
    import faiss

    kind = index_type_of(index)
    if kind == "ivf":
        params = faiss.SearchParametersIVF()
        params.nprobe = nprobe
    elif kind == "hnsw":
        params = faiss.SearchParametersHNSW()
        params.efSearch = ef_search
    elif selector is None:
        return None
    else:
        params = faiss.SearchParameters()
    if selector is not None:
        params.sel = selector
    return params


def index_bytes(index) -> int:
    """Bytes the index occupies (its serialized size: vectors plus lists or graph)."""
    import faiss

    if on_gpu(index):
        index = faiss.index_gpu_to_cpu(index)
    return int(faiss.serialize_index(index).nbytes)
