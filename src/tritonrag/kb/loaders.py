"""Read documents from files: .txt, .md, .html, .pdf, and .jsonl (BEIR rows ``{_id, title, text, metadata}``).

Each document gets a ``source``: its path relative to the folder it was found in (or its file name), and for
JSONL rows ``FILE#ID``. Sources identify documents when a knowledge base is updated or documents are deleted.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from tritonrag.kb.chunking import Document, load_document, normalize_text

log = logging.getLogger(__name__)


SUFFIXES = (".txt", ".md", ".html", ".htm", ".jsonl", ".pdf")
_BLOCK_TAGS = ("p", "div", "br", "li", "h1", "h2", "h3", "h4", "h5", "h6", "tr", "section", "article", "pre",
               "blockquote", "table", "ul", "ol", "header", "footer")


def discover(paths: Iterable[Path | str]) -> list[tuple[Path, str]]:
    """Every supported file under ``paths`` with its source name, sorted for reproducible chunk ids.

    Files named directly are taken whatever their suffix (read as text unless .html/.pdf/.jsonl).
    """
    found: list[tuple[Path, str]] = []
    paths = [Path(p) for p in paths]
    for path in paths:
        if path.is_file():
            found.append((path, path.name))
        elif path.is_dir():
            files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in SUFFIXES)
            found += [(file, file.relative_to(path).as_posix()) for file in files]
        else:
            raise FileNotFoundError(f"{path} does not exist")
    if not found:
        raise FileNotFoundError(f"no {'/'.join(SUFFIXES)} files under {', '.join(map(str, paths))}")
    names: dict[str, Path] = {}
    for file, name in found:
        if name in names and names[name] != file:
            raise ValueError(f"{names[name]} and {file} would both be source {name!r}; ingest them separately "
                             "or from their common parent folder")
        names[name] = file
    return found


def read_text_file(file: Path) -> str:
    try:
        return file.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        log.warning("%s is not UTF-8; decoding as latin-1", file)
        return file.read_text(encoding="latin-1")


def load_html(source: str, raw: str) -> Document:
    """Visible text of an HTML page (scripts, styles and navigation dropped); title from <title> or <h1>."""
    from bs4 import BeautifulSoup

    soup = BeautifulSoup(raw, "html.parser")
    for tag in soup(["script", "style", "noscript", "nav", "template"]):
        tag.decompose()
    heading = soup.title or soup.find("h1")
    title = " ".join(heading.get_text(" ").split()) if heading else ""
    if soup.title:
        soup.title.decompose()
    for tag in soup.find_all(_BLOCK_TAGS):
        tag.insert_after("\n\n")
    text = normalize_text(soup.get_text())
    return Document(source=source, title=title or source.rsplit("/", 1)[-1], text=text)


def load_pdf(source: str, file: Path) -> Document:
    """Text of every page of a PDF (pages separated by blank lines); title from the PDF's metadata."""
    from pypdf import PdfReader

    reader = PdfReader(file)
    pages = [page.extract_text() or "" for page in reader.pages]
    title = (reader.metadata.title if reader.metadata else None) or source.rsplit("/", 1)[-1]
    return Document(source=source, title=str(title).strip(), text=normalize_text("\n\n".join(pages)),
                    metadata={"pages": len(pages)})


def load_jsonl(source: str, file: Path) -> Iterator[Document]:
    """One document per row: ``_id`` (or ``id``), optional ``title``, ``text``, optional flat ``metadata``."""
    with open(file, encoding="utf-8") as fh:
        for line_no, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
                doc_id = str(row["_id"] if "_id" in row else row["id"])
                text = row["text"]
            except (json.JSONDecodeError, KeyError, TypeError) as exc:
                raise ValueError(f"{file}:{line_no}: expected a JSON object with _id and text ({exc})") from None
            if not isinstance(text, str):
                raise ValueError(f"{file}:{line_no}: 'text' must be a string")
            title = str(row.get("title") or "").strip()
            metadata: dict[str, Any] = {"doc_id": doc_id}
            extra = row.get("metadata")
            if isinstance(extra, dict):
                metadata.update({k: v for k, v in extra.items() if isinstance(v, str | int | float | bool)})
            body = normalize_text(f"{title}\n\n{text}" if title else text)  # BEIR/MTEB embed "title text"
            yield Document(source=f"{source}#{doc_id}", title=title or doc_id, text=body, metadata=metadata)


def load_file(file: Path, source: str) -> list[Document]:
    """The documents of one file, by suffix."""
    suffix = file.suffix.lower()
    if suffix == ".jsonl":
        return list(load_jsonl(source, file))
    if suffix == ".pdf":
        return [load_pdf(source, file)]
    if suffix in (".html", ".htm"):
        return [load_html(source, read_text_file(file))]
    return [load_document(source, read_text_file(file))]


def load_documents(paths: Iterable[Path | str]) -> list[Document]:
    """All documents under ``paths``; a source found twice is an error."""
    docs: list[Document] = []
    seen: set[str] = set()
    for file, source in discover(paths):
        for doc in load_file(file, source):
            if doc.source in seen:
                raise ValueError(f"document {doc.source!r} appears twice (in {file})")
            seen.add(doc.source)
            docs.append(doc)
    return docs


def content_hash(doc: Document) -> str:
    """Identifies a document's content: a re-ingested document with the same hash is not re-embedded."""
    payload = json.dumps([doc.title, doc.text, doc.metadata], sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(payload.encode()).hexdigest()
