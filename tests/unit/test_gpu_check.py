"""The GPU check kit's local half: the size check, the GPU spec's rendering, the report, nvidia-smi parsing, the
in-stub probe's wrapper and the CPU dry run (scripts/gpu_check.sh; the device half runs only on a lent GPU)."""

import json
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import gpu_check
import gpu_check_report as report
import gpu_check_steps as steps
import gpu_check_stub as stub
import gpu_kit
import gpu_kit_models

ROOT = Path(__file__).resolve().parents[2]
MIB = 1 << 20


def test_size_check_refuses_an_oversized_kit_naming_what_to_trim():
    with pytest.raises(gpu_kit.KitTooLarge) as refused:
        gpu_kit.check_size(3 * MIB, {"runtime.tar.xz": 40 * MIB, "models.tar.xz": 25 * MIB, "kb.tar.xz": MIB})
    message = str(refused.value)
    assert "over by 5.0 MiB" in message and "Trim the largest: runtime.tar.xz (40.0 MiB)" in message
    assert "ICU" in message and "models.tar.xz" in message


def test_size_check_accepts_a_kit_that_fits():
    summary = gpu_kit.check_size(3 * MIB, {"runtime.tar.xz": 19 * MIB, "site.tar.xz": 18 * MIB})
    assert summary.startswith("would travel 40.0 MiB of 64.0 MiB") and "working tree 3.0 MiB" in summary


def test_fake_kit_folder_is_measured(tmp_path):
    (tmp_path / "runtime.tar.xz").write_bytes(b"x" * 1000)
    (tmp_path / "manifest.json").write_text("{}")
    assert gpu_kit.kit_parts(tmp_path) == {"manifest.json": 2, "runtime.tar.xz": 1000}
    assert gpu_kit.kit_parts(tmp_path / "missing") == {}


def test_gpu_spec_renders_gpu_groups_and_caps(tmp_path):
    ctx = steps.Context("dry-run", tmp_path / "out", tmp_path, deadline=float("inf"))
    checks = steps.render(ctx)
    assert [c.status for c in checks] == ["pass"] * len(checks), [(c.name, c.seen) for c in checks]
    embedder = (tmp_path / "repository" / "embedder" / "config.pbtxt").read_text()
    assert "count: 2\n    kind: KIND_GPU\n    gpus: [ 0 ]" in embedder
    assert steps._gpu_memory(embedder)["0"]["fraction"] == 0.1
    generator = (tmp_path / "repository" / "generator" / "config.pbtxt").read_text()
    assert steps._gpu_memory(generator)["0"]["fraction"] == 0.5
    assert '\\"transformers\\"' in generator and '\\"bfloat16\\"' in generator
    assert "KIND_CPU" in (tmp_path / "repository" / "retriever" / "config.pbtxt").read_text()


def test_nvidia_smi_parsing_and_stub_mapping():
    usage = report.parse_compute_apps("101, 1200\n102, [N/A]\n103, 900 MiB\nnot a row\n101, 10\n")
    assert usage == {101: 1210.0, 103: 900.0}
    argv = ["/x/triton_python_backend_stub", "/repo/embedder/1/model.py", "shm", "1048576", "1048576", "77",
            "/x/python", "336", "embedder_0_1", "DEFAULT"]
    assert report.stub_instance(argv) == "embedder_0_1" and report.stub_parent(argv) == 77
    assert report.stub_instance(["/usr/bin/python3", "x"]) is None
    assert report.model_of("embedder_0_1") == "embedder" and report.model_of("prompt_builder_0_0") == "prompt_builder"


def test_memory_verdicts():
    rows = report.memory_checks({1: 2000.0, 2: 9000.0, 3: 500.0}, {1: "embedder_0_0", 2: "generator_0_0",
                                                                     3: "retriever_0_0", 4: "embedder_0_1"},
                                {"embedder": 0.5, "generator": 10.0})
    status = {r.name: r.status for r in rows}
    assert status == {"nvidia-smi: embedder_0_0 under its cap": "pass",  # 2000 <= 512 + 1536
                      "nvidia-smi: embedder_0_1 under its cap": "fail",  # not on the GPU at all
                      "nvidia-smi: generator_0_0 under its cap": "pass",
                      "nvidia-smi: retriever_0_0 (CPU) holds no GPU memory": "fail"}


