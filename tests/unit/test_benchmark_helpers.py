"""The benchmark suite's pure parts: percentiles, perf_analyzer parsing, target verdicts."""

import sys
from collections import Counter
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from common import fmt, markdown_table, percentile, questions
from perf_models import PLANS, export_throughput, parse_csv, streaming_latencies
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


def test_every_served_model_has_a_perf_plan():
    """perf_analyzer profiles every model of the contract (the reranker, added without a plan, stopped the suite's
    perf step with a KeyError)."""
    from tritonrag.serving.contract import MODELS

    assert set(PLANS) == set(MODELS)


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


def test_ingress_overhead_sse_lines_and_the_request_both_sides_answer():
    from ingress_overhead import chat_body, sse_event

    from tritonrag.ingress.translate import parse_chat, to_rag_call

    assert sse_event(b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n') == (False, "")
    assert sse_event(b'data: {"choices":[{"index":0,"delta":{"content":"Fogg"}}]}\n') == (False, "Fogg")
    assert sse_event(b'data: {"choices":[],"usage":{"total_tokens":3}}\n') == (False, "")
    assert sse_event(b"data: [DONE]\n") == (True, "")
    assert sse_event(b"\n") == (False, "") and sse_event(b": keep-alive\n") == (False, "")
    with pytest.raises(RuntimeError, match="error event"):
        sse_event(b'data: {"error":{"message":"boom"}}\n')
    call = to_rag_call(parse_chat(chat_body("Who is Aouda?", 16)), 64, 32000)
    assert call.question == "Who is Aouda?" and call.stream and call.parameters["max_tokens"] == 16


def test_ingress_overhead_schedule_interleaves_and_alternates_sides():
    from ingress_overhead import schedule

    plan = schedule(2, [16, 1], [1, 64])
    assert len(plan) == 2 * 2 * 2 * 2
    assert plan[:4] == [(0, 16, 1, "direct"), (0, 16, 1, "ingress"), (0, 16, 64, "ingress"), (0, 16, 64, "direct")]
    assert plan[8:10] == [(1, 16, 1, "ingress"), (1, 16, 1, "direct")]  # the next round starts the other way
    sides = Counter(side for *_, side in plan)
    assert sides["direct"] == sides["ingress"] == 8


def test_ingress_overhead_window_stagger_and_summaries():
    from ingress_overhead import Cell, Sample, compare, in_window, per_token_us, stagger_s, summarise, window_s

    records = [(0.0, Sample(0.1, 0.2, 0.5, 1)), (1.0, Sample(0.1, 0.2, 0.5, 1)), (2.0, Sample(0.1, 0.2, 2.0, 1))]
    assert [r.total_s for r in in_window(records, 1.0, 3.0)] == [0.5]  # ended at 0.5 and 4.0: outside
    assert stagger_s(1, 50.0) == 0.0 and stagger_s(16, None) == 0.0 and stagger_s(64, 32.0) == 2.0
    assert window_s(4.0, []) == 4.0 and window_s(4.0, [1.0, 6.0, 7.0]) == 6.0 and window_s(1.0, [9.0]) == 3.0

    def cells(side, total_s, n, window, rounds=2):
        return [Cell(1, r, side, 16, 8, [Sample(total_s / 2, total_s / 2, total_s, 16)] * n, window,
                     {"triton": 0.5 * n, "ingress": 0.1 * n if side == "ingress" else 0.0, "client": 0.1 * n})
                for r in range(rounds)]

    direct = summarise(cells("direct", 0.010, 100, 1.0))
    ingress = summarise(cells("ingress", 0.0115, 96, 1.0))
    assert direct["requests"] == 200 and direct["req_per_s"] == pytest.approx(100.0)
    assert direct["total_p50_ms"] == pytest.approx(10.0) and direct["cpu_triton_ms_per_req"] == pytest.approx(500)
    assert ingress["cpu_ingress_ms_per_req"] == pytest.approx(100)
    row = compare(direct, ingress)
    assert row["added_total_p50_ms"] == pytest.approx(1.5) and row["p50_target"] == "met"
    assert row["throughput_ratio"] == pytest.approx(0.96) and row["throughput_target"] == "met"
    assert row["ratio_min"] == row["ratio_max"] == pytest.approx(0.96)
    assert row["cpu_predicted_ratio"] == pytest.approx(600 / 700)  # (triton + client) / (triton + ingress + client)
    slower = compare(direct, summarise(cells("ingress", 0.013, 90, 1.0)))
    assert slower["p50_target"] == "MISSED" and slower["throughput_target"] == "MISSED"
    rows = [{"workers": 1, "concurrency": 1, "max_tokens": 16, "added_total_p50_ms": 2.5},
            {"workers": 1, "concurrency": 1, "max_tokens": 1, "added_total_p50_ms": 1.0}]
    assert per_token_us(rows) == [{"workers": 1, "concurrency": 1, "max_tokens": 16, "fixed_added_p50_ms": 1.0,
                                   "per_token_added_p50_us": pytest.approx(100.0)}]


def test_ingress_overhead_profile_summary_of_collapsed_stacks():
    from ingress_overhead import collapsed_top

    site = "/v/lib/python3.11/site-packages"
    lines = [f'process 7:"python";run ({site}/uvicorn/main.py:10);handle (/w/src/tritonrag/ingress/app.py:5);'
             f"loads (/p/lib/python3.11/json/decoder.py:353) 3",
             f'process 7:"python";run ({site}/uvicorn/main.py:10);handle (/w/src/tritonrag/ingress/app.py:9) 1',
             "garbage"]
    top = collapsed_top(lines)
    assert top["own"][0] == {"function": "loads (json/decoder.py)", "samples": 3, "share_pct": 75.0}
    assert top["packages"] == [{"package": "json", "samples": 3, "share_pct": 75.0},
                               {"package": "tritonrag.ingress", "samples": 1, "share_pct": 25.0}]
    assert top["ingress"] == [{"function": "handle (ingress/app.py)", "samples": 4, "share_pct": 100.0}]


def test_ingress_overhead_stacks_lose_their_path_prefixes():
    import sysconfig

    from ingress_overhead import ROOT, short_paths

    site, std = sysconfig.get_paths()["purelib"], sysconfig.get_paths()["stdlib"]
    line = f"run ({site}/uvicorn/main.py:10);loads ({std}/json/decoder.py:353);rag ({ROOT}/src/tritonrag/x.py:1) 2"
    assert short_paths(line) == "run (uvicorn/main.py:10);loads (json/decoder.py:353);rag (src/tritonrag/x.py:1) 2"


def test_ingress_overhead_paired_differences():
    from ingress_overhead import Cell, Sample, paired_added

    def cell(side, rnd, totals, c=1):
        return Cell(1, rnd, side, 16, c, [Sample(t / 2, t / 2, t, 1) for t in totals], sum(totals))

    direct = [cell("direct", 0, [0.010, 0.050, 0.012]), cell("direct", 1, [0.011])]
    ingress = [cell("ingress", 0, [0.011, 0.052, 0.013]), cell("ingress", 1, [0.015])]
    out = paired_added(direct, ingress)
    assert out["paired_n"] == 4
    assert out["paired_added_total_p50_ms"] == pytest.approx(1.5)  # of 1, 2, 1, 4
    assert out["paired_added_ttft_p50_ms"] == pytest.approx(0.75)
    unpaired = paired_added([cell("direct", 0, [0.01], c=16)], [cell("ingress", 0, [0.02], c=16)])
    assert unpaired["paired_n"] == 0 and unpaired["paired_added_total_p50_ms"] != unpaired["paired_added_total_p50_ms"]


def test_repeat_mix_shares_kinds_and_fresh_questions_per_level():
    from common import PARAPHRASE, REPEAT, PoolQuestion, load_repeat_pool, repeat_mix

    pool = [PoolQuestion(f"q{i}", (f"q{i} again", f"q{i} once more")) for i in range(60)]
    shares = (0.0, 0.3, 0.5, 0.7)
    mix = repeat_mix(pool, shares, 20, seed=3, gap=4)
    assert mix == repeat_mix(pool, shares, 20, seed=3, gap=4)  # seeded: every system gets the same sequence
    assert list(mix) == list(shares) and all(len(asks) == 20 for asks in mix.values())
    fresh_by_level = [{a.question for a in asks if a.kind == "fresh"} for asks in mix.values()]
    assert sum(map(len, fresh_by_level)) == len(set().union(*fresh_by_level))  # no fresh question in two levels
    originals = {q.question: q for q in pool}
    for share, asks in mix.items():
        again = [a for a in asks if a.kind in (REPEAT, PARAPHRASE)]
        assert len(again) == round(share * 20) and asks[0].kind == "fresh"
        assert abs(sum(a.kind == REPEAT for a in again) - sum(a.kind == PARAPHRASE for a in again)) <= 1
        for position, ask in enumerate(asks):
            if ask.kind == "fresh":
                continue
            source = asks[ask.source]
            assert ask.source < position and source.kind == "fresh"
            if ask.kind == REPEAT:
                assert ask.question == source.question
            else:
                assert ask.question in originals[source.question].paraphrases
        paraphrases = [a.question for a in asks if a.kind == PARAPHRASE]
        assert len(paraphrases) == len(set(paraphrases))  # a paraphrase is sent once per level
    # with a gap, the first gap requests (sent at once) are fresh where the rest has room for the repeats, and
    # sources are settled ones (at least gap earlier)
    for asks in mix.values():
        assert all(a.kind == "fresh" for a in asks[:4])
        assert all(i - a.source >= 4 for i, a in enumerate(asks) if a.kind == REPEAT)
    crowded = repeat_mix(pool, (0.9,), 10, gap=4)[0.9]  # 9 repeats, 6 places after the gap: 3 before it
    assert sum(a.kind != "fresh" for a in crowded[:4]) == 3 and crowded[0].kind == "fresh"
    with pytest.raises(ValueError, match="too few"):
        repeat_mix(pool[:30], shares, 20)
    with pytest.raises(ValueError, match="share"):
        repeat_mix(pool, (1.0,), 20)
    committed = load_repeat_pool()  # the committed pool covers full mode's sweep (48 a level)
    assert len(repeat_mix(committed, shares, 48, seed=18, gap=16)[0.7]) == 48


def test_level_rows_count_kinds_and_cache_outcomes():
    from rag_load import Level, Sample

    samples = [Sample("a", True, 0.1, 1.0, 3, kind="fresh", cache="miss"),
               Sample("a", True, 0.01, 0.02, 3, kind="repeat", cache="exact"),
               Sample("a'", True, 0.02, 0.03, 3, kind="paraphrase", cache="semantic"),
               Sample("b", False, 0.0, 1.0, error="HTTP 500", kind="fresh")]
    row = Level("tritonrag", 4, 2.0, samples, share=0.5).row()
    assert row["share"] == 0.5 and row["requests"] == 3 and row["errors"] == 1 and row["req_per_s"] == 1.5
    assert (row["repeats"], row["paraphrases"]) == (1, 1)
    assert (row["cache_exact"], row["cache_semantic"], row["cache_miss"], row["cache_hits"]) == (1, 1, 1, 2)
    plain = Level("ray-serve", 4, 2.0, [Sample("a", True, 0.1, 1.0)]).row()
    assert "share" not in plain and "cache_hits" not in plain


def test_sweep_and_engine_targets():
    from report import engine_fractions, sweep_comparison

    ours = [{"share": 0.0, "concurrency": 16, "req_per_s": 1.4, "ttft_p50_ms": 900.0, "cache_hits": 0},
            {"share": 0.5, "concurrency": 16, "req_per_s": 2.0, "ttft_p50_ms": 200.0, "cache_hits": 20}]
    theirs = [{"share": 0.0, "concurrency": 16, "req_per_s": 1.0, "ttft_p50_ms": 1000.0},
              {"share": 0.5, "concurrency": 16, "req_per_s": 1.0, "ttft_p50_ms": 900.0}]
    comparison = sweep_comparison(ours, theirs)
    assert [r["throughput_ratio"] for r in comparison] == pytest.approx([1.4, 2.0])
    assert comparison[1]["ttft_ratio"] == pytest.approx(200 / 900)
    rag = [{"concurrency": 8, "req_per_s": 0.9, "ttft_p50_ms": 1100.0},
           {"concurrency": 16, "req_per_s": 1.0, "ttft_p50_ms": 1500.0}]
    engine = [{"concurrency": 8, "req_per_s": 0.95, "ttft_p50_ms": 1000.0},
              {"concurrency": 16, "req_per_s": 1.0, "ttft_p50_ms": 1000.0}, {"concurrency": 4, "req_per_s": 1.0}]
    fractions = engine_fractions(rag, engine)
    assert [r["concurrency"] for r in fractions] == [8, 16]
    assert fractions[0]["throughput_fraction"] == pytest.approx(0.9 / 0.95) and fractions[1]["ttft_ratio"] == 1.5
    rows = {r["target"]: r for r in target_rows({"repeat tritonrag": ours, "repeat ray-serve": theirs,
                                                  "rag tritonrag": rag, "engine": engine})}
    assert rows[">= 1.3x Ray Serve throughput on unique questions (0%), c=16"]["verdict"] == "met"
    assert rows[">= 3x Ray Serve throughput at 50% repeats, c=16"]["verdict"] == "**missed**"
    assert rows["TTFT p50 <= 1/3 of Ray Serve at 50% repeats, c=16"]["verdict"] == "met"
    assert rows["end-to-end TTFT p50 at c=8 <= 1.2x the engine's"]["verdict"] == "met"
    assert rows["end-to-end TTFT p50 at c=16 <= 1.2x the engine's"]["verdict"] == "**missed**"
    assert rows["end-to-end throughput at c=8 >= 95% of the engine's"]["verdict"] == "**missed**"  # 0.947
    assert rows["end-to-end throughput at c=16 >= 95% of the engine's"]["verdict"] == "met"


def test_engine_limit_plan_and_suite_parameters():
    from engine_limit import parse_plan

    assert parse_plan("8:16, 16:32") == [(8, 16), (16, 32)]
    for bad in ("", "8", "0:4", "4:0"):
        with pytest.raises(ValueError):
            parse_plan(bad)
    import suite

    if suite.HAS_CACHE:  # the cache bypassed in every measurement but the sweep, whose levels have tenants of their own
        assert suite.pipeline_parameters("tritonrag") == {"cache": False}
        run = suite.Run(suite.QUICK, Path("/nonexistent"), Path("/nonexistent/config.toml"), run_id="r1")
        assert suite.sweep_parameters(run, "tritonrag", 0.3) == {"cache": True, "tritonrag_cache_tenant": "suite-r1-30"}
        assert suite.sweep_parameters(run, "tritonrag", 0.3) != suite.sweep_parameters(run, "tritonrag", 0.5)
    assert suite.pipeline_parameters("ray-serve") == {} and suite.sweep_parameters(None, "ray-serve", 0.5) == {}
