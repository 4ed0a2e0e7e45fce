"""Answer quality of the served RAG pipeline on a question set about *Around the World in Eighty Days* (issue 14).

For each question of benchmarks/answer_quality_questions.yaml it measures:
  - retrieval: the rank of the first passage holding the evidence, asked of the served `retriever` with the
    served `embedder`'s query vector (gRPC, tritonclient), reported as evidence hit@1/@4/@16;
  - the answer of the served `rag` model (HTTP generate, stream off, tritonrag_client.RagClient): correct when it
    contains the expected strings (case, punctuation and number forms ignored), and whether it abstains;
  - citation validity: of the answers that cite passages ([n], listed in the response's `citations`), the share
    whose cited passages hold the evidence;
  - JSON-schema validity: the first --json-questions answerable questions asked again with the `extract` template
    and a bounded JSON schema; valid when the answer parses and validates against it;
  - TTFT and output tokens/s: answers are asked streamed (HTTP SSE) unless --no-stream (HTTP generate); --both
    asks both ways and checks they agree.
Per model (--model, or the settings' [generator] model) and flow (--flow rag | qa-checked).

It starts its own Triton on the committed model_repository/ on free ports, or uses a running server (--url,
--grpc-url). It writes summary.md (command, machine, commit), summary.json and questions.csv under
--out/MODEL/FLOW, and --out/README.md, the table of every model and flow measured so far.

Examples:
    .venv/bin/python benchmarks/answer_quality.py                      # the full set, its own server
    .venv/bin/python benchmarks/answer_quality.py --flow qa-checked    # with the critic pass
    .venv/bin/python benchmarks/answer_quality.py --model smollm2-135m-instruct --quick
    .venv/bin/python benchmarks/answer_quality.py --url 127.0.0.1:8000 --grpc-url 127.0.0.1:8001 --top-k 8
    .venv/bin/python benchmarks/answer_quality.py --check              # verify the evidence strings, no server
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common
from answer_quality_scoring import (
    QUESTIONS_FILE,
    Question,
    abstained,
    check_evidence,
    evidence_rank,
    load_questions,
    local_chunks,
    quick_subset,
)
from common import ROOT

from tritonrag.settings import CONFIG_ENV

DEFAULT_OUT = ROOT / "benchmarks" / "results" / "answer_quality"
HIT_KS = (1, 4, 16)
ANSWER_CHARS = 120  # answers are kept this short in the results: a base model may echo the book's text
# The structured-output check: bounded strings and numbers (a weak model can loop inside an unbounded number).
ANSWER_SCHEMA = {
    "type": "object", "additionalProperties": False, "required": ["answer", "passages"],
    "properties": {"answer": {"type": "string", "maxLength": 300},
                   "passages": {"type": "array", "maxItems": 4, "items": {"type": "integer", "minimum": 1,
                                                                        "maximum": 16}}},
}
# --- measuring through the served models ------------------------------------------------------------------------
class ServedRetrieval:
    """The served `embedder` then the served `retriever` (its default mode: the question's vector and text), over
    gRPC, as the `rag` model calls them (without reranking)."""

    def __init__(self, url: str) -> None:
        import tritonclient.grpc as grpcclient

        self.grpc = grpcclient
        self.client = grpcclient.InferenceServerClient(url)

    def search(self, question: str, top_k: int) -> tuple[list[int], list[str]]:
        import numpy as np

        from tritonrag.serving.contract import EMBEDDER, RETRIEVER

        g = self.grpc
        text = g.InferInput(EMBEDDER.text, [1, 1], "BYTES")
        text.set_data_from_numpy(np.array([[question.encode()]], dtype=np.object_))
        vector = self.client.infer(EMBEDDER.model, [text]).as_numpy(EMBEDDER.embedding).astype(np.float32)
        inputs = [g.InferInput(RETRIEVER.embedding, list(vector.shape), "FP32"), g.InferInput(RETRIEVER.top_k,
                                                                                               [1, 1], "INT32"),
                  g.InferInput(RETRIEVER.query, [1, 1], "BYTES")]  # the text too: the retriever's default mode
        inputs[0].set_data_from_numpy(vector)
        inputs[1].set_data_from_numpy(np.array([[top_k]], np.int32))
        inputs[2].set_data_from_numpy(np.array([[question.encode()]], dtype=np.object_))
        result = self.client.infer(RETRIEVER.model, inputs, outputs=[
            g.InferRequestedOutput(n) for n in (RETRIEVER.chunk_ids, RETRIEVER.texts)])
        texts = [t.decode() if isinstance(t, bytes) else str(t) for t in result.as_numpy(RETRIEVER.texts).reshape(-1)]
        return [int(i) for i in result.as_numpy(RETRIEVER.chunk_ids).reshape(-1)], texts


@dataclass
class Generation:
    text: str = ""
    source_ids: list[int] = field(default_factory=list)
    cited_ids: list[int] = field(default_factory=list)
    finish_reason: str | None = None
    total_s: float = float("nan")
    ttft_s: float = float("nan")
    stream_s: float = float("nan")
    stream_text: str | None = None


def generate(client: Any, question: str, parameters: dict[str, Any], stream: bool, both: bool = False) -> Generation:
    """The answer of one request: streamed (HTTP SSE: TTFT and total time) with ``stream``, else HTTP generate;
    with ``both``, the HTTP generate answer and then a streamed request (to compare them, twice the time)."""
    out = Generation()
    if both or not stream:
        started = time.perf_counter()
        answer = client.ask(question, **parameters)
        out = Generation(answer.text, [int(s["chunk_id"]) for s in answer.sources],
                         [int(c["chunk_id"]) for c in answer.citations], answer.finish_reason,
                         time.perf_counter() - started)
    if stream:
        from tritonrag_client import RagAnswer

        started, streamed = time.perf_counter(), RagAnswer()
        for event in client.stream(question, **parameters):
            if event.text and not streamed.text:
                out.ttft_s = time.perf_counter() - started
            streamed.add(event)
        out.stream_s, out.stream_text = time.perf_counter() - started, streamed.text
        if not both:
            out.text, out.total_s, out.finish_reason = streamed.text, out.stream_s, streamed.finish_reason
            out.source_ids = [int(s["chunk_id"]) for s in streamed.sources]
            out.cited_ids = [int(c["chunk_id"]) for c in streamed.citations]
    return out


def tokens_per_s(n_tokens: int, ttft_s: float, total_s: float) -> float:
    """Output tokens per second after the first token (NaN with fewer than two tokens)."""
    decode_s = total_s - ttft_s
    return (n_tokens - 1) / decode_s if n_tokens > 1 and decode_s > 0 else float("nan")


def score_row(q: Question, ids: list[int], texts: list[str], gen: Generation, count_tokens: Any,
              top_k: int) -> dict[str, Any]:
    """One CSV row: retrieval rank, correctness, abstention, citations and timings of one question."""
    rank = evidence_rank(texts, q.evidence_any) if q.answerable else None
    n_tokens = count_tokens(gen.stream_text if gen.stream_text is not None else gen.text)
    by_id = dict(zip(ids, texts))
    cited = [by_id.get(i, "") for i in gen.cited_ids]
    gave_up = gen.finish_reason == "abstained" or abstained(gen.text)
    return {
        "id": q.id, "part": q.part, "answerable": q.answerable, "seed": q.seed, "question": q.question,
        "evidence_rank": rank, **{f"hit@{k}": (rank is not None and rank <= k) if q.answerable else None
                                  for k in HIT_KS},
        "context_hit": (rank is not None and rank <= top_k) if q.answerable else None,
        "sources_match_retrieval": gen.source_ids == ids[:top_k],
        "correct": q.is_correct(gen.text) if q.answerable else None, "abstained": gave_up,
        "finish_reason": gen.finish_reason, "cited": len(cited),
        # the cited passages hold the evidence (answers that cite, of answerable questions)
        "citation_valid": evidence_rank(cited, q.evidence_any) is not None if q.answerable and cited else None,
        "schema_valid": None,
        "answer_s": round(gen.total_s, 3), "ttft_s": round(gen.ttft_s, 3), "output_tokens": n_tokens,
        "tokens_per_s": round(tokens_per_s(n_tokens, gen.ttft_s, gen.stream_s), 2),
        "stream_same_answer": None if gen.stream_text is None or gen.total_s == gen.stream_s
        else gen.stream_text == gen.text,
        "source_chunk_ids": " ".join(map(str, gen.source_ids)), "answer": " ".join(gen.text.split())[:ANSWER_CHARS],
    }


def token_counter(model: str) -> Any:
    """Counts tokens with the generator's tokenizer where it loads locally, else whitespace words (said so)."""
    try:
        from transformers import AutoTokenizer

        from tritonrag.settings import resolve_model_ref

        tokenizer = AutoTokenizer.from_pretrained(resolve_model_ref(model))
        return lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])
    except Exception as exc:
        print(f"tokenizer of {model} not loaded ({exc}); counting words instead", file=sys.stderr)
        return lambda text: len(text.split())


