"""Errors the core raises for bad user input; adapters map them to INVALID_ARG (UNSUPPORTED for Unsupported)."""


class InvalidInput(ValueError):
    """A request is malformed or out of bounds; the message tells the user what to change."""


class Unsupported(InvalidInput):
    """A well-formed request asks for something this deployment does not do (e.g. structured output from the
    transformers engine); the message says which setting or option would do it."""
