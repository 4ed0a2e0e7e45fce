"""Generator throughput and time to first token at several concurrencies, side by side in one run:

1. `vllm-triton`: the `generator` model on vLLM, served by Triton, driven over gRPC streams;
2. `vllm-inprocess`: the same vLLM engine (AsyncLLM) in this process, no Triton: the limit for (1);
3. `transformers-triton`: the transformers fallback served by Triton.

Every system gets the same RAG prompts (the demo's retrieval + the [prompt_builder] template), greedy
decoding, no stop strings, and the same max_tokens, from closed-loop clients (each sends its next request
when the previous one ends). Output tokens are counted by the engine (Triton: the generator's token counter).
vLLM's prefix caching is off here: the levels reuse the same prompts, and a cache hit would make later levels
look faster than they are.

    .venv/bin/python benchmarks/generator_throughput.py --out benchmarks/results/generator_throughput.md
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import queue
import statistics
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import QUESTIONS, REPOSITORY

from tritonrag.serving.contract import GENERATOR


@dataclass
class Result:
    system: str
    concurrency: int
    requests: int
    tokens: int
    seconds: float
    ttft: list[float]

    def as_dict(self) -> dict:
        return {"system": self.system, "concurrency": self.concurrency, "requests": self.requests,
                "tokens": self.tokens, "seconds": self.seconds, "tokens_per_s": self.tokens / self.seconds,
                "ttft_s": self.ttft}

    def row(self) -> str:
        ttft = sorted(self.ttft)
        p99 = ttft[min(len(ttft) - 1, round(0.99 * (len(ttft) - 1)))]
        return (f"| {self.system} | {self.concurrency} | {self.requests} | {self.tokens} | {self.seconds:.1f} | "
                f"{self.tokens / self.seconds:.1f} | {statistics.median(ttft):.2f} | {p99:.2f} |")


def rag_prompts(n: int) -> list[str]:
    from tritonrag.embedding.encoder import TextEmbedder
    from tritonrag.kb.search import KnowledgeBase
    from tritonrag.prompts.builder import prompt_builder
    from tritonrag.settings import load_settings

    settings = load_settings()
    embedder, kb = TextEmbedder(settings.embedder, "cpu"), KnowledgeBase(settings.index_dir)
    builder = prompt_builder(settings)
    questions = [QUESTIONS[i % len(QUESTIONS)] for i in range(n)]
    scores, ids = kb.search(embedder.encode(questions), settings.retriever.top_k_default)
    prompts = []
    for question, row_ids, row_scores in zip(questions, ids, scores):
        docs = [{"text": h.text, "title": h.title} for h in kb.fetch(row_ids, row_scores)]
        prompts.append(builder.build(settings.prompt_builder.template, question, docs).text)
    return prompts


def closed_loop(concurrency: int, prompts: list[str], one) -> tuple[float, list[float]]:
    """Run ``one(prompt) -> ttft`` over ``prompts`` with ``concurrency`` workers; returns (seconds, ttfts)."""
    work: queue.Queue[str] = queue.Queue()
    for p in prompts:
        work.put(p)
    ttfts: list[float] = []

    def worker():
        while True:
            try:
                prompt = work.get_nowait()
            except queue.Empty:
                return
            ttfts.append(one(prompt))

    started = time.perf_counter()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return time.perf_counter() - started, ttfts


def token_counter(metrics_url: str) -> float:
    text = urllib.request.urlopen(metrics_url, timeout=10).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
               if line.startswith("tritonrag_generator_output_tokens_total{"))


def bench_triton(system: str, engine: str, levels: list[int], prompts_for, max_tokens: int) -> list[Result]:
    from tritonrag.deploy.server import Ports, TritonServer
    from tritonrag.settings import CONFIG_ENV, load_settings

    settings = load_settings()
    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as cfg:
        cfg.write(f'[generator]\nengine = "{engine}"\nenable_prefix_caching = false\n')
    server = TritonServer(REPOSITORY, settings.home, Ports.choose(0, 0, 0), env={CONFIG_ENV: cfg.name})
    print(f"[{system}] starting Triton...", flush=True)
    server.start(900)
    try:
        return drive_generator(system, server.grpc_url, server.metrics_url, levels, prompts_for, max_tokens)
    finally:
        server.stop()
        os.unlink(cfg.name)


def drive_generator(system: str, grpc_url: str, metrics_url: str, levels: list[int], prompts_for,
                    max_tokens: int) -> list[Result]:
    """Closed-loop gRPC streams to a running server's `generator`; tokens counted by its metrics."""
    import numpy as np
    import tritonclient.grpc as grpcclient

    sampling = json.dumps({"max_tokens": max_tokens, "temperature": 0, "repetition_penalty": 1.0})

    def one(prompt: str) -> float:
        results: queue.Queue = queue.Queue()
        client = grpcclient.InferenceServerClient(grpc_url)
        text = grpcclient.InferInput(GENERATOR.text_input, [1], "BYTES")
        text.set_data_from_numpy(np.array([prompt.encode()], dtype=np.object_))
        params = grpcclient.InferInput(GENERATOR.sampling_parameters, [1], "BYTES")
        params.set_data_from_numpy(np.array([sampling.encode()], dtype=np.object_))
        stream = grpcclient.InferInput(GENERATOR.stream, [1], "BOOL")
        stream.set_data_from_numpy(np.array([True]))
        started, ttft = time.perf_counter(), None
        client.start_stream(callback=lambda result, error: results.put((result, error)))
        client.async_stream_infer(GENERATOR.model, [text, params, stream], enable_empty_final_response=True)
        while True:
            result, error = results.get(timeout=900)
            if error is not None:
                raise RuntimeError(error)
            if ttft is None and result.as_numpy(GENERATOR.text_output) is not None:
                ttft = time.perf_counter() - started
            if result.get_response().parameters["triton_final_response"].bool_param:
                break
        client.stop_stream()
        client.close()
        return ttft or time.perf_counter() - started

    out = []
    one(prompts_for(1)[0])  # warm-up
    for c in levels:
        prompts = prompts_for(c)
        before = token_counter(metrics_url)
        seconds, ttfts = closed_loop(c, prompts, one)
        tokens = int(token_counter(metrics_url) - before)
        out.append(Result(system, c, len(prompts), tokens, seconds, ttfts))
        print(out[-1].row(), flush=True)
    return out


