"""benchmarks/soak.py's pure parts: the request mix, aggregation per kind and over time, process growth, metric
parsing, process labels, the settings overlay and the target verdicts."""

import random
import sys
import tomllib
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

import soak
from soak import BAD, CANCEL, GOOD, Record


def _record(kind, started, ended, ok=True, ttft=None, status=200, error=""):
    return Record(kind, soak.KINDS[kind][0], started, ended, ok, status, ttft, 3, error=error)


def test_mix_without_the_ingress_drops_its_kinds_and_keeps_the_weights():
    kinds = soak.kinds_for(ingress=False)
    assert not any(name.startswith("ingress") for name in kinds)
    assert {"grpc_stream", "http_sse", "http_generate", "http_sse_cancel", "grpc_cancel", "bad"} == set(kinds)
    rng = random.Random(1)
    drawn = [soak.pick_kind(rng, soak.kinds_for(ingress=True)) for _ in range(3000)]
    assert set(drawn) == set(soak.KINDS)
    assert drawn.count("http_sse") > drawn.count("grpc_cancel")  # weights 3 vs 1


def test_questions_start_with_the_seed_demo_and_repeat_none():
    assert soak.SOAK_QUESTIONS[:3] == ["Describe the body of water in Utah",
                                       "Tell me as much as you can about the robbery",
                                       "Did Phileas Fogg really rob the bank?"]
    assert len(set(soak.SOAK_QUESTIONS)) == len(soak.SOAK_QUESTIONS)


def test_per_kind_counts_errors_and_takes_percentiles_of_ok_requests_only():
    records = [_record("http_sse", 0, 1, ttft=0.5), _record("http_sse", 0, 3, ttft=1.5),
               _record("http_sse", 0, 100, ok=False, status=500, error="boom\n| more"),
               _record("bad", 1, 1.1, status=400), _record("bad", 1, 1.2, ok=False, status=500, error="x")]
    rows = {r["kind"]: r for r in soak.per_kind(records)}
    sse = rows["http_sse"]
    assert (sse["requests"], sse["ok"], sse["errors"]) == (3, 2, 1)
    assert sse["latency_p50_ms"] == 2000 and sse["ttft_p50_ms"] == 1000
    assert sse["statuses"] == "200: 2, 500: 1"
    assert sse["first_error"] == "boom / more"  # one table-safe line
    assert list(rows) == ["http_sse", "bad"]  # in the mix's order
    assert soak.error_counts(records) == {GOOD: 1, CANCEL: 0, BAD: 1}


def test_per_bucket_groups_by_end_time_and_keeps_empty_intervals():
    records = [_record("grpc_stream", 0, 10, ttft=1), _record("grpc_stream", 5, 50, ttft=2),
               _record("grpc_cancel", 0, 20), _record("http_generate", 100, 170),
               _record("bad", 130, 130.1, ok=False, status=500)]
    rows = soak.per_bucket(records, 60, end_s=200)
    assert [r["good"] for r in rows] == [2, 0, 1, 0]
    assert rows[0]["p50_ms"] == 27500 and rows[0]["cancelled"] == 1 and rows[0]["ttft_p99_ms"] > 1000
    assert rows[2]["other_errors"] == 1 and rows[2]["good_errors"] == 0
    assert rows[1]["p50_ms"] != rows[1]["p50_ms"]  # NaN: no good request ended then


def _samples(series, label="stub:retriever", pid=7, group="triton"):
    return [{"t_s": t, "group": group, "label": label, "pid": pid, "rss_mib": rss, "fds": fds, "threads": 5,
             "deleted_open": 0} for t, rss, fds in series]


def test_process_rows_measure_growth_from_the_end_of_the_warm_up_to_the_end_of_the_load():
    samples = _samples([(0, 50, 4), (30, 100, 6), (60, 102, 6), (90, 104, 7), (95, 80, 40)])  # 95: after drain
    samples += _samples([(0, 200, 80), (30, 200, 80), (60, 300, 100), (90, 220, 200)], "tritonserver", 1)
    rows = {r["label"]: r for r in soak.process_rows(samples, warmup_s=30, load_end_s=90)}
    retriever = rows["stub:retriever"]
    assert (retriever["rss_start_mib"], retriever["rss_end_mib"]) == (100, 104)
    assert abs(retriever["rss_growth_pct"] - 4.0) < 1e-9 and retriever["rss_verdict"] == "met"
    assert retriever["rss_after_drain_mib"] == 80 and retriever["rss_max_mib"] == 104
    assert (retriever["fds_start"], retriever["fds_end"], retriever["fds_verdict"]) == (6, 7, "met")
    triton = rows["tritonserver"]
    assert triton["rss_verdict"] == "MISSED" and triton["fds_verdict"] == "MISSED"  # +10%, 80 -> 200 fds
    assert list(rows) == ["tritonserver", "stub:retriever"]


def test_process_rows_flag_a_process_that_appears_late_or_goes_away():
    samples = _samples([(0, 50, 4), (60, 50, 4), (120, 50, 4)], "stub:rag", 1)
    samples += _samples([(60, 50, 4), (120, 50, 4)], "stub:generator", 2)  # restarted?
    samples += _samples([(0, 50, 4), (60, 50, 4)], "stub:embedder", 3)  # gone
    rows = {r["label"]: r for r in soak.process_rows(samples, warmup_s=30, load_end_s=120)}
    assert rows["stub:rag"]["notes"] == ""
    assert "first seen" in rows["stub:generator"]["notes"]
    assert "gone" in rows["stub:embedder"]["notes"]


