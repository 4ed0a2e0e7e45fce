"""Latency of the demo's three questions through the served pipeline: time to sources, to first token, total.

Starts its own tritonserver on free ports (or uses --url), asks each question --repeats times per protocol with
streaming, and prints a table; --out writes it as Markdown with the exact command.

    .venv/bin/python benchmarks/demo_latency.py --repeats 3 --out benchmarks/results/demo_latency.md
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

from tritonrag_client import RagClient

from tritonrag.cli.deploy import DEMO_QUESTIONS
from tritonrag.deploy.render import checkout_repository
from tritonrag.deploy.server import Ports, TritonServer
from tritonrag.settings import load_settings


def measure(client: RagClient, question: str, max_tokens: int) -> dict[str, float]:
    started = time.perf_counter()
    to_sources = to_first = None
    pieces = 0
    for event in client.stream(question, max_tokens=max_tokens):
        now = time.perf_counter() - started
        if event.sources is not None and to_sources is None:
            to_sources = now
        if event.text:
            pieces += 1
            to_first = to_first or now
    total = time.perf_counter() - started
    return {"sources_s": to_sources or total, "ttft_s": to_first or total, "total_s": total, "pieces": pieces}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--url-http", help="use a running server's HTTP host:port instead of starting one")
    parser.add_argument("--url-grpc", help="use a running server's gRPC host:port instead of starting one")
    parser.add_argument("--out", type=Path, help="write the table as Markdown here")
    args = parser.parse_args()

    server = None
    if not (args.url_http and args.url_grpc):
        settings = load_settings()
        server = TritonServer(checkout_repository(), settings.home, Ports.choose(0, 0, 0))
        server.start(settings.server.startup_timeout_s)
    http_url = args.url_http or server.http_url
    grpc_url = args.url_grpc or server.grpc_url
    rows = []
    try:
        for protocol, url in (("http", http_url), ("grpc", grpc_url)):
            client = RagClient(url, protocol)
            measure(client, "warm-up question", 4)
            for question in DEMO_QUESTIONS:
                runs = [measure(client, question, args.max_tokens) for _ in range(args.repeats)]
                rows.append((protocol, question, *(statistics.median(r[k] for r in runs)
                                                   for k in ("sources_s", "ttft_s", "total_s", "pieces"))))
    finally:
        if server:
            server.stop()
    header = "| protocol | question | sources (s) | first token (s) | total (s) | text pieces |\n" + "|---" * 6 + "|"
    lines = [f"| {p} | {q} | {s:.3f} | {f:.3f} | {t:.2f} | {n:.0f} |" for p, q, s, f, t, n in rows]
    table = "\n".join([header, *lines])
    print(table)
    if args.out:
        command = " ".join([".venv/bin/python", *sys.argv])
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(
            f"# Demo question latency (medians of {args.repeats} runs, max_tokens {args.max_tokens})\n\n"
            f"Command: `{command}`\n\nMachine: {platform.platform()}, {platform.processor() or 'cpu'}, "
            f"{__import__('os').cpu_count()} cores; {time.strftime('%Y-%m-%d %H:%M %Z')}\n\n{table}\n"
        )


if __name__ == "__main__":
    main()