# --- the report -------------------------------------------------------------------------------------------------
def _rate(rows: Sequence[dict[str, Any]], key: str) -> float:
    values = [bool(r[key]) for r in rows if r[key] is not None]
    return sum(values) / len(values) if values else float("nan")


def summarize(rows: Sequence[dict[str, Any]], model: str, flow: str) -> dict[str, Any]:
    """The benchmark's numbers for one model and flow."""
    answerable = [r for r in rows if r["answerable"]]
    unanswerable = [r for r in rows if not r["answerable"]]
    ttft = [r["ttft_s"] for r in rows if r["ttft_s"] == r["ttft_s"]]
    rates = [r["tokens_per_s"] for r in rows if r["tokens_per_s"] == r["tokens_per_s"]]
    return {
        "model": model, "flow": flow, "answerable": len(answerable), "unanswerable": len(unanswerable),
        **{f"hit@{k}": _rate(answerable, f"hit@{k}") for k in HIT_KS}, "context_hit": _rate(answerable, "context_hit"),
        "correct": _rate(answerable, "correct"),
        "seed_correct": f"{sum(bool(r['correct']) for r in answerable if r['seed'])}/"
                        f"{sum(r['seed'] for r in answerable)}",
        "false_abstention": _rate(answerable, "abstained"), "abstention": _rate(unanswerable, "abstained"),
        "citing": _rate([{"c": bool(r["cited"])} for r in answerable], "c"),
        "citation_validity": _rate(answerable, "citation_valid"), "schema_validity": _rate(rows, "schema_valid"),
        "schema_checked": sum(r["schema_valid"] is not None for r in rows),
        **common.latency_summary(ttft, "ttft_"), **common.latency_summary([r["answer_s"] for r in rows], "answer_"),
        "tokens_per_s": statistics.median(rates) if rates else float("nan"),
        "sources_match_retrieval": _rate(rows, "sources_match_retrieval"),
    }


