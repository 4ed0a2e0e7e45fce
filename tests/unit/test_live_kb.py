import threading
import time

import numpy as np
import pytest
from fakes import DIM, FakeEmbedder, doc, small_settings

from tritonrag.kb.ingest import update_knowledge_base
from tritonrag.kb.live import LiveKnowledgeBase, NoKnowledgeBase
from tritonrag.kb.search import KnowledgeBase
from tritonrag.kb.versions import publish


def add(root, source, words=10):
    return update_knowledge_base(root, small_settings(keep_versions=50), [doc(source, words)],
                                 embedder=FakeEmbedder(), progress=False)


def test_check_swaps_in_a_new_version_and_closes_the_old(tmp_path):
    add(tmp_path, "a.txt")
    swapped = []
    live = LiveKnowledgeBase(tmp_path, interval_s=0, on_swap=lambda kb: swapped.append(kb.version))
    try:
        with live.use() as old:
            assert old.version == "v000001"
        assert live.check() is False
        add(tmp_path, "b.txt")
        assert live.check() is True
        assert live.version == "v000002" and live.reloads == 1
        assert old.index is None  # released
        assert swapped == ["v000001", "v000002"]
        assert live.stats()["docstore"]["documents"] == 2 and live.stats()["reloads"] == 1
    finally:
        live.close()


def test_a_version_that_fails_to_load_keeps_the_old_one(tmp_path):
    add(tmp_path, "a.txt")
    add(tmp_path, "b.txt")
    publish(tmp_path, "v000001")
    calls = []

    def loader(path):
        calls.append(path.name)
        if path.name == "v000002":
            raise ValueError("corrupt")
        return KnowledgeBase(path)

    live = LiveKnowledgeBase(tmp_path, loader, interval_s=0)
    try:
        publish(tmp_path, "v000002")
        assert live.check() is False and live.version == "v000001"
        assert "corrupt" in live.stats()["last_reload_error"]
        assert live.check() is False
        assert calls.count("v000002") == 1  # not retried until the pointer moves again
    finally:
        live.close()


def test_searches_never_fail_while_versions_are_published(tmp_path):
    add(tmp_path, "seed.txt")
    live = LiveKnowledgeBase(tmp_path, interval_s=0.01)
    errors, searches, stop = [], [0], threading.Event()

    def search():
        query = np.ones((1, DIM), np.float32)
        while not stop.is_set():
            try:
                with live.use() as kb:
                    scores, ids = kb.search(query, 3)
                    assert kb.fetch(ids[0], scores[0])
                searches[0] += 1
            except Exception as exc:
                errors.append(exc)

    threads = [threading.Thread(target=search) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        for i in range(6):
            add(tmp_path, f"d{i}.txt", words=200)
        deadline = time.monotonic() + 10
        while live.version != "v000007" and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        stop.set()
        for t in threads:
            t.join()
        live.close()
    assert errors == []
    assert live.reloads >= 1 and searches[0] > 0
    assert live.version == "v000007"


def test_starting_before_anything_is_published(tmp_path):
    live = LiveKnowledgeBase(tmp_path, interval_s=0)
    try:
        assert live.version is None
        with pytest.raises(NoKnowledgeBase, match="tritonrag ingest"), live.use():
            pass
        add(tmp_path, "a.txt")
        assert live.check() and live.version == "v000001"
    finally:
        live.close()
