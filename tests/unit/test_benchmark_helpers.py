"""The benchmark suite's pure parts: percentiles, perf_analyzer parsing, target verdicts."""

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from common import fmt, markdown_table, percentile, questions
from perf_models import export_throughput, parse_csv, streaming_latencies
from report import best_served, target_rows


def test_percentile_interpolates_and_handles_edges():
    assert percentile([3.0, 1.0, 2.0], 50) == 2.0
    assert percentile([1.0, 2.0], 50) == 1.5
    assert percentile([5.0], 99) == 5.0
    assert percentile([], 50) != percentile([], 50)  # NaN


def test_table_cells_and_question_mix():
    assert fmt(None) == "–" and fmt(1234.5) == "1,234" and fmt(12.34) == "12.3" and fmt(0.123) == "0.12"
    assert markdown_table([{"a": 1, "b": 2.5}], ["a", "b"]).splitlines()[-1] == "| 1 | 2.50 |"
    assert questions(3, offset=1)[0] == "Tell me as much as you can about the robbery"


def test_parse_perf_analyzer_csv(tmp_path):
    path = tmp_path / "x.csv"
    path.write_text("Concurrency,Inferences/Second,p50 latency,p99 latency,Avg latency\n8,123.5,2000,9000,2500\n")
    row = parse_csv(path)
    assert row == {"infer_per_s": 123.5, "p50_ms": 2.0, "p99_ms": 9.0, "avg_ms": 2.5}


def test_streaming_export_latencies():
    # two requests sent at t=0 and t=1 s; rag's first response is the sources, text comes after
    requests = [
        {"timestamp": 0, "response_timestamps": [10_000_000, 50_000_000, 90_000_000],
         "response_outputs": [{"sources": "[]"}, {"text_output": "a"}, {"text_output": "b"}]},
        {"timestamp": 1_000_000_000, "response_timestamps": [1_020_000_000, 1_080_000_000],
         "response_outputs": [{"sources": "[]"}, {"text_output": "c"}]},
    ]
    out = streaming_latencies(requests)
    assert out["first_response_p50_ms"] == pytest.approx(15.0)
    assert out["ttft_p50_ms"] == pytest.approx(65.0)
    assert out["responses_per_request"] == 2.5
    assert export_throughput(requests)["infer_per_s"] == pytest.approx(2 / 1.08)


def test_targets_compare_with_the_baseline_and_limits():
    results = {
        "rag tritonrag": [{"concurrency": 8, "req_per_s": 3.0, "ttft_p50_ms": 100.0}],
        "rag ray-serve": [{"concurrency": 8, "req_per_s": 1.5, "ttft_p50_ms": 400.0}],
        "limits": [{"component": "embedder", "limit": 100.0}, {"component": "retriever", "limit": 1000.0}],
        "perf": [{"model": "embedder", "protocol": "grpc", "concurrency": 8, "infer_per_s": 95.0},
                 {"model": "embedder", "protocol": "http", "concurrency": 8, "infer_per_s": 80.0},
                 {"model": "retriever", "protocol": "grpc", "concurrency": 8, "infer_per_s": 500.0},
                 {"model": "retriever", "protocol": "http", "concurrency": 8, "error": "exit 124"}],
        "overhead": {"overhead": [{"variant": "committed", "config": "http-generate max_tokens=1",
                                   "overhead_p50_ms": 2.5, "inproc_p50_ms": 0.4}]},
    }
    rows = {r["target"].split(" (")[0]: r for r in target_rows(results)}
    assert rows["RAG throughput at c=8 >= 3x Ray Serve"]["ratio"] == 2.0
    assert rows["RAG throughput at c=8 >= 3x Ray Serve"]["verdict"] == "**missed**"
    assert rows["RAG p50 TTFT at c=8 <= 1/3 of Ray Serve"]["verdict"] == "met"
    assert best_served(results["perf"], "embedder")["protocol"] == "grpc"
    assert rows["served embedder"]["verdict"] == "met"
    assert rows["served retriever"]["verdict"] == "**missed**"
    assert rows["orchestration overhead p50 <= 3 ms"]["verdict"] == "met"