SUMMARY_COLUMNS = ("model", "flow", "answerable", "hit@1", "hit@4", "hit@16", "correct", "seed_correct",
                   "false_abstention", "unanswerable", "abstention", "citing", "citation_validity",
                   "schema_validity", "ttft_p50_ms", "answer_p50_ms", "tokens_per_s")
SUMMARY_HEADERS = ("model", "flow", "answerable", "evidence hit@1", "hit@4", "hit@16", "correct", "seed correct",
                   "false abstention", "unanswerable", "abstained", "answers citing", "citation validity",
                   "JSON-schema validity", "TTFT p50 ms", "answer p50 ms", "tokens/s (median)")


def by_part(rows: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    parts: dict[str, list[dict[str, Any]]] = {}
    for r in sorted(rows, key=lambda r: r["seed"]):  # the parts in the book's order, the seed's questions last
        if r["answerable"]:
            parts.setdefault(r["part"], []).append(r)
    return [{"part": p, "n": len(rs), "hit@4": _rate(rs, "hit@4"), "hit@16": _rate(rs, "hit@16"),
             "correct": _rate(rs, "correct")} for p, rs in parts.items()]


METHOD = (
    "Retrieval: the served `embedder`'s query vector searched by the served `retriever` (gRPC), 16 passages; a "
    "hit@k is a passage holding one of the question's evidence strings among the first k. Answers: the served `rag` "
    "model (HTTP generate, stream off); correct when every expected group of strings occurs (case, punctuation and "
    "number forms ignored). An answer abstains when rag says so (finish_reason `abstained`: weak evidence, or the "
    "qa-checked critic) or by its phrases (\"do not contain\", \"no information\", ...). Citation validity: of the "
    "answerable questions' answers that cite passages, those whose cited passages hold an evidence string. JSON-schema "
    "validity: answers of the `extract` template with a bounded schema (ANSWER_SCHEMA) that parse and validate. TTFT "
    "and tokens/s (output tokens after the first, counted by the generator's tokenizer) come from the streamed "
    "request (HTTP SSE); for qa-checked the first text comes once the answer is checked."
)


def render(summary: dict[str, Any], rows: Sequence[dict[str, Any]], context: dict[str, Any]) -> str:
    """summary.md: what was run, on what, the numbers, the retrieval misses and every question."""
    misses = [f"`{r['id']}` (rank {r['evidence_rank'] or '> 16'})" for r in rows
              if r["answerable"] and not r["context_hit"]]
    per_question = [{**r, "rank": r["evidence_rank"] or "–", "answer": r["answer"].replace("|", "/")[:80]}
                    for r in rows]
    return "\n".join([
        "# Answer quality on *Around the World in Eighty Days*", "",
        f"Command: `{context['command']}`  ", f"Commit: `{context['commit']}`; {context['date']}  ",
        f"Generator: `{summary['model']}` ({context['engine']} engine), flow `{summary['flow']}`, template "
        f"`{context['template']}`, top_k {context['top_k']}, max_tokens {context['max_tokens']}, greedy "
        f"(the server's defaults where not given); server: {context['server']}", "",
        common.machine_markdown(context["machine"]), "", METHOD, "",
        common.markdown_table([summary], SUMMARY_COLUMNS, SUMMARY_HEADERS), "",
        f"Issue 14's targets: ≥ 60% correct (now {summary['correct']:.0%}), ≥ 80% of unanswerable abstained (now "
        f"{summary['abstention']:.0%}), 100% schema-valid JSON (now {summary['schema_validity']:.0%} of "
        f"{summary['schema_checked']}). The `rag` sources equal the "
        f"served retrieval's top {context['top_k']} for {summary['sources_match_retrieval']:.0%} of the questions.",
        "", "## By part of the book", "",
        common.markdown_table(by_part(rows), ("part", "n", "hit@4", "hit@16", "correct")),
        "", f"Evidence not among the {context['top_k']} passages given to the generator: "
        + (", ".join(misses) or "none") + ".", "", "## Every question", "",
        f"Answers cut to 80 characters (the CSV keeps {ANSWER_CHARS}).", "",
        common.markdown_table(per_question, ("id", "rank", "correct", "abstained", "citation_valid", "schema_valid",
                                             "ttft_s", "answer"),
                              ("id", "evidence rank", "correct", "abstained", "citation valid", "JSON valid",
                               "TTFT s", "answer")), ""])


# --- running it -------------------------------------------------------------------------------------------------
def _commit() -> str:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True).stdout.strip()

    return git("rev-parse", "--short", "HEAD") + (" (with uncommitted changes)" if git("status", "--porcelain")
                                                  else "")


