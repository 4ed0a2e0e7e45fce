"""Checks of one reranking request (a query and its passages) against the [reranker] limits."""

from __future__ import annotations

from collections.abc import Sequence

from tritonrag.errors import InvalidInput
from tritonrag.serving.contract import RERANKER
from tritonrag.settings import RerankerSettings


def validate_request(query: str, passages: Sequence[str], settings: RerankerSettings, where: str = "") -> None:
    """Raise InvalidInput, saying what to change, unless the query and every passage are within the limits.

    ``where`` prefixes the input names (e.g. "row 1 of ") when a request carries several queries.
    """
    q, p = f"{where}input '{RERANKER.query}'", f"{where}input '{RERANKER.passages}'"
    if not query.strip():
        raise InvalidInput(f"{q} is empty: send the question to score the passages against")
    if len(query) > settings.max_query_chars:
        raise InvalidInput(f"{q} has {len(query)} characters; the limit is {settings.max_query_chars} "
                           "([reranker] max_query_chars): shorten the question")
    if not passages:
        raise InvalidInput(f"{p} is empty: send 1 to {settings.max_passages} passages to score")
    if len(passages) > settings.max_passages:
        raise InvalidInput(f"{p} has {len(passages)} passages; the limit is {settings.max_passages} per query "
                           "([reranker] max_passages): send the best ones, or split them over several requests")
    for i, passage in enumerate(passages):
        if not passage.strip():
            raise InvalidInput(f"{p} element {i} is empty or whitespace: leave it out")
        if len(passage) > settings.max_passage_chars:
            raise InvalidInput(
                f"{p} element {i} has {len(passage)} characters; the limit is {settings.max_passage_chars} "
                f"([reranker] max_passage_chars): send at most that much of it (the model reads only its first "
                f"{settings.max_seq_length} tokens)")
