"""GPU code paths (marker ``gpu``): skipped cleanly without CUDA; scripts/gpu_check.sh run runs them on a lent GPU.

Each cap test runs in a fresh process: torch's per-process memory fraction cannot be undone within a process.
"""

import dataclasses
import json
import os
import subprocess
import sys
import textwrap

import pytest

from tritonrag.devices import FAISS_TEMP_MAX, FAISS_TEMP_MIN, GIB, faiss_index_bytes, faiss_temp_memory

torch = pytest.importorskip("torch")
needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
pytestmark = pytest.mark.gpu
EMBEDDER_ENV = "GPU_CHECK_EMBEDDER"

CAP_PROBE = textwrap.dedent("""
    import json, sys, torch
    from tritonrag.devices import limit_torch_memory
    fraction = float(sys.argv[1])
    limit_torch_memory("cuda:0", fraction)
    total = torch.cuda.get_device_properties(0).total_memory
    result = {"fraction": torch.cuda.get_per_process_memory_fraction(0)}
    small = torch.empty(64 << 20, dtype=torch.uint8, device="cuda:0")
    try:
        torch.empty(int(fraction * total) + (256 << 20), dtype=torch.uint8, device="cuda:0")
        result["over"] = "allocated"
    except torch.OutOfMemoryError as exc:
        result["over"] = "OutOfMemoryError"
    del small
    print(json.dumps(result))
""")


@needs_cuda
def test_torch_memory_fraction_caps_allocations_past_it():
    done = subprocess.run([sys.executable, "-c", CAP_PROBE, "0.05"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"fraction": pytest.approx(0.05), "over": "OutOfMemoryError"}


def test_faiss_budget_math():
    index = faiss_index_bytes(1_000_000, 384)
    assert index == 1_000_000 * (384 * 4 + 8)
    assert faiss_temp_memory(8.0, index) == FAISS_TEMP_MAX  # plenty left: scratch capped at 1 GiB
    assert faiss_temp_memory(index / GIB + 0.1, index) == int((index / GIB + 0.1) * GIB) - index
    with pytest.raises(MemoryError, match="raise its gpu_share"):
        faiss_temp_memory(index / GIB + FAISS_TEMP_MIN / GIB / 2, index)


@needs_cuda
def test_text_embedder_on_cuda_matches_cpu():
    from tritonrag.embedding.encoder import TextEmbedder
    from tritonrag.settings import load_settings

    settings = load_settings().embedder
    if os.environ.get(EMBEDDER_ENV):  # the GPU check's travelling embedder (the package is not on the device)
        settings = dataclasses.replace(settings, model=os.environ[EMBEDDER_ENV])
    texts = ["Phileas Fogg bet twenty thousand pounds.", "Passepartout is his valet."]
    gpu = TextEmbedder(settings, "cuda:0", 0.05)
    assert str(gpu.model.device).startswith("cuda")
    assert torch.cuda.get_per_process_memory_fraction(0) == pytest.approx(0.05)
    on_gpu = gpu.encode(texts)
    on_cpu = TextEmbedder(settings, "cpu").encode(texts)
    assert on_gpu.shape == on_cpu.shape == (2, gpu.dimension)
    assert (on_gpu * on_cpu).sum(axis=1).min() > 0.999  # same unit vectors up to float noise


@needs_cuda
def test_faiss_gpu_index_if_faiss_has_gpus():
    faiss = pytest.importorskip("faiss")
    if not hasattr(faiss, "get_num_gpus") or faiss.get_num_gpus() == 0:
        pytest.skip("this faiss has no GPU support (faiss-cpu)")
    import numpy as np

    from tritonrag.kb.faiss_index import IndexSpec, build_index, on_gpu, place_index

    vectors = np.random.default_rng(0).standard_normal((1000, 64)).astype("float32")
    placed = place_index(build_index(vectors, IndexSpec()), "gpu", 0, 1.0)
    assert on_gpu(placed)
    _, rows = placed.search(vectors[:3], 1)
    assert rows.reshape(-1).tolist() == [0, 1, 2]
