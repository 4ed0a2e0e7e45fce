import math

import pytest

from tritonrag.errors import InvalidInput
from tritonrag.generation.sampling import SamplingParams
from tritonrag.generation.stop_strings import StopMatcher
from tritonrag.settings import load_settings


@pytest.fixture(scope="module")
def settings():
    return load_settings().generator


def run(matcher, deltas):
    """Feed all deltas, then flush; return the pieces sent and the full answer."""
    pieces = [matcher.feed(d) for d in deltas]
    pieces.append(matcher.flush())
    return pieces, "".join(pieces)


# --- StopMatcher -------------------------------------------------------------------------------------------


def test_stop_split_across_deltas_is_never_emitted():
    pieces, answer = run(StopMatcher(["### User:"]), ["The answer", " is 42.\n#", "##", " Us", "er:", " more"])
    assert answer == "The answer is 42.\n"
    assert all("#" not in piece for piece in pieces)


def test_text_before_stop_in_same_delta_is_emitted():
    matcher = StopMatcher(["STOP"])
    assert matcher.feed("hello STOP world") == "hello "
    assert matcher.stopped
    assert matcher.feed("later") == ""
    assert matcher.flush() == ""


def test_nothing_after_stop():
    matcher = StopMatcher(["\n\n"])
    pieces, answer = run(matcher, ["one", "\n", "\n", "two", "three"])
    assert answer == "one"
    assert pieces[-3:] == ["", "", ""]


def test_partial_prefix_held_then_released_when_it_is_not_a_stop():
    matcher = StopMatcher(["### User:"])
    assert matcher.feed("Hi ##") == "Hi "  # "##" might start the stop string: held back
    assert matcher.feed("# Us") == ""
    assert matcher.feed("a") == "### Usa"  # no longer a prefix of the stop: released
    assert matcher.feed("end #") == "end "
    assert matcher.flush() == "#"  # end of generation: held text was never a stop
    assert not matcher.stopped


def test_held_prefix_not_released_twice():
    matcher = StopMatcher(["abc"])
    _, answer = run(matcher, ["x", "a", "b", "y", "ab"])
    assert answer == "xabyab"


def test_earliest_of_several_stops_wins():
    _, answer = run(StopMatcher(["world", "lo w"]), ["hel", "lo wor", "ld"])
    assert answer == "hel"


def test_overlapping_stop_prefix():
    _, answer = run(StopMatcher(["aab"]), ["aa", "ab", "zzz"])
    assert answer == "a"  # stream "aaab": the stop starts at the second "a"


def test_no_stops_passes_everything_through():
    matcher = StopMatcher(["", ""])
    assert matcher.feed("###") == "###"
    assert matcher.flush() == ""


@pytest.mark.parametrize("stop", ["\n\n", "### User:", "A reader asked:", "x"])
def test_stop_matcher_agrees_with_whole_text_cut_for_every_split(stop):
    text = f"Some answer text, then {stop} and trailing text {stop} again"
    expected = text[: text.find(stop)]
    for size in range(1, 8):
        deltas = [text[i : i + size] for i in range(0, len(text), size)]
        pieces, answer = run(StopMatcher([stop]), deltas)
        assert answer == expected, size
        assert stop not in "".join(pieces)


# --- SamplingParams.from_request ---------------------------------------------------------------------------


def test_defaults_come_from_settings(settings):
    params = SamplingParams.from_request({}, settings)
    assert params.max_tokens == settings.max_tokens_default
    assert params.temperature == settings.temperature_default
    assert params.top_p == settings.top_p_default
    assert params.repetition_penalty == settings.repetition_penalty_default
    assert params.top_k == 0
    assert params.stop == ()
    assert params.seed is None


def test_valid_values_are_accepted_and_converted(settings):
    params = SamplingParams.from_request(
        {"max_tokens": "16", "temperature": "0.7", "top_p": 0.9, "top_k": 5.0, "seed": 3, "stop": "END",
         "repetition_penalty": 1.0},
        settings,
    )
    assert params == SamplingParams(16, 0.7, 0.9, 5, ("END",), 3, 1.0)
    assert isinstance(params.max_tokens, int)
    assert isinstance(params.top_k, int)


def test_stop_list_is_kept_in_order(settings):
    params = SamplingParams.from_request({"stop": ["b", "a"]}, settings)
    assert params.stop == ("b", "a")


def test_limits_are_inclusive(settings):
    assert SamplingParams.from_request({"max_tokens": 1}, settings).max_tokens == 1
    limit = settings.max_tokens_limit
    assert SamplingParams.from_request({"max_tokens": limit}, settings).max_tokens == limit
    assert SamplingParams.from_request({"temperature": 0, "top_p": 1}, settings).top_p == 1.0
    assert SamplingParams.from_request({"temperature": 2}, settings).temperature == 2.0


