"""Merging streamed text that is already queued (tritonrag.serving.coalescing): nothing waits for more, nothing is
lost or reordered, the end comes last. And the retriever's batch: one docstore query for all its rows."""

import asyncio
import threading
import time

import numpy as np
import pytest
from fakes import DIM, FakeEmbedder, doc, small_settings

from tritonrag.kb.batched_search import parse_search, run_searches
from tritonrag.kb.ingest import update_knowledge_base
from tritonrag.kb.search import KnowledgeBase
from tritonrag.pipeline.types import GenerationChunk, Usage
from tritonrag.serving.coalescing import Outbox, SenderThread, ThreadToLoop, merge_chunks

SETTINGS = small_settings().retriever


def test_the_first_piece_schedules_the_outbox_and_later_ones_ride_along():
    box = Outbox()
    assert box.put("a") is True  # idle: the caller hands it to the sender
    assert box.put("b") is False and box.put("c") is False  # already waiting: no second turn
    batch = box.take()
    assert (batch.text, batch.ended) == ("abc", False)
    assert box.put("d") is True  # taken: idle again


def test_the_end_is_taken_with_the_text_before_it_and_nothing_after_it_counts():
    box = Outbox()
    box.put("x")
    assert box.finish("done") is False  # already scheduled by the text
    assert box.put("late") is False and box.finish("again") is False
    batch = box.take()
    assert (batch.text, batch.end, batch.ended) == ("x", "done", True)


def test_an_end_alone_schedules_the_outbox():
    box = Outbox()
    assert box.finish(ValueError("boom")) is True
    batch = box.take()
    assert batch.text == "" and isinstance(batch.end, ValueError) and batch.ended


class _Slow:
    """A stream whose sends take a while, recording what each send carried."""

    def __init__(self, delay_s):
        self.box, self.delay_s, self.sent, self.done = Outbox(), delay_s, [], threading.Event()

    def send(self):
        batch = self.box.take()
        time.sleep(self.delay_s)
        self.sent.append(batch.text)
        if batch.ended:
            self.done.set()


def test_text_that_piles_up_during_a_send_goes_out_in_one_response_in_order():
    stream = _Slow(0.02)
    sender = SenderThread(lambda s: s.send(), "test")
    try:
        for i in range(50):
            if stream.box.put(f"{i} "):
                sender.schedule(stream)
        if stream.box.finish("end"):
            sender.schedule(stream)
        assert stream.done.wait(5)
    finally:
        sender.stop()
    assert "".join(stream.sent) == "".join(f"{i} " for i in range(50))
    assert len(stream.sent) < 10  # 50 pieces, a few sends


def test_a_piece_that_finds_the_sender_idle_goes_out_at_once():
    stream = _Slow(0)
    sender = SenderThread(lambda s: s.send(), "test")
    try:
        for piece in ("a", "b", "c"):
            assert stream.box.put(piece) is True
            sender.schedule(stream)
            deadline = time.monotonic() + 5
            while len(stream.sent) < ("a", "b", "c").index(piece) + 1 and time.monotonic() < deadline:
                time.sleep(0.001)
        assert stream.sent == ["a", "b", "c"]
    finally:
        sender.stop()


def test_a_failing_send_does_not_stop_the_sender():
    errors, sent = [], []

    def send(item):
        if item == "bad":
            raise RuntimeError("client gone")
        sent.append(item)

    sender = SenderThread(send, "test", errors.append)
    sender.schedule("bad")
    sender.schedule("good")
    sender.stop()
    assert sent == ["good"] and [str(e) for e in errors] == ["client gone"]


def test_merged_chunks_keep_the_text_order_and_the_final_chunks_end():
    usage = Usage(10, 3)
    merged = merge_chunks([GenerationChunk("a"), GenerationChunk("b"), GenerationChunk("c", "length", usage)])
    assert merged == GenerationChunk("abc", "length", usage)
    one = GenerationChunk("x")
    assert merge_chunks([one]) is one


