import numpy as np
import pytest

from tritonrag.embedding.encoder import TextEmbedder
from tritonrag.settings import load_settings

TEXTS = [
    "Phileas Fogg bet twenty thousand pounds that he could go around the world in eighty days.",
    "Passepartout was his French servant.",
    "Aouda was rescued from a suttee in India.",
    "The Reform Club is in Pall Mall, London.",
]


@pytest.fixture(scope="module")
def embedder():
    return TextEmbedder(load_settings().embedder, device="cpu")


def test_dimension(embedder):
    assert embedder.dimension == 384
    assert embedder.max_seq_length > 0


def test_outputs_are_normalised_float32(embedder):
    vectors = embedder.encode(TEXTS)
    assert vectors.shape == (len(TEXTS), 384)
    assert vectors.dtype == np.float32
    assert vectors.flags["C_CONTIGUOUS"]
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


def test_encode_empty(embedder):
    out = embedder.encode([])
    assert out.shape == (0, 384)
    assert out.dtype == np.float32


def test_related_texts_are_closer(embedder):
    q = embedder.encode(["Who was Fogg's servant?"])[0]
    scores = embedder.encode(TEXTS) @ q
    assert int(np.argmax(scores)) == 1


def test_encode_mixed_matches_separate_calls(embedder):
    instructions = ["Represent the question:", "", "Represent the question:", ""]
    mixed = embedder.encode_mixed(TEXTS, instructions)
    assert mixed.shape == (len(TEXTS), 384)
    assert mixed.dtype == np.float32
    with_instruction = embedder.encode([TEXTS[0], TEXTS[2]], "Represent the question:")
    plain = embedder.encode([TEXTS[1], TEXTS[3]])
    np.testing.assert_allclose(mixed[[0, 2]], with_instruction, atol=1e-5)
    np.testing.assert_allclose(mixed[[1, 3]], plain, atol=1e-5)
    # the instruction really changes the embedding, so the rows were not mixed up by accident
    assert not np.allclose(mixed[0], embedder.encode([TEXTS[0]])[0], atol=1e-3)


def test_encode_mixed_length_mismatch(embedder):
    with pytest.raises(ValueError, match="length"):
        embedder.encode_mixed(TEXTS, [""])


def test_token_spans_index_into_the_text(embedder):
    text = "Phileas Fogg's wager: 20,000 pounds — around the world in eighty days!"
    spans = embedder.token_spans(text)
    assert len(spans) > len(text.split())  # word pieces and punctuation are tokens of their own
    previous_end = 0
    for start, end in spans:
        assert previous_end <= start < end <= len(text)
        assert text[start:end].strip() == text[start:end]
        previous_end = end
    # the spans tile every non-space character of the text, in order
    assert "".join(text[s:e] for s, e in spans) == "".join(text.split())
    assert {"world", "eighty"} <= {text[s:e] for s, e in spans}


def test_token_spans_do_not_truncate_long_text(embedder):
    text = " ".join(["word"] * 1000)
    spans = embedder.token_spans(text)
    assert len(spans) == 1000
    assert spans[-1][1] == len(text)


def test_torch_threads_apply_to_a_served_embedder_on_cpu_only():
    from dataclasses import replace

    from tritonrag.embedding.encoder import in_triton_stub, serving_threads

    settings = load_settings().embedder
    one, two, off = (replace(settings, torch_threads=n) for n in (1, 2, 0))
    assert serving_threads(one, "cpu", serving=True) == 1
    assert serving_threads(two, "cpu", serving=True) == 2
    assert serving_threads(off, "cpu", serving=True) is None  # 0: torch's default
    assert serving_threads(one, "cpu", serving=False) is None  # ingest and benchmarks keep torch's default
    assert serving_threads(one, "cuda:0", serving=True) is None
    assert not in_triton_stub()  # pytest is no Triton stub


def test_a_triton_stub_is_recognised_by_its_backend_module(monkeypatch):
    import sys
    import types

    from tritonrag.embedding.encoder import in_triton_stub

    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", types.ModuleType("triton_python_backend_utils"))
    assert in_triton_stub()


def test_torch_threads_setting_is_validated(tmp_path):
    from dataclasses import replace

    settings = load_settings().embedder
    assert settings.torch_threads >= 0
    with pytest.raises(ValueError, match="torch_threads"):
        replace(settings, torch_threads=-1)
    config = tmp_path / "threads.toml"
    config.write_text("[embedder]\ntorch_threads = 3\n")
    assert load_settings(config).embedder.torch_threads == 3
    config.write_text("[embedder]\ntorch_threads = -2\n")
    with pytest.raises(ValueError, match="torch_threads"):
        load_settings(config)
