import itertools
import re

import pytest

from tritonrag.kb.chunking import Document, chunk_document, load_document, normalize_text, strip_gutenberg

GUTENBERG = """The Project Gutenberg eBook of Tiny Book

This eBook is for the use of anyone anywhere in the United States.

Title: Tiny Book
Author: Nobody

*** START OF THIS PROJECT GUTENBERG EBOOK TINY BOOK ***

CHAPTER I.

Phileas Fogg lived at No. 7, Savile Row,
Burlington Gardens.

*** END OF THIS PROJECT GUTENBERG EBOOK TINY BOOK ***

Project Gutenberg Literary Archive Foundation
809 North 1500 West, Salt Lake City, UT 84116
"""


def words(n, prefix="w"):
    return " ".join(f"{prefix}{i}" for i in range(n))


# --- strip_gutenberg ---------------------------------------------------------------------------------------


def test_strip_gutenberg_removes_header_and_footer_and_finds_title():
    body, title = strip_gutenberg(GUTENBERG)
    assert title == "Tiny Book"
    assert "Phileas Fogg" in body
    assert "CHAPTER I." in body
    for boilerplate in ("Salt Lake City", "START OF THIS PROJECT", "END OF THIS PROJECT", "for the use of anyone"):
        assert boilerplate not in body


def test_strip_gutenberg_accepts_the_modern_marker_and_crlf():
    raw = GUTENBERG.replace("THIS PROJECT", "THE PROJECT").replace("\n", "\r\n")
    body, title = strip_gutenberg(raw)
    assert title == "Tiny Book"
    assert "Salt Lake City" not in body
    assert "Phileas Fogg" in body


def test_strip_gutenberg_without_end_marker_keeps_the_rest():
    raw = "Title: T\n*** START OF THE PROJECT GUTENBERG EBOOK T ***\nbody text\n"
    body, title = strip_gutenberg(raw)
    assert title == "T"
    assert body.strip() == "body text"


def test_strip_gutenberg_leaves_other_text_unchanged():
    text = "Just a note.\n\nTitle: not gutenberg\n"
    assert strip_gutenberg(text) == (text, None)


# --- normalize_text ----------------------------------------------------------------------------------------


def test_normalize_text_unifies_newlines_and_reflows_paragraphs():
    raw = "First line\r\nwrapped here.\r\n\r\n\r\nSecond   para\rstill second.\n  \n\nThird."
    assert normalize_text(raw) == "First line wrapped here.\n\nSecond para still second.\n\nThird."


def test_normalize_text_drops_blank_paragraphs():
    assert normalize_text("\n\n   \n\n") == ""
    assert normalize_text("  one  \n\n\n\n\t\n two ") == "one\n\ntwo"


# --- load_document -----------------------------------------------------------------------------------------


def test_load_document_gutenberg_title_and_clean_text():
    doc = load_document("books/tiny.txt", GUTENBERG)
    assert doc.source == "books/tiny.txt"
    assert doc.title == "Tiny Book"
    assert doc.text.startswith("CHAPTER I.")
    assert "Phileas Fogg lived at No. 7, Savile Row, Burlington Gardens." in doc.text
    assert "Salt Lake City" not in doc.text


def test_load_document_markdown_heading_is_title():
    doc = load_document("docs/guide.md", "# User   Guide\n\nSome text\nwrapped.")
    assert doc.title == "User Guide"
    assert doc.text.endswith("Some text wrapped.")


def test_load_document_falls_back_to_file_name():
    doc = load_document("docs/notes.txt", "Plain words.")
    assert doc.title == "notes.txt"
    assert doc.text == "Plain words."


def test_load_document_markdown_heading_followed_directly_by_text():
    doc = load_document("docs/guide.md", "# User Guide\nSome text right below the heading.")
    assert doc.title == "User Guide"


# --- chunk_document ----------------------------------------------------------------------------------------


def _token_windows(chunks):
    return [chunk.text.split() for chunk in chunks]