def _diag(**changes):
    diag = {"instance": "generator_0_0", "kind": "GPU", "device_id": "0", "model_device": "cuda:0",
            "cuda_visible_devices": "0", "cuda_visible_devices_expected": "0",
            "torch": {"memory_fraction": 0.5}, "over_cap": {"raised": "OutOfMemoryError", "message": "CUDA out of"},
            "under_cap": {"ok": True}}
    return {**diag, **changes}


def test_in_stub_verdicts():
    assert {c.status for c in report.stub_checks(_diag(), 0.5, "0")} == {"pass"}
    failed = {c.name for c in report.stub_checks(_diag(over_cap={"ok": True, "bytes": 2**36},
                                                       cuda_visible_devices=None, model_device="cpu"), 0.5, "0")
              if c.status == "fail"}
    assert failed == {"generator_0_0: allocation past the cap", "generator_0_0: CUDA_VISIBLE_DEVICES",
                      "generator_0_0: weights on"}


def test_report_writer(tmp_path):
    checks = [report.verdict("a | b", "x", 1, True), report.not_checked("vLLM", "runs", "cannot travel"),
              report.verdict("c", "y", 2, False, "why")]
    md, js = report.write_report(tmp_path, checks, {"mode": "gpu", "command": "cmd", "machine": "m",
                                                    "sections": {"Extra": "text"}})
    text = md.read_text()
    assert "| a \\| b | x | 1 | pass |" in text and "| vLLM | runs | – | not checked: cannot travel |" in text
    assert "1 pass, 1 fail, 1 not checked" in text and "## Extra" in text
    assert [c["status"] for c in json.loads(js.read_text())["checks"]] == ["pass", "not checked", "fail"]
    with pytest.raises(ValueError):
        report.Check("x", "y", "z", "maybe")


def test_probe_wrapper_keeps_the_adapter_and_records(tmp_path, monkeypatch):
    adapter = types.ModuleType("fake_adapter")

    class Base:
        finalized = False

        def initialize(self, args):
            self.ready = True

        def finalize(self):
            Base.finalized = True

    adapter.TritonPythonModel = Base
    monkeypatch.setitem(sys.modules, "fake_adapter", adapter)
    monkeypatch.setenv(stub.DIAG_ENV, str(tmp_path))
    model = stub.wrapped("fake_adapter")()
    model.initialize({"model_name": "retriever", "model_instance_name": "retriever_0_0", "model_instance_kind": "CPU",
                      "model_config": "{}"})
    model.finalize()
    assert model.ready and Base.finalized and isinstance(model, Base)
    diag = json.loads((tmp_path / "retriever_0_0.json").read_text())
    assert diag["kind"] == "CPU" and diag["told"] is None and diag["pid"] > 0
    assert (tmp_path / "retriever_0_0.finalize.json").exists()
    (tmp_path / "embedder" / "1").mkdir(parents=True)
    stub.install_probes(tmp_path, ["embedder"])
    assert 'wrapped("tritonrag.serving.models.embedder")' in (tmp_path / "embedder" / "1" / "model.py").read_text()


def test_int8_embedder_weights_round_trip():
    rng = np.random.default_rng(0)
    tensors = {"w": rng.standard_normal((64, 32)).astype(np.float32), "b": rng.standard_normal(32).astype(np.float32),
               "ids": np.arange(4, dtype=np.int64)}
    packed = gpu_kit_models.quantize(tensors)
    assert packed["w"].dtype == np.int8 and packed["b"].dtype == np.float16 and packed["ids"].dtype == np.int64
    restored = gpu_kit_models.dequantize(packed)
    assert set(restored) == set(tensors)
    cosine = (restored["w"] * tensors["w"]).sum(1) / np.linalg.norm(restored["w"], axis=1) / np.linalg.norm(
        tensors["w"], axis=1)
    assert cosine.min() > 0.999 and np.array_equal(restored["ids"], tensors["ids"])


def test_dry_run_reports_gpu_steps_not_checked(tmp_path):
    code = gpu_check.main(["--mode", "dry-run", "--out", str(tmp_path / "out"), "--scratch", str(tmp_path),
                           "--budget-s", "60"])
    text = (tmp_path / "out" / "gpu_check.md").read_text()
    assert code == 0, text
    assert "| pytest -m gpu | ran | – | not checked: no GPU (dry run) |" in text
    assert "generator on vLLM" in text and "| render: embedder gpu_memory cap |" in text
    assert (tmp_path / "out" / "gpu_check.log").read_text().count("step ") >= 3


def test_script_help():
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--help"], capture_output=True, text=True,
                          timeout=30)
    assert done.returncode == 0 and "carry=[\".gpu_kit\"]" in done.stdout
