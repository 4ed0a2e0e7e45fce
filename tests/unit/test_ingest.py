import pytest

from tritonrag.config import load_settings
from tritonrag.ingest import chunk_files, discover, sample_corpus


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "docs"
    (root / "sub").mkdir(parents=True)
    (root / "b.txt").write_text("bee")
    (root / "a.md").write_text("# A\n\nay")
    (root / "UPPER.TXT").write_text("upper")
    (root / "blob.bin").write_bytes(b"\x00\x01")
    (root / "notes.rst").write_text("rst")
    (root / "sub" / "c.txt").write_text("sea")
    return root


def test_discover_finds_txt_and_md_only_sorted(corpus):
    found = discover([corpus])
    assert [p.relative_to(corpus).as_posix() for p in found] == ["UPPER.TXT", "a.md", "b.txt", "sub/c.txt"]


def test_discover_takes_files_as_given(corpus):
    found = discover([corpus / "blob.bin", corpus / "sub"])
    assert found == [corpus / "blob.bin", corpus / "sub" / "c.txt"]


def test_discover_accepts_strings(corpus):
    assert discover([str(corpus / "sub")]) == [corpus / "sub" / "c.txt"]


def test_discover_missing_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        discover([tmp_path / "nowhere"])


def test_discover_folder_without_documents(tmp_path):
    (tmp_path / "x.bin").write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match=r"\.txt"):
        discover([tmp_path])


def test_sample_corpus_from_env(monkeypatch, tmp_path):
    folder = tmp_path / "data" / "eighty_days"
    folder.mkdir(parents=True)
    (folder / "around_the_world.txt").write_text("Phileas Fogg")
    monkeypatch.setenv("TRITONRAG_DATA", str(tmp_path / "data"))
    assert sample_corpus() == folder


def test_sample_corpus_missing(monkeypatch, tmp_path):
    monkeypatch.setenv("TRITONRAG_DATA", str(tmp_path / "empty"))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(FileNotFoundError, match="TRITONRAG_DATA"):
        sample_corpus()


def test_chunk_files_cleans_and_chunks(tmp_path, token_spans):
    settings = load_settings()
    size = settings.chunking.chunk_tokens
    text = " ".join(f"w{i}" for i in range(size * 2))
    (tmp_path / "utf8.txt").write_text(f"Title: Demo\n*** START OF THE PROJECT GUTENBERG EBOOK DEMO ***\n{text}\n")
    (tmp_path / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    chunks = chunk_files(discover([tmp_path]), token_spans, settings)
    latin = [c for c in chunks if c.source == "latin1.txt"]
    demo = [c for c in chunks if c.source == "utf8.txt"]
    assert [c.text for c in latin] == ["café crème"]
    assert len(demo) >= 2
    assert all(c.title == "Demo" for c in demo)
    assert all(c.n_tokens <= size for c in demo)
    assert "START OF" not in " ".join(c.text for c in demo)
