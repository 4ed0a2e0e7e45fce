import json

import pytest
from fakes import FakeEmbedder, doc, small_settings

from tritonrag.kb.ingest import update_knowledge_base
from tritonrag.kb.versions import (
    POINTER_FILE,
    build_lock,
    list_versions,
    next_version_name,
    prune_versions,
    publish,
    published_path,
    published_version,
    remove_stale_builds,
    version_number,
    versions_dir,
)


def add(root, source):
    return update_knowledge_base(root, small_settings(keep_versions=10), [doc(source)], embedder=FakeEmbedder(),
                                 progress=False)


def test_version_names():
    assert version_number("v000012") == 12
    with pytest.raises(ValueError, match="version name"):
        version_number("latest")


def test_versions_pointer_and_next_name(tmp_path):
    assert list_versions(tmp_path) == [] and published_version(tmp_path) is None
    assert next_version_name(tmp_path) == "v000001"
    add(tmp_path, "a.txt")
    add(tmp_path, "b.txt")
    assert list_versions(tmp_path) == ["v000001", "v000002"]
    assert published_version(tmp_path) == "v000002"
    assert published_path(tmp_path) == versions_dir(tmp_path) / "v000002"
    assert json.loads((tmp_path / POINTER_FILE).read_text())["version"] == "v000002"
    assert next_version_name(tmp_path) == "v000003"


def test_publish_is_atomic_and_checks_the_version(tmp_path):
    add(tmp_path, "a.txt")
    add(tmp_path, "b.txt")
    publish(tmp_path, "v000001")
    assert published_version(tmp_path) == "v000001"
    assert sorted(p.name for p in tmp_path.iterdir()) == [".lock", POINTER_FILE, "versions"]  # no temp file left
    with pytest.raises(FileNotFoundError, match="v000009"):
        publish(tmp_path, "v000009")
    assert published_version(tmp_path) == "v000001"


def test_one_build_at_a_time(tmp_path):
    with build_lock(tmp_path), pytest.raises(RuntimeError, match="another build"):
        add(tmp_path, "a.txt")
    add(tmp_path, "a.txt")  # the lock is released


def test_stale_builds_are_removed(tmp_path):
    add(tmp_path, "a.txt")
    stale = versions_dir(tmp_path) / ".building-v000002-xyz"
    stale.mkdir()
    (stale / "index.faiss").write_bytes(b"half")
    assert list_versions(tmp_path) == ["v000001"]  # never listed
    add(tmp_path, "b.txt")
    assert not stale.exists()
    assert remove_stale_builds(tmp_path) == []


def test_prune_keeps_the_newest_and_the_published(tmp_path):
    for source in "abcd":
        add(tmp_path, f"{source}.txt")
    publish(tmp_path, "v000001")
    assert prune_versions(tmp_path, 2) == ["v000002"]
    assert list_versions(tmp_path) == ["v000001", "v000003", "v000004"]
