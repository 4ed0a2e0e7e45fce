"""The supervisor's pure parts without Triton: backoff, the process tree, which model a stub serves, and what one
check does when a stub, the server or the ingress is gone (tests/integration/test_faults.py kills real ones)."""

import subprocess
import sys
import types
from pathlib import Path

import pytest

from tritonrag.deploy import supervisor as sup
from tritonrag.deploy.supervisor import Backoff, Proc, Supervisor

REPO = Path("/srv/repo")


def stub(pid, ppid, model, start=1):
    return Proc(pid, ppid, start, ("/opt/backends/python/triton_python_backend_stub",
                                   f"{REPO}/{model}/1/model.py", "triton_python_backend_shm_region_1"))


def test_backoff_doubles_to_its_cap_and_resets_after_a_quiet_spell():
    backoff = Backoff(initial_s=1, max_s=8, reset_after_s=100)
    assert [backoff.delay(t) for t in (0, 1, 2, 3, 4, 5)] == [1, 2, 4, 8, 8, 8]
    assert backoff.delay(500) == 1


def test_each_stub_is_attributed_to_its_model_with_what_it_spawned():
    table = {p.pid: p for p in [
        Proc(10, 1, 5, ("tritonserver", "--model-repository=/srv/repo")),
        stub(11, 10, "embedder"), stub(12, 10, "generator"),
        Proc(13, 12, 7, ("python", "-c", "from multiprocessing.spawn import spawn_main")),  # vLLM's engine core
        Proc(14, 13, 8, ("python", "compile_worker")),
        Proc(20, 1, 9, (str(REPO / "x"),)),  # not below tritonserver
        stub(21, 1, "rag"),  # another server's stub
    ]}
    models = sup.model_processes(table, 10, REPO)
    assert set(models) == {"embedder", "generator"}
    assert models["generator"].stubs == {(12, 1)} and models["generator"].spawned == {(13, 7), (14, 8)}
    assert models["embedder"].spawned == set()
    assert sup.model_of_stub(Proc(1, 0, 0, ("python", f"{REPO}/rag/1/model.py")), REPO) is None


def test_the_process_table_reads_this_process_and_its_children():
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        table = sup.process_table()
        me = table[__import__("os").getpid()]
        assert table[child.pid].ppid == me.pid and child.pid in {p.pid for p in sup.descendants(table, me.pid)}
        assert sup.kill_all([(child.pid, table[child.pid].start + 1)]) == 0  # a reused pid is left alone
        assert sup.kill_all([table[child.pid].key]) == 1
        assert child.wait(10) == -9
    finally:
        child.kill()


class FakeControl:
    def __init__(self, fail_loads=0):
        self.calls, self.fail_loads = [], fail_loads

    def unload(self, model):
        self.calls.append(("unload", model))

    def load(self, model, timeout_s):
        self.calls.append(("load", model))
        if self.fail_loads:
            self.fail_loads -= 1
            raise RuntimeError("load failed")


class FakeService:
    def __init__(self, alive=True):
        self.process = types.SimpleNamespace(pid=10, returncode=None if alive else -9,
                                             poll=lambda: None if self.alive else -9)
        self.alive, self.starts, self.model_repository, self.log_file = alive, 0, REPO, Path("/dev/null")

    def stop(self, timeout_s=0):
        pass

    def start(self, timeout_s=0):
        self.starts += 1
        self.alive = True


@pytest.fixture
def tables(monkeypatch):
    """Swap the process table the supervisor sees; the second entry is what kill_all killed."""
    state = {"table": {}, "killed": []}
    monkeypatch.setattr(sup, "process_table", lambda: state["table"])
    monkeypatch.setattr(sup, "kill_all", lambda keys: state["killed"].extend(sorted(keys)) or len(keys))
    return state


