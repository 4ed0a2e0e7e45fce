"""The `tritonrag` Typer app, its console, and the helpers every command group shares."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated

import typer
from rich.console import Console

app = typer.Typer(add_completion=False, no_args_is_help=True,
                  help="`tritonrag`: set up, index, serve and query the RAG service.")


console = Console()


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("--verbose", "-v")] = False) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING, format="%(levelname)s %(message)s")


@contextmanager
def exit_on(*errors: type[BaseException], prefix: str = "") -> Iterator[None]:
    """Turn the expected ``errors`` into their message in red and exit status 1 (no traceback)."""
    try:
        yield
    except errors as exc:
        console.print(f"{prefix}{exc}", style="red", markup=False)
        raise typer.Exit(1) from None
