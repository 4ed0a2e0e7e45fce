"""Errors the core raises for bad user input; adapters map them to INVALID_ARG."""


class InvalidInput(ValueError):
    """A request is malformed or out of bounds; the message tells the user what to change."""