def test_a_dead_stub_gets_its_model_unloaded_its_leftovers_killed_and_the_model_loaded_again(tables):
    server = Proc(10, 1, 5, ("tritonserver",))
    tables["table"] = {10: server, 11: stub(11, 10, "embedder"), 12: stub(12, 10, "generator"),
                       13: Proc(13, 12, 7, ("python", "engine"))}
    control = FakeControl(fail_loads=1)
    supervisor = Supervisor(FakeService(), control, backoff=lambda: Backoff(0, 0))
    supervisor.check()
    assert control.calls == []
    tables["table"] = {10: server, 11: stub(11, 10, "embedder"), 13: Proc(13, 1, 7, ("python", "engine"))}
    supervisor.check()  # the generator's stub is gone; its engine process was left behind; a load starts
    supervisor.wait_idle()
    assert control.calls == [("unload", "generator"), ("load", "generator")]
    assert (13, 7) in tables["killed"]
    supervisor.check()  # the load failed: reported, retried after the backoff (0 here: at once)
    assert [e.what for e in supervisor.events] == ["model-died", "model-restore-failed"]
    tables["table"] = {10: server, 11: stub(11, 10, "embedder"), 30: stub(30, 10, "generator", start=9)}
    supervisor.check()
    supervisor.wait_idle()
    supervisor.check()  # the retry succeeded; the new stub is watched
    assert supervisor.events[-1].what == "model-restored" and supervisor.watched["generator"].stubs == {(30, 9)}
    supervisor.check()
    assert control.calls.count(("load", "generator")) == 2


def test_a_dead_server_and_a_dead_ingress_are_restarted(tables):
    server, ingress = FakeService(), FakeService()
    supervisor = Supervisor(server, FakeControl(), ingress=ingress, backoff=lambda: Backoff(0, 0))
    server.alive = ingress.alive = False
    supervisor.check()
    assert server.starts == 1 and ingress.starts == 1
    assert [e.what for e in supervisor.events] == ["server-died", "tritonserver-restarted", "ingress-restarted"]


def test_a_restart_that_fails_waits_its_backoff_before_the_next(tables, monkeypatch):
    server = FakeService(alive=False)
    server.start = lambda timeout_s=0: (_ for _ in ()).throw(TimeoutError("tritonserver not ready after 1s\nlog"))
    supervisor = Supervisor(server, FakeControl(), backoff=lambda: Backoff(60, 60))
    supervisor.check()
    supervisor.check()  # within the backoff: no second attempt
    assert [e.what for e in supervisor.events] == ["server-died", "tritonserver-restart-failed"]
    assert supervisor.events[-1].detail == "tritonserver not ready after 1s; retrying in 60s"


def test_through_the_ingress_a_dead_stub_is_a_503_to_retry_not_a_500():
    import grpc

    from tritonrag.ingress.gateway import _status_error

    dead = _status_error(grpc.StatusCode.INTERNAL, "Stub process 'rag_0_0' is not healthy.", "the rag model")
    assert dead.status == 503 and "retry shortly" in str(dead.message)
    unloaded = _status_error(grpc.StatusCode.INTERNAL, "Request for unknown model: 'rag' has no available versions",
                             "the rag model")
    assert unloaded.status == 503
    assert _status_error(grpc.StatusCode.INTERNAL, "boom", "the rag model").status == 500


def test_a_stream_stranded_by_a_dead_process_ends_with_a_503_instead_of_hanging(monkeypatch):
    """Triton 2.51 never ends a decoupled request whose stub died; the ingress asks the supervisor."""
    import asyncio

    from tritonrag.ingress import gateway as gw
    from tritonrag.ingress.errors import ApiError

    monkeypatch.setattr(gw, "DEATH_CHECK_S", 0.05)
    counts = iter([3, 3, 3, 4])

    async def stuck():
        yield ("sources", None)
        await asyncio.sleep(3600)
        yield ("never", None)

    async def run():
        gateway = gw.TritonGateway.__new__(gw.TritonGateway)

        async def deaths():
            return next(counts, 4)

        gateway.deaths = deaths
        seen = []
        with pytest.raises(ApiError) as caught:
            async for item in gateway._results(stuck()):
                seen.append(item[0])
        return seen, caught.value

    seen, error = asyncio.run(asyncio.wait_for(run(), 10))
    assert seen == ["sources"] and error.status == 503 and "retry" in error.message
