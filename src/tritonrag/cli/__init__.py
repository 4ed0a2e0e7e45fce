"""`tritonrag`: set up, index, serve and query the RAG service.

One module per command group: setup (install-runtime, prepare-models), kb (ingest, kb ...), deploy (render, serve,
demo), ingress (ingress, ingress-key), prompts (templates); `ask` comes from the client package.
"""

from tritonrag.cli import deploy, ingress, kb, prompts, setup  # noqa: F401  (each registers its commands on the app)
from tritonrag.cli.app import app


def _register_ask() -> None:
    from tritonrag_client.cli import ask

    app.command(help=ask.__doc__)(ask)


_register_ask()


def main() -> None:
    app()


__all__ = ["app", "main"]
