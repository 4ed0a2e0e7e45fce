"""Prompt templates rendered in a Jinja2 sandbox."""