def check(questions: Sequence[Question]) -> list[str]:
    """The question set against the sample book and the local knowledge base ([] when both agree)."""
    from tritonrag.kb.sample import sample_corpus
    from tritonrag.settings import load_settings

    book = (sample_corpus() / "around_the_world.txt").read_text(encoding="utf-8", errors="replace")
    return check_evidence(questions, book, local_chunks(load_settings().index_dir))


def run(questions: Sequence[Question], http_url: str, grpc_url: str, args: argparse.Namespace,
        count_tokens: Any) -> list[dict[str, Any]]:
    from tritonrag_client import RagClient

    from tritonrag.generation.structured import StructuredOutput, check_answer

    client, retrieval = RagClient(http_url, "http"), ServedRetrieval(grpc_url)
    parameters = {k: v for k, v in (("top_k", args.top_k), ("max_tokens", args.max_tokens), ("flow", args.flow))
                  if v is not None}
    client.ask("warm-up question", max_tokens=4)
    rows, json_left = [], args.json_questions
    for n, q in enumerate(questions, 1):
        ids, texts = retrieval.search(q.question, max(HIT_KS))
        gen = generate(client, q.question, parameters, stream=not args.no_stream, both=args.both)
        rows.append(score_row(q, ids, texts, gen, count_tokens, args.top_k))
        r = rows[-1]
        if args.flow != "rag":  # a checked answer arrives whole, once checked: no decoding rate to see
            r["tokens_per_s"] = float("nan")
        if q.answerable and json_left > 0:  # the same question as structured output
            json_left -= 1
            answer = client.ask(q.question, **{**parameters, "template": "extract", "json_schema": ANSWER_SCHEMA,
                                               "max_tokens": 160})
            reason = check_answer(answer.text, StructuredOutput(ANSWER_SCHEMA))
            r["schema_valid"], r["schema_problem"] = reason is None, reason or ""
            r["schema_finish_reason"] = answer.finish_reason
        print(f"[{n}/{len(questions)}] {q.id}: rank {r['evidence_rank']} correct {r['correct']} "
              f"abstained {r['abstained']} cites {r['citation_valid']} json {r['schema_valid']} "
              f"| {r['answer'][:70]!r}", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--questions", type=Path, default=QUESTIONS_FILE)
    parser.add_argument("--quick", action="store_true", help="the seed's questions, one per part, 3 unanswerable")
    parser.add_argument("--unanswerable", type=int, default=3, help="with --quick: how many unanswerable (default 3)")
    parser.add_argument("--url", help="HTTP host:port of a running server (else one is started)")
    parser.add_argument("--grpc-url", help="gRPC host:port of that server (default: the HTTP port + 1)")
    parser.add_argument("--top-k", type=int, default=4, help="passages per answer (default 4, the server's)")
    parser.add_argument("--max-tokens", type=int, help="default: the server's (96)")
    parser.add_argument("--no-stream", action="store_true", help="ask with HTTP generate (no TTFT, tokens/s)")
    parser.add_argument("--both", action="store_true",
                        help="ask with HTTP generate and again streamed, and compare the answers (twice the time)")
    parser.add_argument("--flow", default="rag", help="rag (default) or qa-checked")
    parser.add_argument("--model", help="a packaged model's name (tritonrag prepare-models --list) or a model "
                                        "folder; default: the settings' [generator] model")
    parser.add_argument("--json-questions", type=int, default=12,
                        help="answerable questions also asked for JSON (the extract template), default 12")
    parser.add_argument("--check", action="store_true", help="only verify the evidence strings, then exit")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    questions = load_questions(args.questions)
    try:
        problems = check(questions)
    except FileNotFoundError as exc:
        problems = [f"not checked: {exc}"]
    print("\n".join(problems) or f"question set checked: {len(questions)} questions, evidence in book and chunks")
    if args.check:
        sys.exit(1 if problems else 0)
    questions = quick_subset(questions, args.unanswerable) if args.quick else questions

    from tritonrag.deploy.server import Ports, TritonServer
    from tritonrag.settings import load_settings

    env = model_config(args.model, args.out) if args.model else {}
    settings, server = load_settings(env.get(CONFIG_ENV)), None
    if args.model and args.url:
        sys.exit("--model starts its own server with that model: leave out --url")
    if not args.url:
        server = TritonServer(common.REPOSITORY, settings.home, Ports.choose(0, 0, 0), env=env)
        server.start(settings.server.startup_timeout_s)
    http_url = args.url or server.http_url
    grpc_url = args.grpc_url or (server.grpc_url if server else _next_port(http_url))
    try:
        rows = run(questions, http_url, grpc_url, args, token_counter(settings.generator.model))
    finally:
        if server:
            server.stop()
    write_results(rows, args, settings, "its own tritonserver" if server else f"running at {http_url}")


def model_config(model: str, out: Path) -> dict[str, str]:
    """A TRITONRAG_CONFIG serving ``model`` (over the one already set, if any): a packaged model's folder, or a path;
    a model without a chat template (Gemma-3-270M) gets the completion_qa template."""
    import os
    import tomllib

    from tritonrag.generation.packaged_models import REGISTRY
    from tritonrag.prompts.chat_format import ChatFormat
    from tritonrag.settings import load_settings

    base = os.environ.get(CONFIG_ENV)
    raw = tomllib.loads(Path(base).read_text()) if base else {}
    folder = str(load_settings().home / "models" / model) if model in REGISTRY else model
    raw.setdefault("generator", {})["model"] = folder
    if ChatFormat.for_model(folder).template is None:
        raw.setdefault("prompt_builder", {})["template"] = "completion_qa"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f".config-{Path(folder).name}.toml"
    path.write_text("\n".join(f"[{section}]\n" + "\n".join(f"{k} = {json.dumps(v)}" for k, v in values.items())
                              for section, values in raw.items()) + "\n")
    return {CONFIG_ENV: str(path)}


def _next_port(url: str) -> str:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    return f"{host}:{int(port) + 1}"


def write_results(rows: list[dict[str, Any]], args: argparse.Namespace, settings: Any, server: str) -> None:
    model = Path(settings.generator.model).name
    summary = summarize(rows, model, args.flow)
    out = args.out / model / args.flow
    argv = [Path(sys.argv[0]).resolve().relative_to(ROOT).as_posix(), *sys.argv[1:]]
    context = {"command": " ".join([".venv/bin/python", *map(shlex.quote, argv)]), "commit": _commit(),
               "date": time.strftime("%Y-%m-%d %H:%M %Z"), "engine": settings.generator.engine,
               "template": settings.prompt_builder.template, "top_k": args.top_k,
               "max_tokens": args.max_tokens or settings.generator.max_tokens_default, "server": server,
               "machine": common.machine_description()}
    text = render(summary, rows, context)
    out.mkdir(parents=True, exist_ok=True)
    (out / "summary.md").write_text(text)
    common.write_json(out / "summary.json", {"summary": summary, "context": context, "questions": rows})
    common.write_csv(out / "questions.csv", rows)
    print(common.markdown_table([summary], SUMMARY_COLUMNS, SUMMARY_HEADERS))
    print(f"wrote {out}/summary.md, summary.json, questions.csv")
    write_index(args.out)


def write_index(root: Path) -> None:
    """root/README.md: one row per model and flow measured (each summary.json under root), with its command."""
    rows, commands = [], []
    for path in sorted(root.glob("*/*/summary.json")):
        data = json.loads(path.read_text())
        rows.append(data["summary"])
        commands.append(f"- `{data['summary']['model']}` / `{data['summary']['flow']}`: `{data['context']['command']}`"
                        f" (commit {data['context']['commit']}, {data['context']['date']}) — "
                        f"[details]({path.parent.relative_to(root).as_posix()}/summary.md)")
    (root / "README.md").write_text("\n".join([
        "# Answer quality, every model and flow measured", "", "Written by benchmarks/answer_quality.py after each "
        "run; each row's details (method, machine, every question) are in its folder.", "",
        common.markdown_table(rows, SUMMARY_COLUMNS, SUMMARY_HEADERS), "",
        "Targets (issue 14): ≥ 60% correct, ≥ 80% of unanswerable abstained, 100% schema-valid JSON.", "",
        *commands, ""]))


if __name__ == "__main__":
    main()
