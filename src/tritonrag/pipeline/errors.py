"""Errors inside the pipeline and how each maps to a failure a client can act on."""

from __future__ import annotations

from tritonrag.errors import InvalidInput, Unavailable, Unsupported
from tritonrag.pipeline.events import ErrorCode, FailedEvent


class StageError(Exception):
    """A stage answered with an error; keeps its code, so a downstream model's INVALID_ARG stays one."""

    def __init__(self, stage: str, message: str, code: ErrorCode = ErrorCode.INTERNAL) -> None:
        super().__init__(f"{stage}: {message}" if message else f"{stage}: failed without a message")
        self.stage = stage
        self.code = code


class RequestCancelled(Exception):
    """The client cancelled or went away."""


def failure(exc: BaseException) -> FailedEvent:
    """The failure event for ``exc``: bad input is INVALID_ARG with its message; a stage's error keeps its code;
    anything else is INTERNAL, named by its type so the log and the client can tell faults apart."""
    if isinstance(exc, Unsupported):
        return FailedEvent(ErrorCode.UNSUPPORTED, str(exc))
    if isinstance(exc, InvalidInput):
        return FailedEvent(ErrorCode.INVALID_ARG, str(exc))
    if isinstance(exc, StageError):
        return FailedEvent(exc.code, str(exc))
    if isinstance(exc, Unavailable):
        return FailedEvent(ErrorCode.UNAVAILABLE, str(exc))
    return FailedEvent(ErrorCode.INTERNAL, f"{type(exc).__name__}: {exc}")
