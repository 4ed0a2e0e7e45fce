"""Errors the core raises for bad user input; adapters map them to INVALID_ARG (UNSUPPORTED for Unsupported);
Unavailable (a part that cannot answer now, being restored) to UNAVAILABLE."""


class InvalidInput(ValueError):
    """A request is malformed or out of bounds; the message tells the user what to change."""


class Unsupported(InvalidInput):
    """A well-formed request asks for something this deployment does not do (e.g. structured output from the
    transformers engine); the message says which setting or option would do it."""


class Unavailable(RuntimeError):
    """A part cannot answer now through no fault of the request (its engine died and is being restarted); the
    message says to retry."""
