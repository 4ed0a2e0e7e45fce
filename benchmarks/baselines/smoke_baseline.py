"""Smoke check of the Ray Serve baseline: start it, ask the demo questions on both routes, compare the sources
with tritonrag's own retriever (in-process FAISS), stop it, and check that no process is left.

    .venv/bin/python benchmarks/baselines/smoke_baseline.py --port 8100 --eager
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_baseline import BaselineServer

from tritonrag.serving.contract import RAG

DEMO_QUESTIONS = (
    "Describe the body of water in Utah",
    "Tell me as much as you can about the robbery",
    "Did Phileas Fogg really rob the bank?",
)


def post(url: str, body: dict[str, Any], timeout: float = 300) -> dict[str, Any]:
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read())


def stream(url: str, body: dict[str, Any], timeout: float = 300) -> tuple[list[dict[str, Any]], float, float]:
    """The SSE events, the time to the first non-empty text and the total time."""
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json", "Accept": "text/event-stream"})
    started, first, events = time.perf_counter(), None, []
    with urllib.request.urlopen(request, timeout=timeout) as response:
        for raw in response:
            line = raw.decode().strip()
            if line.startswith("data:"):
                events.append(json.loads(line[5:]))
                if events[-1].get(RAG.text_output) and first is None:
                    first = time.perf_counter() - started
    total = time.perf_counter() - started
    return events, first or total, total


def reference_sources(questions: tuple[str, ...]) -> dict[str, list[int]]:
    """Chunk ids tritonrag's retriever returns: its embedder and FAISS index, in this process."""
    from tritonrag.embedding.encoder import TextEmbedder
    from tritonrag.kb.search import KnowledgeBase
    from tritonrag.settings import load_settings

    settings = load_settings()
    vectors = TextEmbedder(settings.embedder, device="cpu").encode(list(questions))
    _, ids = KnowledgeBase(settings.index_dir).search(vectors, settings.retriever.top_k_default)
    return {q: row.tolist() for q, row in zip(questions, ids)}


def stray_processes(marker: str) -> list[str]:
    """Processes whose command line names ``marker`` (the Ray session folder), wherever their session is."""
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True, check=True).stdout
    return [line.strip() for line in out.splitlines() if marker in line and "ps -eo" not in line]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--port", type=int, default=8100)
    parser.add_argument("--eager", action="store_true", help="overlay [generator] enforce_eager = true (fast start)")
    parser.add_argument("--max-tokens", type=int, default=0, help="0 = [generator] max_tokens_default")
    parser.add_argument("--log", default="/tmp/tritonrag_baseline_smoke.log")
    parser.add_argument("args", nargs="*", help="more serve_baseline.py arguments (after --)")
    args = parser.parse_args()

    env = {}
    if args.eager:
        overlay = Path(tempfile.mkdtemp(prefix="baseline-smoke-")) / "eager.toml"
        overlay.write_text("[generator]\nenforce_eager = true\n")
        env["TRITONRAG_CONFIG"] = str(overlay)
    reference = reference_sources(DEMO_QUESTIONS)
    parameters = {RAG.max_tokens: args.max_tokens} if args.max_tokens else {}
    ok = True
    server = BaselineServer(port=args.port, env=env, log_path=args.log, args=args.args)
    with server:
        print(f"ready in {server.startup_s:.1f}s at {server.url}")
        for question in DEMO_QUESTIONS:
            body = {RAG.text_input: question, "parameters": parameters}
            started = time.perf_counter()
            answer = post(f"{server.url}/generate", body)
            generate_s = time.perf_counter() - started
            events, ttft, total = stream(f"{server.url}/generate_stream", {**body, RAG.stream: True})
            ids = [s["chunk_id"] for s in json.loads(answer[RAG.sources])]
            stream_ids = [s["chunk_id"] for s in json.loads(events[0][RAG.sources])]
            streamed = "".join(e.get(RAG.text_output, "") for e in events)
            text = answer[RAG.text_output]
            same = ids == stream_ids == reference[question]
            ok &= same and streamed == text and events[-1].get(RAG.finish_reason) is not None
            print(f"--- {question}\n  /generate {generate_s:.2f}s finish={answer[RAG.finish_reason]}: "
                  f"{text[:80]!r}\n  /generate_stream ttft {ttft:.2f}s total {total:.2f}s, "
                  f"{len(events)} events, same text: {streamed == text}\n"
                  f"  sources {ids} (tritonrag {reference[question]}): match {same}")
    leftovers = server.leftovers + stray_processes(f"ray_tritonrag_{args.port}")
    print(f"stopped; leftover processes: {leftovers or 'none'}")
    return 0 if ok and not leftovers else 1


if __name__ == "__main__":
    sys.exit(main())
