"""Document cleaning and token-aware chunking with overlap."""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

_GUTENBERG_START = re.compile(r"^\*\*\*\s*START OF (THIS|THE) PROJECT GUTENBERG EBOOK.*$", re.M | re.I)
_GUTENBERG_END = re.compile(r"^\*\*\*\s*END OF (THIS|THE) PROJECT GUTENBERG EBOOK.*$", re.M | re.I)
_GUTENBERG_TITLE = re.compile(r"^Title:\s*(.+)$", re.M)
_HEADING = re.compile(r"^(CHAPTER|Chapter|BOOK|Book|PART|Part)\s+([IVXLC]+|\d+)\b.*$")


# A tokenizer call that returns, for a text, the (start, end) character span of each token.
TokenSpans = Callable[[str], Sequence[tuple[int, int]]]


@dataclass(frozen=True)
class Document:
    """A cleaned document ready for chunking."""

    source: str
    title: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Chunk:
    """A span of a document, the unit that is embedded and retrieved."""

    source: str
    title: str
    position: int
    text: str
    n_tokens: int
    section: str = ""


def strip_gutenberg(text: str) -> tuple[str, str | None]:
    """Remove Project Gutenberg's licence header and footer; return (body, title or None).

    Text without the Gutenberg markers is returned unchanged.
    """
    title_match = _GUTENBERG_TITLE.search(text)
    start = _GUTENBERG_START.search(text)
    if not start:
        return text, None
    end = _GUTENBERG_END.search(text, start.end())
    body = text[start.end() : end.start() if end else len(text)]
    return body, title_match.group(1).strip() if title_match else None


def normalize_text(text: str) -> str:
    """Unify newlines and re-flow hard-wrapped lines: paragraphs become single lines, blank-line separated."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    paragraphs = [re.sub(r"\s+", " ", p).strip() for p in re.split(r"\n\s*\n", text)]
    return "\n\n".join(p for p in paragraphs if p)


def load_document(source: str, raw: str) -> Document:
    """Clean a raw text file: strip Gutenberg boilerplate, re-flow, and pick a title.

    The title is Gutenberg's "Title:" line, else a leading Markdown heading, else the file name.
    """
    body, title = strip_gutenberg(raw)
    if not title:
        first_line = body.lstrip().split("\n", 1)[0].strip()
        heading = " ".join(first_line.lstrip("#").split())[:120]
        title = heading if first_line.startswith("#") and heading else source.rsplit("/", 1)[-1]
    return Document(source=source, title=title, text=normalize_text(body))


def _section_starts(text: str) -> list[tuple[int, str]]:
    """Character offsets of chapter-like headings (paragraphs starting with CHAPTER, BOOK, PART...)."""
    starts = []
    offset = 0
    for paragraph in text.split("\n\n"):
        match = _HEADING.match(paragraph)
        if match:
            starts.append((offset, paragraph[:80]))
        offset += len(paragraph) + 2
    return starts


def chunk_document(doc: Document, token_spans: TokenSpans, chunk_tokens: int, overlap_tokens: int) -> list[Chunk]:
    """Split ``doc`` into windows of ``chunk_tokens`` tokens that overlap by ``overlap_tokens``.

    Windows are cut on token boundaries of the embedder's own tokenizer, so no chunk is truncated when
    embedded; each window is widened to whole words. ``chunk_tokens`` 0 keeps each document whole (one
    chunk; the embedder reads only its first max_seq_length tokens), as BEIR/MTEB evaluate short documents.
    """
    if chunk_tokens < 0 or not 0 <= overlap_tokens < max(chunk_tokens, 1):
        raise ValueError(f"need chunk_tokens > overlap_tokens >= 0 (or both 0), got {chunk_tokens}, {overlap_tokens}")
    spans = list(token_spans(doc.text))
    if not spans:
        return []
    if chunk_tokens == 0:
        chunk_tokens = len(spans)
    sections = _section_starts(doc.text)
    stride = chunk_tokens - overlap_tokens
    chunks: list[Chunk] = []
    for position, first in enumerate(range(0, len(spans), stride)):
        last = min(first + chunk_tokens, len(spans)) - 1
        start, end = _widen_to_words(doc.text, spans[first][0], spans[last][1])
        section = ""
        for offset, heading in sections:
            if offset > start:
                break
            section = heading
        chunks.append(
            Chunk(
                source=doc.source,
                title=doc.title,
                position=position,
                text=doc.text[start:end].strip(),
                n_tokens=last - first + 1,
                section=section,
            )
        )
        if last == len(spans) - 1:
            break
    return chunks


def _widen_to_words(text: str, start: int, end: int) -> tuple[int, int]:
    while start > 0 and not text[start - 1].isspace():
        start -= 1
    while end < len(text) and not text[end].isspace():
        end += 1
    return start, end
