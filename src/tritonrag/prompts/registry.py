"""The prompt templates, registered by name: the package's (templates/templates.toml) and, when [prompt_builder]
template_dir names a folder, that folder's (same layout; a name it shares with the package replaces the package's).
"""

from __future__ import annotations

import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import Any

KINDS = ("chat", "completion")
OUTPUTS = ("text", "json")
HISTORY = ("turns", "data")  # how a template gets a conversation's earlier turns
NAME = re.compile(r"^[a-z][a-z0-9_-]{0,47}$")
REGISTRY_FILE = "templates.toml"
KEYS = {"description", "kind", "system", "output", "stop", "history"}


class TemplateConfigError(ValueError):
    """A templates.toml or its .j2 files are invalid; the message names the file and the template."""


@dataclass(frozen=True)
class TemplateSpec:
    """A registered template: what it is for, how it is rendered, and its source."""

    name: str
    description: str
    source: str  # the Jinja2 text of NAME.j2
    kind: str = "chat"
    system: str = ""
    output: str = "text"
    stop: tuple[str, ...] = ()
    origin: str = "package"  # "package" or the folder it came from
    # a conversation's earlier turns: "turns", chat turns before the user's message (chat templates' default);
    # "data", only the template's `history` variable holds them (completion templates: always)
    history: str = "turns"

    @property
    def json_output(self) -> bool:
        return self.output == "json"


def _spec(name: str, raw: Any, folder: Traversable, origin: str) -> TemplateSpec:
    where = f"{origin}/{REGISTRY_FILE} [{name}]"
    if not NAME.match(name):
        raise TemplateConfigError(f"{where}: a template name is lower-case letters, digits, '_' or '-'")
    if not isinstance(raw, Mapping):
        raise TemplateConfigError(f"{where}: expected a table of {', '.join(sorted(KEYS))}")
    unknown = sorted(set(raw) - KEYS)
    if unknown:
        raise TemplateConfigError(f"{where}: unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(KEYS))}")
    kind, output = raw.get("kind", "chat"), raw.get("output", "text")
    if kind not in KINDS:
        raise TemplateConfigError(f"{where}: kind must be one of {', '.join(KINDS)}, got {kind!r}")
    if output not in OUTPUTS:
        raise TemplateConfigError(f"{where}: output must be one of {', '.join(OUTPUTS)}, got {output!r}")
    stop = raw.get("stop", [])
    if not isinstance(stop, list) or not all(isinstance(s, str) and s for s in stop):
        raise TemplateConfigError(f"{where}: stop must be a list of non-empty strings")
    history = raw.get("history", "turns" if kind == "chat" else "data")
    if history not in HISTORY or (history == "turns" and kind != "chat"):
        raise TemplateConfigError(f"{where}: history must be one of {', '.join(HISTORY)} (turns: chat templates "
                                  f"only), got {history!r}")
    description, system = raw.get("description", ""), raw.get("system", "")
    if not isinstance(description, str) or not description.strip():
        raise TemplateConfigError(f"{where}: give the template a description (what it is for)")
    if not isinstance(system, str) or (system and kind != "chat"):
        raise TemplateConfigError(f"{where}: system is a string, and only chat templates have one")
    source_file = folder.joinpath(f"{name}.j2")
    if not source_file.is_file():
        raise TemplateConfigError(f"{where}: its template file {name}.j2 is missing")
    return TemplateSpec(name, " ".join(description.split()), source_file.read_text(), kind, system, output,
                        tuple(stop), origin, history)


def _load(folder: Traversable, origin: str) -> dict[str, TemplateSpec]:
    registry = folder.joinpath(REGISTRY_FILE)
    if not registry.is_file():
        raise TemplateConfigError(f"{origin}: no {REGISTRY_FILE} (it lists the templates: see the package's)")
    try:
        raw = tomllib.loads(registry.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise TemplateConfigError(f"{origin}/{REGISTRY_FILE} is not valid TOML: {exc}") from None
    return {name: _spec(name, entry, folder, origin) for name, entry in raw.items()}


def load_templates(template_dir: str | Path | None = None) -> dict[str, TemplateSpec]:
    """The package's templates, then those of ``template_dir`` (empty or None: none) over them."""
    templates = _load(resources.files("tritonrag.prompts").joinpath("templates"), "package")
    if template_dir:
        folder = Path(template_dir).expanduser()
        if not folder.is_dir():
            raise TemplateConfigError(f"[prompt_builder] template_dir = {str(template_dir)!r} is not a folder; "
                                      f"create it with a {REGISTRY_FILE} and NAME.j2 files, or set it to \"\"")
        templates.update(_load(folder, str(folder)))
    return templates


PACKAGE_TEMPLATES = load_templates()  # the names a request may use everywhere (validated early by the pipeline)
