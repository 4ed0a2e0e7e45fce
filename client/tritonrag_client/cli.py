"""`ask`: question the running service from the command line."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.console import Console

from tritonrag.serving.contract import RAG

from .client import RagAnswer, RagClient, RagError

console = Console()


def print_sources(sources: list[dict], cited: list[dict] | None = None) -> None:
    numbers = {c["n"] for c in cited or ()}
    console.print("\n[bold]Sources[/bold] (* cited by the answer)")
    for i, src in enumerate(sources, 1):
        where = " - ".join(x for x in (src.get("title"), src.get("section")) if x)
        mark = "*" if i in numbers else " "
        found = src.get("retrieval") or {}
        how = " ".join(f"{side} #{found[side]['rank']}" for side in ("dense", "sparse", "rerank") if side in found)
        console.print(f" {mark}[{i}] chunk {src['chunk_id']}  score {src['score']:.3f}  {where}"
                      + (f"  ({how})" if how else ""), markup=False)
        if src.get("snippet"):
            console.print(f"      {src['snippet']}", style="dim", markup=False, highlight=False)


def ask(
    question: Annotated[str, typer.Argument(help="The question to answer from the knowledge base.")],
    stream: Annotated[bool, typer.Option("--stream/--no-stream", help="Print tokens as they arrive.")] = True,
    protocol: Annotated[str, typer.Option("--protocol", "-p", help="http or grpc.")] = "http",
    grpc: Annotated[bool, typer.Option("--grpc", help="Shorthand for --protocol grpc.")] = False,
    url: Annotated[str | None, typer.Option(help="host:port (default localhost:8000 http, :8001 grpc).")] = None,
    top_k: Annotated[int | None, typer.Option(help="Passages to retrieve.")] = None,
    template: Annotated[str | None, typer.Option(
        help="Prompt template (task): qa, summarize, extract... (`tritonrag templates` lists them).")] = None,
    system_prompt: Annotated[str | None, typer.Option(help="Replace the template's system prompt.")] = None,
    json_schema: Annotated[str | None, typer.Option(
        help="Answer as JSON following this JSON schema (a JSON string, or @FILE).")] = None,
    flow: Annotated[str | None, typer.Option(
        help="rag (default) or qa-checked (a critic checks the answer against the passages).")] = None,
    mode: Annotated[str | None, typer.Option(
        help="Retrieval: hybrid (default: BM25 and vectors fused), dense (vectors) or sparse (BM25: words).")] = None,
    rerank: Annotated[bool | None, typer.Option(
        "--rerank/--no-rerank", help="Rerank the retrieved candidates with the reranker model.")] = None,
    rerank_candidates: Annotated[int | None, typer.Option(help="Candidates the reranker scores.")] = None,
    timing: Annotated[bool, typer.Option("--timing", help="Print each step's time (embed, dense, ...).")] = False,
    max_tokens: Annotated[int | None, typer.Option(help="Most tokens to generate.")] = None,
    temperature: Annotated[float | None, typer.Option(help="0 = greedy.")] = None,
    source: Annotated[list[str] | None, typer.Option(
        help="Only retrieve from this document (repeat for several), e.g. around_the_world.txt.")] = None,
    where: Annotated[list[str] | None, typer.Option(
        help="Only retrieve from documents whose metadata FIELD=VALUE (repeat for several fields).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the answer and sources as JSON.")] = False,
) -> None:
    """Ask the RAG service a question and print the answer with its sources.

    Examples:\n
      tritonrag ask "Describe the body of water in Utah"\n
      tritonrag ask --grpc --top-k 6 "Did Phileas Fogg really rob the bank?"\n
      tritonrag ask --no-stream --json --url 10.0.0.5:8000 "Who is Passepartout?"\n
      tritonrag ask --source around_the_world.txt "Who is Aouda?"\n
      tritonrag ask --flow qa-checked "Where does Fogg live?"\n
      tritonrag ask --mode sparse --timing "Who is Mr. Fix?"\n
      tritonrag ask --rerank --rerank-candidates 20 "What did Fogg bet?"\n
      tritonrag ask --template extract --json-schema @person.schema.json "Who is Aouda?"
    """
    protocol = "grpc" if grpc else protocol
    url = url or ("localhost:8001" if protocol == "grpc" else "localhost:8000")
    if json_schema and json_schema.startswith("@"):
        json_schema = open(json_schema[1:]).read()
    given = {RAG.top_k: top_k, RAG.template: template, RAG.max_tokens: max_tokens, RAG.temperature: temperature,
             RAG.system_prompt: system_prompt, RAG.json_schema: json_schema, RAG.flow: flow, RAG.mode: mode,
             RAG.rerank: rerank, RAG.rerank_candidates: rerank_candidates}
    params = {name: value for name, value in given.items() if value is not None}
    flt = _filter(source, where)
    if flt:
        params[RAG.filter] = flt
    client = RagClient(url, protocol)
    answer = RagAnswer()
    try:
        if stream and not as_json:
            for event in client.stream(question, **params):
                answer.add(event)
                console.print(event.text, end="", markup=False, highlight=False, soft_wrap=True)
            console.print()
        else:
            answer = client.ask(question, **params)
    except RagError as exc:
        console.print(f"[red]error:[/red] {exc}")
        raise typer.Exit(2) from None
    except OSError as exc:
        console.print(f"[red]cannot reach the service at {url} ({protocol}):[/red] {exc}\n"
                      "Start it with `tritonrag serve` (or scripts/demo.sh).")
        raise typer.Exit(1) from None
    if as_json:
        print(json.dumps({"answer": answer.text, "sources": answer.sources, "citations": answer.citations,
                          "finish_reason": answer.finish_reason, "timing": answer.timing}))
        return
    if not stream:
        console.print(answer.text, markup=False, highlight=False)
    print_sources(answer.sources, answer.citations)
    if timing and answer.timing:
        console.print("\n[bold]Timing[/bold] " + "  ".join(f"{name.removesuffix('_ms')} {ms:.1f} ms"
                                                            for name, ms in answer.timing.items()))


def _filter(sources: list[str] | None, where: list[str] | None) -> dict[str, object]:
    flt: dict[str, object] = {}
    if sources:
        flt["source"] = list(sources)
    for item in where or ():
        field, sep, value = item.partition("=")
        if not sep or not field:
            raise typer.BadParameter(f"--where takes FIELD=VALUE, got {item!r}")
        flt[field.strip()] = value
    return flt


def main() -> None:
    typer.run(ask)


if __name__ == "__main__":
    main()
