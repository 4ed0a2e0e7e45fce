"""Two replicas (tritonserver + ingress each, stand-in models) behind Debian's haproxy: one is SIGKILLed under load.

The scenario is benchmarks/replicas.py's run_failover (which also writes benchmarks/results/replicas/report.md);
here its figures are checked: haproxy drops the dead replica from every pool within seconds, requests that start
after that all succeed on the other one, streams cut by the kill end with an error the client sees (no hang),
and the restarted replica is UP again and served. ~1-2 minutes, both Tritons' starts included.
"""

import shutil
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from replicas import REQUEST_BOUND_S, STREAMS, run_failover

from tritonrag.deploy.load_balancer import BACKENDS

pytestmark = pytest.mark.skipif(shutil.which("haproxy") is None,
                                reason="haproxy is not installed (apt-get install haproxy; scripts/setup.sh does it "
                                       "as root)")


@pytest.fixture(scope="module")
def failover(tmp_path_factory):
    return run_failover(tmp_path_factory.mktemp("replicas"))


def test_the_dead_replica_leaves_every_pool_within_seconds(failover):
    assert set(failover.down_at) == set(BACKENDS), failover.states_down
    assert max(failover.down_at.values()) < 5.0, failover.down_at
    assert all(state.startswith("DOWN") for state in failover.states_down.values()), failover.states_down


def test_requests_started_after_it_was_down_all_succeed_on_the_other_replica(failover):
    later = [o for o in failover.outcomes if failover.phase(o) in ("DOWN -> restarted", "after the restart")]
    assert later, "the load kept sending after the kill"
    failed = [o for o in later if not o.ok]
    assert not failed, [(o.kind, o.error) for o in failed]


def test_non_streamed_requests_in_flight_or_in_the_window_are_retried_by_haproxy(failover):
    # A non-streamed request the dead replica had not answered gets empty-response / conn-failure: retried.
    unary = [o for o in failover.outcomes if o.kind not in STREAMS
             and failover.phase(o) in ("in flight at the kill", "kill -> DOWN")]
    assert all(o.ok for o in unary), [(o.kind, o.error) for o in unary if not o.ok]


def test_streams_cut_by_the_kill_end_with_a_clear_error_and_nothing_hangs(failover):
    assert failover.outcomes
    assert max(o.end - o.start for o in failover.outcomes) < REQUEST_BOUND_S
    for o in failover.outcomes:
        if not o.ok:
            assert o.kind in STREAMS or failover.phase(o) == "kill -> DOWN", (o.kind, o.error)
            assert any(word in o.error for word in ("truncated", "IncompleteRead", "RST_STREAM", "Stream removed",
                                                    "502", "503", "UNAVAILABLE", "CANCELLED", "Connection")), o.error


def test_the_restarted_replica_is_up_again_and_gets_traffic(failover):
    assert set(failover.up_at) == set(BACKENDS), failover.states_up
    assert all(state == "UP" for state in failover.states_up.values()), failover.states_up
    assert max(failover.up_at.values()) < 5.0, failover.up_at
    assert not failover.probe_failures
    assert all(failover.served_after_up[b] > 0 for b in BACKENDS if failover.grpc_ok or b != "triton_grpc"), \
        failover.served_after_up
