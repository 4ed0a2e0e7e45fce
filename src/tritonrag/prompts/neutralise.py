"""Prompt-injection defence: text a user or a document supplies can never close the passage block or open a turn.

Questions, system prompts and retrieved passages are data. Before a template renders them:
- special tokens of the model (``<|im_start|>``, ``<end_of_turn>``, ``</s>``...), and anything shaped like one
  (``<|...|>``), lose their angle brackets (``‹|im_start|›``), so the tokenizer cannot read them as control tokens;
- role headers of the plain layouts (``### Assistant:``, ``[INST]``, ``<<SYS>>``) are defused;
- in passages and questions, line breaks collapse to spaces (no line can pose as a new block) and bracketed numbers
  become ``(n)``, so only the prompt's own ``[n]`` number passages and an answer's citations stay meaningful.
What the text says is untouched; the system prompt tells the model that passages are data, not instructions.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

TOKEN_SHAPE = re.compile(r"<[^<>\s]{1,64}>")
ALWAYS = re.compile(r"<\|[^<>]{0,62}\|>|<｜[^<>]{0,62}｜>")  # <|im_start|>, DeepSeek's <｜...｜>: any model's
GENERIC_TOKENS = frozenset({"<s>", "</s>", "<bos>", "<eos>", "<pad>", "<unk>", "<start_of_turn>", "<end_of_turn>",
                            "<|endoftext|>", "<passages>", "</passages>"})
ROLE_HEADER = re.compile(r"#{2,}\s*(system|user|assistant|human|instruction|input|response)\s*:", re.IGNORECASE)
INSTRUCTION_TAGS = re.compile(r"\[/?INST\]|<</?SYS>>", re.IGNORECASE)
BRACKETED_NUMBER = re.compile(r"\[(\s*\d+(?:\s*[,;-]\s*\d+)*\s*)\]")
WHITESPACE = re.compile(r"\s+")


class Neutraliser:
    """Defuses a model's special tokens and the common role markers in untrusted text."""

    def __init__(self, special_tokens: Iterable[str] = ()) -> None:
        tokens = {t for t in special_tokens if t}
        self._shaped = frozenset(t for t in tokens if TOKEN_SHAPE.fullmatch(t)) | GENERIC_TOKENS
        # tokens of another shape (rare): replaced one by one, longest first
        self._other = tuple(sorted((t for t in tokens if not TOKEN_SHAPE.fullmatch(t) and len(t) > 1),
                                   key=len, reverse=True))

    def _defuse_token(self, match: re.Match[str]) -> str:
        token = match.group(0)
        if token in self._shaped or ALWAYS.fullmatch(token):
            return "‹" + token[1:-1] + "›"
        return token

    def text(self, text: str) -> str:
        """``text`` with control tokens and role markers defused; its line breaks kept (system prompts)."""
        text = ALWAYS.sub(lambda m: "‹" + m.group(0)[1:-1] + "›", text)
        text = TOKEN_SHAPE.sub(self._defuse_token, text)
        for token in self._other:
            text = text.replace(token, " ".join(token))
        text = ROLE_HEADER.sub(lambda m: f"({m.group(1)}):", text)
        return INSTRUCTION_TAGS.sub(lambda m: "(" + m.group(0).strip("[]<>/") + ")", text)

    def inline(self, text: str) -> str:
        """``text`` defused and on one line, its bracketed numbers as (n): for passages and questions."""
        text = BRACKETED_NUMBER.sub(lambda m: f"({m.group(1).strip()})", self.text(text))
        return WHITESPACE.sub(" ", text).strip()
