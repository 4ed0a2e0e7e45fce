"""Faults under load, on a real `tritonrag serve` with the stand-in models: SIGKILL each model's stub in turn and
then tritonserver; the supervisor makes readiness false while a model is broken, restores it, and the service
answers again without a person. Clients see 503s that say to retry, never a hang or a 500.
benchmarks/faults.py runs the same on vLLM and writes the fault table."""

import json
import sys
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "benchmarks"))

from faults import FAULTS, ServeProcess, inject  # noqa: E402

RECOVERY_BOUND_S = 180  # stand-ins reload in seconds; a busy 2-core CI machine needs slack


@pytest.fixture(scope="module")
def serve(tmp_path_factory):
    process = ServeProcess(str(ROOT / "benchmarks" / "stand_in.toml"), tmp_path_factory.mktemp("faults") / "serve.log")
    process.start()
    yield process
    process.stop()
    assert process.process.returncode is not None


@pytest.mark.parametrize("fault", FAULTS)
def test_the_service_recovers_from_a_killed_process_under_load(serve, fault):
    result = inject(serve, fault, concurrency=3, max_tokens=4, recover_timeout_s=RECOVERY_BOUND_S, settle_s=1.5)
    assert result.killed_processes >= 1
    assert result.recovery_s is not None, f"{fault}: no answer {RECOVERY_BOUND_S}s after the kill; see {serve.log_file}"
    if fault == "prompt_builder":  # rag builds its prompts in process: no request needs that model any more
        assert result.failed_requests == 0, (result.statuses, result.samples)
    else:
        assert result.not_ready_seen, f"{fault}: the supervisor's readiness never turned false"
    assert result.answered_requests > 0
    # what a client of the ingress sees meanwhile: a 503 that says to retry, never a 500, a 4xx or no answer
    assert set(result.statuses) <= {"503"}, (result.statuses, result.samples)
    for message in result.samples.values():
        assert "retry" in json.loads(message)["error"]["message"], message


def test_the_supervisors_readiness_reports_what_it_restored(serve):
    with urllib.request.urlopen(f"http://127.0.0.1:{serve.health}/health/ready", timeout=5) as response:
        status = json.loads(response.read())
    assert status["ready"] and status["broken_models"] == [] and status["restarting"] is None
    seen = {(event["what"], event["target"]) for event in status["events"]}
    assert {("model-died", "rag"), ("model-restored", "rag"), ("tritonserver-restarted", "tritonserver")} <= seen