def test_the_loop_gets_everything_that_arrived_while_it_was_busy():
    async def main():
        channel = ThreadToLoop(asyncio.get_running_loop())
        for i in range(5):
            channel.put(i)
        first = await channel.get_all()
        waiter = asyncio.ensure_future(channel.get_all())
        await asyncio.sleep(0)

        def produce():
            channel.put(5)
            channel.close()

        threading.Thread(target=produce).start()
        second = await asyncio.wait_for(waiter, 5)
        rest = await channel.get_all()
        if rest:  # 5 and the close may land in one wake-up or two
            second += rest
        return first, second, await channel.get_all()

    first, second, end = asyncio.run(main())
    assert first == [0, 1, 2, 3, 4] and second == [5] and end == []


@pytest.mark.parametrize("items", [0, 1, 200])
def test_a_producer_thread_delivers_every_item_once_in_order(items):
    async def main():
        channel = ThreadToLoop(asyncio.get_running_loop())

        def produce():
            for i in range(items):
                channel.put(i)
            channel.close()

        threading.Thread(target=produce).start()
        got = []
        while batch := await asyncio.wait_for(channel.get_all(), 5):
            got += batch
        return got

    assert asyncio.run(main()) == list(range(items))


# --- the retriever: a dynamic batch's rows fetched in one docstore query (tritonrag.kb.batched_search) -------------


def parse(queries, top_k=None, **params):
    texts = params.pop("texts", None)
    params.setdefault("mode", "dense")
    return parse_search(queries, DIM, top_k, None, params, SETTINGS, texts)


def _same_hits(a, b):
    return [[(h.chunk_id, h.score, h.similarity, h.text, h.found) for h in row] for row in a] == \
        [[(h.chunk_id, h.score, h.similarity, h.text, h.found) for h in row] for row in b]


def test_a_group_fetches_its_rows_in_one_docstore_query_with_the_hits_each_would_get_alone(tmp_path, monkeypatch):
    update_knowledge_base(tmp_path, small_settings(), [doc("a.txt", 30), doc("b.txt", 30)], replace_all=True,
                          embedder=FakeEmbedder(), progress=False)
    kb = KnowledgeBase(tmp_path)
    try:
        q = np.random.default_rng(1).normal(size=(4, DIM)).astype(np.float32)
        for mode in ("dense", "hybrid"):
            texts = {"texts": ["w1 w2"]} if mode == "hybrid" else {}
            requests = [parse(q[i:i + 1], top_k=2 + i, mode=mode, **texts) for i in range(4)]
            alone = [run_searches(kb, [r], SETTINGS)[0].rows for r in requests]
            queries = []
            monkeypatch.setattr(kb.docstore, "chunk_rows", lambda ids, real=kb.docstore.chunk_rows, seen=queries:
                                seen.append(ids) or real(ids))
            together = [r.rows for r in run_searches(kb, requests, SETTINGS)]
            monkeypatch.undo()
            assert len(queries) == 1, mode
            assert all(_same_hits(a, t) for a, t in zip(alone, together)), mode
        # a chunk the docstore lacks is dropped from its rows only
        requests = [parse(q[i:i + 1], top_k=3) for i in range(3)]
        full = [r.rows for r in run_searches(kb, requests, SETTINGS)]
        missing = full[1][0][0].chunk_id
        real = kb.docstore.chunk_rows
        monkeypatch.setattr(kb.docstore, "chunk_rows",
                            lambda ids: {k: v for k, v in real(ids).items() if k != missing})
        gapped = [r.rows for r in run_searches(kb, requests, SETTINGS)]
        expected = [[[h for h in row if h.chunk_id != missing] for row in rows] for rows in full]
        assert all(_same_hits(e, g) for e, g in zip(expected, gapped))
    finally:
        kb.close()