def test_fd_threshold():
    assert soak.fd_growth_ok(10, 18) and not soak.fd_growth_ok(10, 19)
    assert soak.fd_growth_ok(200, 220) and not soak.fd_growth_ok(200, 221)
    assert not soak.fd_growth_ok(None, 3)


def _targets(records, gauge=0.0, publishes=None, growth=1.0, fds=(6, 6)):
    processes = [{"group": "triton", "label": "stub:rag", "pid": 1, "rss_growth_pct": growth,
                  "rss_verdict": "met" if growth < 5 else "MISSED", "fds_start": fds[0], "fds_end": fds[1],
                  "fds_verdict": "met" if soak.fd_growth_ok(*fds) else "MISSED"},
                 {"group": "client", "label": "soak client", "pid": 2, "rss_growth_pct": 50.0,
                  "rss_verdict": "MISSED", "fds_start": 1, "fds_end": 99, "fds_verdict": "MISSED"}]
    rows = soak.targets(records, processes, gauge, publishes if publishes is not None else
                        [{"rc": 0, "swap_delay_s": 0.5}])
    return {r["target"].split(" ")[0] + " " + r["target"].split(" ")[2]: r["verdict"] for r in rows}


def test_targets_met_and_missed():
    ok = [_record("http_sse", 0, 1), _record("grpc_cancel", 0, 1), _record("bad", 0, 1, status=401)]
    verdicts = _targets(ok)
    assert set(verdicts.values()) == {"met"}  # the client's own growth is not a target
    verdicts = _targets([*ok, _record("http_generate", 0, 1, ok=False, status=500)], gauge=1.0,
                        publishes=[{"rc": 0, "swap_delay_s": 0.5}, {"rc": 1}], growth=5.0, fds=(6, 20))
    assert list(verdicts.values()) == ["MISSED", "met", "met", "MISSED", "MISSED", "MISSED", "MISSED"]
    assert _targets(ok, gauge=None)[f"{soak.GAUGE} 0"] == "not measured"
    assert _targets([])["errors good"] == "not measured"


def test_parse_metric_sums_label_sets_and_ignores_longer_names():
    text = "\n".join([
        "# HELP tritonrag_generator_requests_in_flight Requests being generated",
        'tritonrag_generator_requests_in_flight{model="generator",version="1"} 2',
        'tritonrag_generator_requests_in_flight{model="generator_b",version="1"} 1',
        'tritonrag_generator_requests_in_flight_total{model="x"} 99',
        'tritonrag_retriever_index_version{model="retriever",instance="a"} 3',
        'tritonrag_retriever_index_version{model="retriever",instance="b"} 4',
    ])
    assert soak.parse_metric(text, soak.GAUGE) == 3
    assert soak.parse_metric(text, soak.INDEX_VERSION, "max") == 4
    assert soak.parse_metric(text, "tritonrag_nothing") is None
    assert soak.gauge_text(0.0) == "0" and soak.gauge_text(None) == "–"


def test_process_labels():
    assert soak.process_label("tritonserver", ["/opt/bin/tritonserver", "--model-repository=x"]) == "tritonserver"
    stub = ["/opt/backends/python/triton_python_backend_stub", "/work/main/model_repository/retriever/1/model.py",
            "prefix1_2", "1048576"]
    assert soak.process_label("triton_python_b", stub) == "stub:retriever"
    assert soak.process_label("python", ["python", "-m", "tritonrag.cli", "ingress", "--port", "1"]) == "ingress"
    assert soak.process_label("VLLM::EngineCor", ["VLLM::EngineCore"], "stub:generator") == \
        "stub:generator/VLLM::EngineCore"
    assert soak.process_label("python3", ["python3", "-c", "from multiprocessing.resource_tracker import main"],
                              "stub:generator") == "stub:generator/python-mp-resource_tracker"


def test_overlay_keeps_the_base_and_writes_valid_toml(tmp_path):
    base = tmp_path / "base.toml"
    base.write_text('home = "/h"\n[generator]\nmodel = "{home}/models/m"\n[ingress]\ncors_origins = ["a"]\n'
                    "[ingress.extra]\nx = 1\n")
    data = soak.overlay(base, {"retriever": {"index_dir": "/tmp/kb"}, "ingress": {"rate_limit_rpm": 0}})
    parsed = tomllib.loads(soak.toml_text(data, "test"))
    assert parsed["home"] == "/h" and parsed["generator"]["model"] == "{home}/models/m"
    assert parsed["retriever"]["index_dir"] == "/tmp/kb"
    assert parsed["ingress"] == {"cors_origins": ["a"], "rate_limit_rpm": 0, "extra": {"x": 1}}
    assert soak.overlay(None, {"server": {"startup_timeout_s": 1200}}) == {"server": {"startup_timeout_s": 1200}}


def test_generated_documents_differ():
    rng = random.Random(0)
    first, second = soak.soak_document(1, rng), soak.soak_document(2, rng)
    assert first != second and first.startswith("# Soak document 1")
