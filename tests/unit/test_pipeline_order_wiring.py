"""Citations map back through the prompt's passage order ([prompt_builder] passage_order = "document")."""

import pytest

from tritonrag.pipeline.citations import CitationFilter


def test_citations_are_shown_and_recorded_by_source_number():
    cite = CitationFilter(3, (2, 0, 1))  # prompt [1] is source 3, [2] source 1, [3] source 2
    text = cite.feed("Fogg left [1] and won [2, 3]. Wrong [4].") + cite.flush()
    assert text == "Fogg left [3] and won [1, 2]. Wrong."
    assert cite.cited == [3, 1, 2]


def test_an_empty_order_keeps_the_numbers():
    cite = CitationFilter(2)
    assert cite.feed("a [2] b [1]") + cite.flush() == "a [2] b [1]" and cite.cited == [2, 1]


def test_an_order_that_is_no_permutation_is_refused():
    with pytest.raises(ValueError, match="once each"):
        CitationFilter(3, (0, 0, 1))


def test_the_pipeline_maps_an_answers_citations_through_the_prompts_passage_order():
    import json

    from test_pipeline import PASSAGES, FakeStages, TextEvent, request, run

    from tritonrag.pipeline.flow import RagPipeline
    from tritonrag.pipeline.types import GenerationChunk, Prompt

    class DocumentOrder(FakeStages):
        async def build(self, query, passages, options):
            await super().build(query, passages, options)
            return Prompt(f"Q: {query}", ("\n\n",), len(passages), False, (1, 0))  # [1] is chunk 3, [2] chunk 7

    chunks = [GenerationChunk("He won [1] after leaving [2]."), GenerationChunk("", "stop")]
    events = run(RagPipeline(DocumentOrder(list(PASSAGES), chunks, {})), request())
    assert "".join(e.text for e in events if isinstance(e, TextEvent)) == "He won [2] after leaving [1]."
    cited = json.loads(events[-1].citations)
    assert [(c["n"], c["chunk_id"]) for c in cited] == [(2, 3), (1, 7)]


def test_local_stages_carry_the_builders_order():
    import asyncio

    from test_pipeline import PASSAGES

    from tritonrag.pipeline.local_stages import LocalStages
    from tritonrag.pipeline.stages import PromptOptions
    from tritonrag.prompts.builder import PromptBuilder

    passages = [PASSAGES[0].__class__(7, 0.9, "late", {"source": "b.txt", "position": 9}),
                PASSAGES[0].__class__(3, 0.5, "early", {"source": "b.txt", "position": 2})]
    local = LocalStages(None, None, None, PromptBuilder(200, 1000, passage_order="document"), "qa", None, None)
    prompt = asyncio.run(local.build("q", passages, PromptOptions("qa")))
    assert prompt.order == (1, 0) and prompt.text.index("early") < prompt.text.index("late")
