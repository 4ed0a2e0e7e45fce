import json

import pytest

from tritonrag.kb.loaders import content_hash, discover, load_documents, load_html


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "docs"
    (root / "sub").mkdir(parents=True)
    (root / "b.txt").write_text("bee")
    (root / "a.md").write_text("# A\n\nay")
    (root / "UPPER.TXT").write_text("upper")
    (root / "blob.bin").write_bytes(b"\x00\x01")
    (root / "sub" / "c.txt").write_text("sea")
    (root / "sub" / "page.html").write_text("<title>P</title><p>para</p>")
    return root


def test_discover_finds_supported_files_with_relative_sources(corpus):
    found = discover([corpus])
    assert [source for _, source in found] == ["UPPER.TXT", "a.md", "b.txt", "sub/c.txt", "sub/page.html"]


def test_discover_takes_files_as_given(corpus):
    assert discover([corpus / "blob.bin", str(corpus / "sub")])[0] == (corpus / "blob.bin", "blob.bin")


def test_discover_errors(tmp_path, corpus):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        discover([tmp_path / "nowhere"])
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"\.txt"):
        discover([tmp_path / "empty"])
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "b.txt").write_text("x")
    with pytest.raises(ValueError, match=r"would both be source 'b\.txt'"):
        discover([corpus / "b.txt", tmp_path / "other" / "b.txt"])


def test_text_and_markdown(corpus):
    docs = {d.source: d for d in load_documents([corpus])}
    assert docs["a.md"].title == "A" and docs["b.txt"].text == "bee"


def test_latin1_fallback(tmp_path):
    (tmp_path / "l.txt").write_bytes("caf\xe9".encode("latin-1"))
    assert load_documents([tmp_path])[0].text == "café"


def test_html_keeps_visible_text_in_paragraphs():
    html = """<html><head><title>Peaks of Freedonia</title><style>p {}</style></head><body>
      <nav>Home | About</nav><h1>Peaks</h1><p>The tallest <b>mountain</b> is
      Mount Glorp.</p><script>var x = 1;</script><ul><li>one</li><li>two</li></ul></body></html>"""
    d = load_html("p.html", html)
    assert d.title == "Peaks of Freedonia"
    assert d.text == "Peaks\n\nThe tallest mountain is Mount Glorp.\n\none\n\ntwo"


def test_jsonl_rows_become_documents(tmp_path):
    rows = [{"_id": "4983", "title": "Brains", "text": "White matter.", "metadata": {"year": 2001, "x": [1]}},
            {"id": 7, "text": "No title."}]
    (tmp_path / "corpus.jsonl").write_text("\n".join(map(json.dumps, rows)) + "\n\n")
    first, second = load_documents([tmp_path / "corpus.jsonl"])
    assert first.source == "corpus.jsonl#4983" and first.title == "Brains"
    assert first.text == "Brains\n\nWhite matter." and first.metadata == {"doc_id": "4983", "year": 2001}
    assert second.source == "corpus.jsonl#7" and second.title == "7" and second.text == "No title."


@pytest.mark.parametrize("line", ['{"text": "no id"}', "not json", '{"_id": 1, "text": 5}'])
def test_bad_jsonl_rows_name_the_line(tmp_path, line):
    (tmp_path / "c.jsonl").write_text('{"_id": 1, "text": "ok"}\n' + line + "\n")
    with pytest.raises(ValueError, match=r"c.jsonl:2"):
        load_documents([tmp_path])


def test_duplicate_jsonl_ids_rejected(tmp_path):
    (tmp_path / "c.jsonl").write_text('{"_id": 1, "text": "a"}\n{"_id": 1, "text": "b"}\n')
    with pytest.raises(ValueError, match="appears twice"):
        load_documents([tmp_path])


def _minimal_pdf(text):
    """A one-page PDF showing ``text`` (Helvetica), with a correct xref table."""
    stream = f"BT /F1 12 Tf 72 720 Td ({text}) Tj ET".encode()
    objects = [
        b"<< /Type /Catalog /Pages 2 0 R >>",
        b"<< /Type /Pages /Kids [3 0 R] /Count 1 >>",
        b"<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R "
        b"/Resources << /Font << /F1 5 0 R >> >> >>",
        b"<< /Length %d >>\nstream\n" % len(stream) + stream + b"\nendstream",
        b"<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica >>",
        b"<< /Title (Glorp Report) >>",
    ]
    out, offsets = b"%PDF-1.4\n", []
    for i, body in enumerate(objects, 1):
        offsets.append(len(out))
        out += b"%d 0 obj\n" % i + body + b"\nendobj\n"
    xref = len(out)
    out += b"xref\n0 %d\n0000000000 65535 f \n" % (len(objects) + 1)
    out += b"".join(b"%010d 00000 n \n" % o for o in offsets)
    out += b"trailer\n<< /Size %d /Root 1 0 R /Info 6 0 R >>\nstartxref\n%d\n%%%%EOF\n" % (len(objects) + 1, xref)
    return out


def test_pdf_text_and_title(tmp_path):
    (tmp_path / "r.pdf").write_bytes(_minimal_pdf("Mount Glorp is 4810 metres tall."))
    (d,) = load_documents([tmp_path])
    assert d.title == "Glorp Report" and d.text == "Mount Glorp is 4810 metres tall." and d.metadata == {"pages": 1}


def test_content_hash_tracks_text_title_and_metadata(tmp_path):
    (tmp_path / "c.jsonl").write_text('{"_id": 1, "text": "a"}\n{"_id": 2, "text": "a"}\n')
    one, two = load_documents([tmp_path])
    assert content_hash(one) != content_hash(two)  # metadata (doc_id) differs
    assert content_hash(one) == content_hash(load_documents([tmp_path])[0])
