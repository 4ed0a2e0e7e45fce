"""Build a generator's prompt: a named template renders the task (question, numbered passages, schema, earlier turns
of a conversation), the target model's own chat template wraps it with the system prompt and, for chat templates, the
conversation's earlier turns (bounded by the model's tokens: tritonrag.prompts.history). Everything a user or a
document supplies is data: it is neutralised (tritonrag.prompts.neutralise) and fills variables of templates
rendered in Jinja2's sandbox."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from jinja2 import StrictUndefined
from jinja2.sandbox import ImmutableSandboxedEnvironment

from tritonrag.errors import InvalidInput
from tritonrag.prompts.chat_format import ChatFormat
from tritonrag.prompts.history import TokenCounter, Turn, estimate_tokens, parse_history, recent_turns
from tritonrag.prompts.registry import TemplateSpec, load_templates
from tritonrag.serving.contract import GENERATOR
from tritonrag.settings import Settings

T = TypeVar("T")


@dataclass(frozen=True)
class ContextDocument:
    """What a template may read of a retrieved chunk."""

    text: str
    title: str = ""
    source: str = ""
    section: str = ""
    position: int | None = None  # the chunk's position in its source (not shown): [prompt_builder] passage_order

    @classmethod
    def from_metadata(cls, text: str, metadata: Mapping[str, Any]) -> ContextDocument:
        """A chunk's text with the fields of its metadata a template may read (others are ignored), and its
        position in its source (metadata "position", an integer; else None)."""
        position = metadata.get("position")
        position = position if isinstance(position, int) and not isinstance(position, bool) else None
        return cls(text, **{k: str(metadata.get(k, "")) for k in ("title", "source", "section")}, position=position)


def passage_order(documents: Sequence[ContextDocument], order: str) -> tuple[int, ...]:
    """The indices of ``documents`` (given best first) in the order a prompt shows them, numbered [1]..[n]:
    "rank" keeps them as given; "document" sorts them by their place in the knowledge base (source, then position;
    a document without a position after those of its source, in rank order), so that questions that retrieve the
    same passages get the same prompt prefix whatever their ranks."""
    if order == "rank":
        return tuple(range(len(documents)))
    if order == "document":
        return tuple(sorted(range(len(documents)), key=lambda i: (
            documents[i].source, documents[i].position is None, documents[i].position or 0, i)))
    raise InvalidInput(f"unknown passage order {order!r}; use rank or document")


@dataclass(frozen=True)
class BuiltPrompt:
    """The prompt text, its stop strings, how many passages it holds (numbered 1..passages, what an answer may
    cite), whether the template asks for a JSON answer, and ``order``: for each passage number n of the prompt,
    the index (0-based) of its document in the list given, best first (empty: as given, 0..passages-1)."""

    text: str
    stop: tuple[str, ...]
    passages: int
    json_output: bool = False
    order: tuple[int, ...] = ()

    def source_number(self, n: int) -> int:
        """The number (1-based, best first: the order of the documents given, the response's sources) of the
        passage the prompt numbers ``n``."""
        return self.order[n - 1] + 1 if self.order else n


class PromptBuilder:
    """Render registered templates for a generator's chat format; user data only fills variables."""

    def __init__(self, max_query_chars: int, max_context_chars: int, max_system_chars: int = 4000,
                 template_dir: str | None = None,
                 chat_format: Callable[[str | None], ChatFormat] = lambda _: ChatFormat.plain(),
                 max_history_tokens: int = 1024,
                 token_counter: Callable[[str | None], Callable[[str], int]] = lambda _: estimate_tokens,
                 passage_order: str = "rank") -> None:
        if passage_order not in ("rank", "document"):
            raise ValueError(f"[prompt_builder] passage_order must be rank or document, got {passage_order!r}")
        self.passage_order = passage_order
        self.max_query_chars = max_query_chars
        self.max_context_chars = max_context_chars
        self.max_system_chars = max_system_chars
        self.max_history_tokens = max_history_tokens
        self._chat_format = chat_format
        self._token_counter = token_counter
        self._specs = load_templates(template_dir)
        env = ImmutableSandboxedEnvironment(undefined=StrictUndefined, autoescape=False, keep_trailing_newline=False,
                                            trim_blocks=True)
        self._templates = {name: env.from_string(spec.source) for name, spec in self._specs.items()}

    def names(self) -> list[str]:
        return sorted(self._specs)

    def specs(self) -> list[TemplateSpec]:
        return [self._specs[name] for name in self.names()]

    def spec(self, name: str) -> TemplateSpec:
        if name not in self._specs:
            raise InvalidInput(f"unknown template {name!r}; available templates: {', '.join(self.names())}")
        return self._specs[name]

    def build(self, name: str, query: str, documents: Sequence[ContextDocument | Mapping[str, str]],
              system_prompt: str | None = None, generator: str | None = None, schema: str = "",
              answer: str = "", history: Sequence[Turn | Mapping[str, str]] = ()) -> BuiltPrompt:
        """Render template ``name`` for the chat format of ``generator`` (None: the default generator's).

        Passages beyond ``max_context_chars`` are dropped whole, from the last (the worst ranked); the rest are
        numbered in the builder's passage order (BuiltPrompt.order maps the numbers back); ``system_prompt`` (None: the
        template's) replaces the template's system prompt. ``history``, the conversation's earlier turns, keeps its
        most recent turns that fit ``max_history_tokens`` of the generator's tokenizer; a chat template with history
        "turns" gets them as chat turns before the user's message, every template as its ``history`` variable.
        """
        spec = self.spec(name)
        query = query.strip()
        if not query:
            raise InvalidInput("query is empty: send the question text")
        if len(query) > self.max_query_chars:
            raise InvalidInput(f"query has {len(query)} characters; the limit is {self.max_query_chars}")
        if system_prompt is not None:
            if spec.kind != "chat":
                raise InvalidInput(f"template {name!r} is a completion template without a system prompt; "
                                   "use a chat template (qa, summarize, extract) to send system_prompt")
            if not system_prompt.strip() or len(system_prompt) > self.max_system_chars:
                raise InvalidInput(f"system_prompt must hold 1 to {self.max_system_chars} characters, "
                                   f"got {len(system_prompt.strip())}")
        chat = self._chat_format(generator)
        clean = chat.neutraliser
        docs = [d if isinstance(d, ContextDocument) else ContextDocument(**d) for d in documents]
        kept, used = [], 0
        for doc in docs:
            if used + len(doc.text) > self.max_context_chars and kept:
                break
            kept.append(doc)
            used += len(doc.text)
        order = passage_order(kept, self.passage_order)
        shown = [kept[i] for i in order]
        as_turns = spec.history == "turns"
        turns = self._history(parse_history(list(history)), generator, clean.text if as_turns else clean.inline)
        variables = {
            "query": clean.inline(query),
            "message": clean.text(query),
            "history": [t.to_dict() for t in turns],
            "documents": [{"n": i, "text": clean.inline(d.text), "title": clean.inline(d.title),
                           "source": clean.inline(d.source), "section": clean.inline(d.section)}
                          for i, d in enumerate(shown, 1)],
            "schema": clean.text(schema),
            "answer": clean.inline(answer),
        }
        body = self._templates[name].render(**variables).strip()
        if spec.kind == "completion":
            return BuiltPrompt(body, spec.stop, len(kept), spec.json_output, order)
        system = clean.text(system_prompt if system_prompt is not None else spec.system).strip()
        messages = ([{"role": "system", "content": system}] if system else []) + \
                   ([t.to_dict() for t in turns] if as_turns else []) + [{"role": "user", "content": body}]
        return BuiltPrompt(chat.render(messages), tuple(dict.fromkeys(spec.stop + chat.stop)), len(kept),
                           spec.json_output, order)

    def _history(self, history: Sequence[Turn], generator: str | None, clean: Callable[[str], str]) -> list[Turn]:
        """The turns of ``history`` neutralised by ``clean``, the most recent that fit the token budget."""
        if not history:
            return []
        turns = [Turn(t.role, clean(t.content).strip()) for t in history]
        return recent_turns(turns, self.max_history_tokens, self._token_counter(generator))


def chat_formats(setting: str, default_model: str,
                 generator_models: Mapping[str, str | None] | None = None) -> Callable[[str | None], ChatFormat]:
    """The chat format of each served generator, by name (None: the default ``generator``), read once per model.

    ``setting`` is [prompt_builder] chat_template: "auto" (each model's own), "plain", or a template file's path.
    ``generator_models`` maps the served generators' names to their models (None: ``default_model``).
    """

    def make(model: str) -> ChatFormat:
        if setting == "plain":
            return ChatFormat.plain(model)
        if setting == "auto":
            return ChatFormat.for_model(model)
        own = ChatFormat.for_model(model)
        return ChatFormat(setting, Path(setting).expanduser().read_text(), own.special_tokens, own.bos_token,
                          own.eos_token)

    return _per_generator(make, default_model, generator_models)


def token_counters(default_model: str,
                   generator_models: Mapping[str, str | None] | None = None) -> Callable[[str | None], TokenCounter]:
    """The token counter of each served generator, by name (None: the default one), its tokenizer loaded once per
    model (tritonrag.prompts.history.TokenCounter)."""
    return _per_generator(TokenCounter.for_model, default_model, generator_models)


def _per_generator(make: Callable[[str], T], default_model: str,
                   generator_models: Mapping[str, str | None] | None) -> Callable[[str | None], T]:
    """A lookup by served generator name (None: ``generator``) of ``make(model)``, made once per model."""
    models = {GENERATOR.model: default_model}
    models.update({name: model or default_model for name, model in (generator_models or {}).items()})
    cache: dict[str, T] = {}

    def lookup(generator: str | None) -> T:
        name = generator or GENERATOR.model
        if name not in models:
            raise InvalidInput(f"unknown generator {name!r}; this deployment serves: {', '.join(models)}")
        model = models[name]
        if model not in cache:
            cache[model] = make(model)
        return cache[model]

    return lookup


def prompt_builder(settings: Settings, generator_models: Mapping[str, str | None] | None = None) -> PromptBuilder:
    """The prompt builder the settings describe, for the generators served (default: the one ``generator``)."""
    p = settings.prompt_builder
    return PromptBuilder(p.max_query_chars, p.max_context_chars, p.max_system_chars, p.template_dir,
                         chat_formats(p.chat_template, settings.generator.model, generator_models),
                         p.max_history_tokens, token_counters(settings.generator.model, generator_models),
                         p.passage_order)
