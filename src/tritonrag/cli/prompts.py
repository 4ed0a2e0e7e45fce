"""`tritonrag templates`: the prompt templates a request may name (parameter template), with what each is for."""

from __future__ import annotations

from typing import Annotated

import typer

from tritonrag.cli.app import app, console, exit_on
from tritonrag.settings import load_settings


@app.command("templates")
def templates_cmd(
    show: Annotated[str | None, typer.Option("--show", help="Print this template's source and system prompt.")] = None,
    question: Annotated[str | None, typer.Option(
        "--render", help="With --show: render the template for this question over two sample passages, for the "
                         "\\[generator] model's chat template.")] = None,
) -> None:
    """List the prompt templates: the package's and those of \\[prompt_builder] template_dir.

    A RAG request picks one with the parameter template (default: \\[prompt_builder] template).

    Examples:\n
      tritonrag templates\n
      tritonrag templates --show extract\n
      tritonrag templates --show qa --render "Where is the Reform Club?"
    """
    from rich.markup import escape
    from rich.table import Table

    from tritonrag.errors import InvalidInput
    from tritonrag.prompts.builder import prompt_builder
    from tritonrag.prompts.registry import TemplateConfigError

    settings = load_settings()
    with exit_on(TemplateConfigError, InvalidInput, ValueError):
        builder = prompt_builder(settings)
        if show:
            spec = builder.spec(show)
            console.print(f"[bold]{spec.name}[/bold] ({spec.kind}, {spec.output} answer; from {spec.origin})")
            console.print(spec.description, markup=False)
            if spec.system:
                console.print("\n[bold]system prompt[/bold]")
                console.print(spec.system, markup=False, soft_wrap=True)
            console.print(f"\n[bold]{spec.name}.j2[/bold]")
            console.print(spec.source, markup=False, soft_wrap=True)
            if question:
                sample = [{"text": "Phileas Fogg lived at No. 7, Saville Row.", "title": "Sample"},
                          {"text": "He was a member of the Reform Club.", "title": "Sample"}]
                built = builder.build(show, question, sample)
                console.print(f"\n[bold]rendered for {settings.generator.model}[/bold]")
                console.print(built.text, markup=False, soft_wrap=True)
            return
    table = Table("name", "kind", "answer", "what it is for", "from")
    for spec in builder.specs():
        name = f"{spec.name} (default)" if spec.name == settings.prompt_builder.template else spec.name
        table.add_row(name, spec.kind, spec.output, escape(spec.description), escape(spec.origin))
    console.print(table)