@pytest.mark.parametrize(("n_words", "chunk_tokens", "overlap"), [(100, 20, 5), (57, 10, 3), (30, 7, 0), (5, 20, 4)])
def test_chunk_document_windows_cover_every_token_with_overlap(token_spans, n_words, chunk_tokens, overlap):
    doc = Document(source="s.txt", title="S", text=words(n_words))
    chunks = chunk_document(doc, token_spans, chunk_tokens, overlap)
    windows = _token_windows(chunks)
    all_words = doc.text.split()

    assert [c.position for c in chunks] == list(range(len(chunks)))
    assert all(c.source == "s.txt" and c.title == "S" for c in chunks)
    assert all(1 <= c.n_tokens <= chunk_tokens and c.n_tokens == len(w) for c, w in zip(chunks, windows, strict=True))
    assert windows[0][0] == all_words[0]
    assert windows[-1][-1] == all_words[-1]
    covered = {word for window in windows for word in window}
    assert covered == set(all_words)
    for previous, current in itertools.pairwise(windows):
        assert len(previous) == chunk_tokens  # only the last window may be short
        assert previous[len(previous) - overlap :] == current[:overlap]
        # windows advance: the next one starts right after the shared overlap
        assert all_words.index(current[0]) == all_words.index(previous[0]) + chunk_tokens - overlap


def test_chunk_document_exact_window_count(token_spans):
    doc = Document(source="s", title="s", text=words(100))
    chunks = chunk_document(doc, token_spans, 20, 5)
    # windows start at 0, 15, 30, 45, 60, 75 (75 + 20 = 95 < 100), 90 (reaches the end)
    assert len(chunks) == 7
    assert chunks[-1].n_tokens == 10


def test_chunk_document_empty_text(token_spans):
    assert chunk_document(Document(source="s", title="s", text=""), token_spans, 10, 2) == []


@pytest.mark.parametrize(("chunk_tokens", "overlap"), [(0, 3), (-5, 0), (10, 10), (10, 11), (10, -1)])
def test_chunk_document_rejects_bad_sizes(token_spans, chunk_tokens, overlap):
    doc = Document(source="s", title="s", text=words(50))
    with pytest.raises(ValueError, match="chunk_tokens"):
        chunk_document(doc, token_spans, chunk_tokens, overlap)


def test_chunk_tokens_zero_keeps_each_document_whole(token_spans):
    doc = Document(source="s", title="s", text=words(500))
    (chunk,) = chunk_document(doc, token_spans, 0, 0)
    assert chunk.text == doc.text and chunk.n_tokens == 500 and chunk.position == 0


def test_chunk_document_widens_partial_word_spans_to_whole_words():
    text = "alpha beta gamma delta"

    def char_pairs(t):  # a tokenizer that splits words into 2-character pieces
        return [(i, min(i + 2, m.end())) for m in re.finditer(r"\S+", t) for i in range(m.start(), m.end(), 2)]

    chunks = chunk_document(Document(source="s", title="s", text=text), char_pairs, 4, 1)
    assert len(chunks) > 1
    for chunk in chunks:
        assert chunk.text.split(), chunk
        assert all(word in text.split() for word in chunk.text.split()), chunk.text


def test_chunk_document_sections_from_chapter_headings(token_spans):
    heading_1 = "CHAPTER I. IN WHICH PHILEAS FOGG AND PASSEPARTOUT ACCEPT EACH OTHER"
    heading_2 = "CHAPTER II."
    parts = [
        ("", "Preface " + words(30, "p")),
        (heading_1, heading_1),
        (heading_1, words(30, "a")),
        (heading_2, heading_2),
        (heading_2, words(30, "b")),
    ]
    doc = load_document("book.txt", "\n\n".join(text for _, text in parts))
    all_words = [word for _, text in parts for word in text.split()]
    section_at = [section for section, text in parts for _ in text.split()]
    chunks = chunk_document(doc, token_spans, 10, 2)

    assert len(chunks) > 5
    for chunk in chunks:
        window = chunk.text.split()
        first = next(i for i in range(len(all_words)) if all_words[i : i + len(window)] == window)
        assert chunk.section == section_at[first], chunk.text
    assert {c.section for c in chunks} == {"", heading_1, heading_2}


def test_chunk_document_heading_must_start_a_paragraph(token_spans):
    doc = Document(source="s", title="s", text="we read CHAPTER I. of it " + words(30))
    assert {c.section for c in chunk_document(doc, token_spans, 10, 2)} == {""}