def bench_inprocess(levels: list[int], prompts_for, max_tokens: int) -> list[Result]:
    from vllm import SamplingParams as VllmSamplingParams
    from vllm.sampling_params import RequestOutputKind

    from tritonrag.generation.vllm_engine import VllmEngine
    from tritonrag.settings import load_settings

    print("[vllm-inprocess] starting the engine...", flush=True)
    engine = VllmEngine(replace(load_settings().generator, engine="vllm", enable_prefix_caching=False))
    sampling = VllmSamplingParams(max_tokens=max_tokens, temperature=0, output_kind=RequestOutputKind.DELTA)
    counter = iter(range(10**9))

    async def one(prompt: str) -> tuple[float, int]:
        started, ttft, tokens = time.perf_counter(), None, 0
        async for output in engine.engine.generate(prompt, sampling, f"bench-{next(counter)}"):
            tokens += len(output.outputs[0].token_ids)
            if ttft is None and output.outputs[0].token_ids:
                ttft = time.perf_counter() - started
        return ttft or 0.0, tokens

    async def level(c: int, prompts: list[str]) -> tuple[float, list[float], int]:
        pending = list(prompts)
        ttfts, tokens = [], [0]

        async def worker():
            while pending:
                ttft, n = await one(pending.pop())
                ttfts.append(ttft)
                tokens[0] += n

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(c)))
        return time.perf_counter() - started, ttfts, tokens[0]

    out = []
    try:
        asyncio.run_coroutine_threadsafe(level(1, prompts_for(1)), engine._loop).result()  # warm-up
        for c in levels:
            prompts = prompts_for(c)
            seconds, ttfts, tokens = asyncio.run_coroutine_threadsafe(level(c, prompts), engine._loop).result()
            out.append(Result("vllm-inprocess", c, len(prompts), tokens, seconds, ttfts))
            print(out[-1].row(), flush=True)
    finally:
        engine.shutdown()
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", default="1,4,16", help="comma-separated levels")
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--systems", default="vllm-triton,vllm-inprocess,transformers-triton")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--json", type=Path, help="also write the rows as JSON (for benchmarks/suite.py)")
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    all_prompts = rag_prompts(max(*levels, 4))

    def prompts_for(c: int) -> list[str]:
        return all_prompts[: max(4, c)]

    header = ("| system | concurrency | requests | output tokens | seconds | tokens/s | TTFT p50 (s) | TTFT p99 (s) |\n"
              + "|---" * 8 + "|")
    print(header, flush=True)
    results: list[Result] = []
    systems = args.systems.split(",")
    if "vllm-triton" in systems:
        results += bench_triton("vllm-triton", "vllm", levels, prompts_for, args.max_tokens)
    if "vllm-inprocess" in systems:
        results += bench_inprocess(levels, prompts_for, args.max_tokens)
    if "transformers-triton" in systems:
        results += bench_triton("transformers-triton", "transformers", levels, prompts_for, args.max_tokens)

    by = {(r.system, r.concurrency): r.tokens / r.seconds for r in results}
    ratios = []
    for c in levels:
        served, limit, fallback = by.get(("vllm-triton", c)), by.get(("vllm-inprocess", c)), by.get(
            ("transformers-triton", c))
        parts = [f"concurrency {c}:"]
        if served and limit:
            parts.append(f"Triton vLLM = {served / limit:.0%} of in-process vLLM")
        if served and fallback:
            parts.append(f"{served / fallback:.1f}x the transformers fallback")
        ratios.append(" ".join(parts))
    table = "\n".join([header, *(r.row() for r in results)])
    if args.json:
        args.json.write_text(json.dumps([r.as_dict() for r in results], indent=2))
    print("\n" + table + "\n\n" + "\n".join(ratios))
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            f"# Generator throughput ({time.strftime('%Y-%m-%d %H:%M %Z')})\n\n"
            f"Command: `.venv/bin/python {' '.join(sys.argv)}`\n\n"
            f"Machine: {platform.platform()}, {os.cpu_count()} cores, no GPU. Prompts: RAG prompts from the demo "
            f"corpus (~850 tokens), greedy, max_tokens {args.max_tokens}, no stop strings; requests per level = "
            f"max(4, concurrency).\n\n{table}\n\n" + "\n".join(f"- {r}" for r in ratios) + "\n"
        )


if __name__ == "__main__":
    main()