@pytest.mark.parametrize(
    ("raw", "name"),
    [
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 10**6}, "max_tokens"),
        ({"max_tokens": -1}, "max_tokens"),
        ({"max_tokens": "abc"}, "max_tokens"),
        ({"max_tokens": 1.5}, "max_tokens"),
        ({"max_tokens": True}, "max_tokens"),
        ({"max_tokens": None}, "max_tokens"),
        ({"max_tokens": [5]}, "max_tokens"),
        ({"max_tokens": float("nan")}, "max_tokens"),
        ({"temperature": -1}, "temperature"),
        ({"temperature": 5}, "temperature"),
        ({"temperature": "NaN"}, "temperature"),
        ({"temperature": "inf"}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"temperature": False}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
        ({"top_k": -1}, "top_k"),
        ({"repetition_penalty": 0.1}, "repetition_penalty"),
        ({"repetition_penalty": 3}, "repetition_penalty"),
        ({"seed": "x"}, "seed"),
        ({"seed": True}, "seed"),
        ({"max_token": 5}, "max_token"),
        ({"bogus": 1}, "bogus"),
        ({"stop": [""]}, "stop"),
        ({"stop": ["x" * 1000]}, "stop"),
        ({"stop": [1]}, "stop"),
    ],
)
def test_invalid_values_name_the_parameter(settings, raw, name):
    with pytest.raises(InvalidInput, match=name):
        SamplingParams.from_request(raw, settings)


def test_too_many_stop_strings(settings):
    too_many = [f"s{i}" for i in range(settings.max_stop_strings + 1)]
    with pytest.raises(InvalidInput, match="stop"):
        SamplingParams.from_request({"stop": too_many}, settings)
    assert len(SamplingParams.from_request({"stop": too_many[:-1]}, settings).stop) == settings.max_stop_strings


def test_unknown_key_message_lists_known_keys(settings):
    with pytest.raises(InvalidInput) as info:
        SamplingParams.from_request({"temprature": 1}, settings)
    assert "temprature" in str(info.value)
    assert "temperature" in str(info.value)


def test_nan_never_gets_through(settings):
    for key in ("temperature", "top_p", "repetition_penalty"):
        with pytest.raises(InvalidInput, match=key):
            SamplingParams.from_request({key: math.nan}, settings)


def test_non_list_stop_is_invalid_input(settings):
    with pytest.raises(InvalidInput, match="stop"):
        SamplingParams.from_request({"stop": 5}, settings)


@pytest.mark.parametrize(("raw", "message"), [
    ({"seed": 2**70},
     "seed must be an integer between 0 and 9223372036854775807 (2**63 - 1), got 1180591620717411303424"),
    ({"seed": -1}, "seed must be an integer between 0 and"),
    ({"seed": 10**400}, "seed is far out of range: got an integer of about 401 digits"),
    ({"seed": 1e300}, "seed is far out of range"),
    ({"top_k": 2**40}, "top_k must be >= 0 (0 disables it) and at most 2147483647"),
    ({"json_object": "[" * 3000}, "json_object must be true or false"),
    ({"json_schema": "[" * 5000 + "]" * 5000}, "json_schema nests arrays and objects more than 64 levels deep"),
    ({"json_schema": '{"maxLength": ' + "1" * 5000 + "}"}, "more than 4300 digits"),
    ({"stop": ["\ud800"]}, "stop holds a lone surrogate"),
    ({"x" * 5000: 1}, "unknown sampling parameter(s) 'xxxx"),
])
def test_absurd_sampling_values_are_refused_clearly(settings, raw, message):
    with pytest.raises(InvalidInput) as caught:
        SamplingParams.from_request(raw, settings)
    assert message in str(caught.value) and len(str(caught.value)) < 600


def test_a_seed_keeps_its_exact_value(settings):
    assert SamplingParams.from_request({"seed": 2**63 - 1}, settings).seed == 2**63 - 1
    assert SamplingParams.from_request({"seed": str(2**62 + 1)}, settings).seed == 2**62 + 1
    assert SamplingParams.from_request({"seed": 0}, settings).seed == 0


# --- [generator] cpu_nice: the engine's processes at a lower CPU priority ----------------------------------


def test_cpu_nice_default_and_bounds(settings, tmp_path):
    from dataclasses import replace

    assert 0 <= settings.cpu_nice <= 19
    assert replace(settings, cpu_nice=0).cpu_nice == 0
    assert replace(settings, cpu_nice=19).cpu_nice == 19
    for bad in (-1, 20):
        with pytest.raises(ValueError, match="cpu_nice"):
            replace(settings, cpu_nice=bad)
    config = tmp_path / "nice.toml"
    config.write_text("[generator]\ncpu_nice = 20\n")
    with pytest.raises(ValueError, match="cpu_nice"):
        load_settings(config)
    config.write_text("[generator]\ncpu_nice = 5\n")
    assert load_settings(config).generator.cpu_nice == 5


def test_parent_pid_reads_past_a_command_with_spaces_and_parentheses():
    from tritonrag.procfs import parent_pid

    assert parent_pid("42 (VLLM::EngineCore) S 7 42 1 0 -1") == 7
    assert parent_pid("43 (a (b) c)) R 9 43 1") == 9


def _fake_proc(root, tree):
    """A /proc of ``tree`` ({pid: (ppid, [thread ids])}), with a file that is no process."""
    (root / "self").mkdir()
    (root / "uptime").write_text("1.0 1.0\n")
    for pid, (ppid, threads) in tree.items():
        (root / str(pid) / "task").mkdir(parents=True)
        (root / str(pid) / "stat").write_text(f"{pid} (proc {pid}) S {ppid} {pid} 0\n")
        for tid in threads:
            (root / str(pid) / "task" / str(tid)).mkdir()
    return root


def test_descendants_and_threads_from_proc(tmp_path):
    from tritonrag.procfs import descendant_pids, thread_ids

    proc = _fake_proc(tmp_path, {1: (0, [1]), 10: (1, [10]), 20: (10, [20, 21, 22]), 30: (20, [30]), 25: (10, [25]),
                                 40: (1, [40])})
    assert descendant_pids(10, proc) == [20, 25, 30]
    assert descendant_pids(30, proc) == []
    assert thread_ids(20, proc) == [20, 21, 22]
    assert thread_ids(99, proc) == []  # ended


def test_lower_priority_renices_every_thread_of_a_real_child():
    import subprocess
    import sys

    from tritonrag.procfs import lower_priority, thread_ids

    child = subprocess.Popen([sys.executable, "-c",
                              "import threading, time\n"
                              "threading.Thread(target=time.sleep, args=(30,), daemon=True).start()\n"
                              "print('up', flush=True); time.sleep(30)"], stdout=subprocess.PIPE)
    try:
        assert child.stdout.readline().strip() == b"up"
        tids = thread_ids(child.pid)
        assert len(tids) >= 2
        start = max(os_nice(t) for t in tids)
        if start > 16:
            pytest.skip(f"this test runs at nice {start}: no room to raise it")
        target = start + 3
        assert lower_priority([child.pid], target) == len(tids)
        assert {os_nice(t) for t in tids} == {target}
        assert lower_priority([child.pid], target - 1) == 0  # never lowers a nice value (raises priority)
        assert lower_priority([999_999_999], 5) == 0  # a process that is gone
        with pytest.raises(ValueError, match="nice"):
            lower_priority([child.pid], 20)
    finally:
        child.kill()
        child.wait()


def os_nice(tid):
    import os

    return os.getpriority(os.PRIO_PROCESS, tid)


def test_vllm_engine_finds_its_engine_processes(monkeypatch):
    import os
    from types import SimpleNamespace

    import tritonrag.procfs as processes
    from tritonrag.generation.vllm_engine import VllmEngine

    engine = object.__new__(VllmEngine)  # no vLLM started: only the process lookup is tested
    monkeypatch.setattr(processes, "descendant_pids", lambda pid: {100: [101, 102]}.get(pid, []))
    manager = SimpleNamespace(processes=[SimpleNamespace(pid=100), SimpleNamespace(pid=None)])
    engine.engine = SimpleNamespace(engine_core=SimpleNamespace(resources=SimpleNamespace(engine_manager=manager)))
    assert engine.engine_pids() == [100, 101, 102]
    engine.engine = SimpleNamespace(engine_core=SimpleNamespace())  # an in-process engine core: nothing to renice
    assert engine.engine_pids() == []

    renice = []
    monkeypatch.setattr(processes, "lower_priority", lambda pids, nice: renice.append((pids, nice)) or 3)
    engine.engine = SimpleNamespace(engine_core=SimpleNamespace(resources=SimpleNamespace(engine_manager=manager)))
    engine._lower_engine_priority(7)
    assert renice == [([100, 101, 102], 7)]
    assert os.getpid() not in renice[0][0]  # this process (which streams the tokens) keeps its priority
