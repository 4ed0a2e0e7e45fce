import pytest

from tritonrag.errors import InvalidInput
from tritonrag.prompts.builder import TEMPLATES, ContextDocument, PromptBuilder

JINJA_SNIPPETS = ["{{ 7*7 }}", "{% for x in range(3) %}loop{% endfor %}", "{% for %}", "{# note #}", "{{ config }}"]


@pytest.fixture(scope="module")
def builder():
    return PromptBuilder(max_query_chars=200, max_context_chars=1000)


def test_names_lists_both_templates(builder):
    assert builder.names() == sorted(TEMPLATES)
    assert {"beluga_qa", "completion_qa"} <= set(builder.names())


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_every_template_renders_query_and_passages(builder, name):
    docs = [
        ContextDocument(text="Phileas Fogg lived at Savile Row.", title="Around the World", source="a.txt"),
        {"text": "Passepartout was his servant.", "title": "Around the World"},
    ]
    prompt = builder.build(name, "  Where did Fogg live?  ", docs)
    assert "Where did Fogg live?" in prompt
    assert "Phileas Fogg lived at Savile Row." in prompt
    assert "Passepartout was his servant." in prompt
    assert prompt.index("Phileas Fogg") < prompt.index("Passepartout")
    assert prompt == prompt.strip()
    assert builder.spec(name).stop  # each template carries stop strings


def test_beluga_layout(builder):
    prompt = builder.build("beluga_qa", "Who?", [{"text": "Fogg."}])
    assert prompt.startswith("### System:")
    assert prompt.index("### User:") < prompt.index("Who?") < prompt.index("[1] Fogg.") < prompt.index("### Assistant:")


def test_completion_layout_uses_first_title(builder):
    prompt = builder.build("completion_qa", "Who?", [{"text": "Fogg.", "title": "Eighty Days"}, {"text": "Aouda."}])
    assert "Eighty Days" in prompt
    assert "Passage 1: Fogg." in prompt
    assert "Passage 2: Aouda." in prompt
    assert '"Who?"' in prompt


@pytest.mark.parametrize("name", sorted(TEMPLATES))
def test_templates_render_without_documents(builder, name):
    prompt = builder.build(name, "Anything?", [])
    assert "Anything?" in prompt


@pytest.mark.parametrize("name", sorted(TEMPLATES))
@pytest.mark.parametrize("snippet", JINJA_SNIPPETS)
def test_retrieved_text_is_data_not_template_code(builder, name, snippet):
    text = f"before {snippet} after"
    prompt = builder.build(name, "What happened?", [{"text": text, "title": f"T {snippet}"}])
    assert text in prompt
    assert "49" not in prompt
    assert "looploop" not in prompt


@pytest.mark.parametrize("name", sorted(TEMPLATES))
@pytest.mark.parametrize("snippet", JINJA_SNIPPETS)
def test_query_is_data_not_template_code(builder, name, snippet):
    query = f"Explain {snippet} please"
    prompt = builder.build(name, query, [{"text": "plain passage"}])
    assert query in prompt
    assert "49" not in prompt


def test_unknown_template_lists_available_names(builder):
    with pytest.raises(InvalidInput) as info:
        builder.build("no_such_template", "q", [])
    message = str(info.value)
    assert "no_such_template" in message
    for name in TEMPLATES:
        assert name in message
    with pytest.raises(InvalidInput, match="beluga_qa"):
        builder.spec("nope")


@pytest.mark.parametrize("query", ["", "   ", "\n\t"])
def test_empty_query_rejected(builder, query):
    with pytest.raises(InvalidInput, match="empty"):
        builder.build("beluga_qa", query, [{"text": "x"}])


def test_oversized_query_rejected(builder):
    builder.build("beluga_qa", "q" * 200, [])  # exactly at the limit is fine
    with pytest.raises(InvalidInput, match="200"):
        builder.build("beluga_qa", "q" * 201, [])


def test_invalid_input_is_a_value_error():
    assert issubclass(InvalidInput, ValueError)


def test_context_over_budget_is_dropped_whole_documents():
    small = PromptBuilder(max_query_chars=100, max_context_chars=50)
    docs = [{"text": "A" * 20}, {"text": "B" * 25}, {"text": "C" * 10}, {"text": "D" * 2}]
    prompt = small.build("completion_qa", "q?", docs)
    assert "A" * 20 in prompt
    assert "B" * 25 in prompt
    assert "C" not in prompt  # 20 + 25 + 10 > 50: dropped entirely, never cut mid-text
    assert "D" not in prompt  # and nothing after the first document that does not fit
    assert "Passage 3" not in prompt


def test_context_exactly_at_budget_is_kept():
    small = PromptBuilder(max_query_chars=100, max_context_chars=30)
    prompt = small.build("beluga_qa", "q?", [{"text": "A" * 10}, {"text": "B" * 20}])
    assert "A" * 10 in prompt
    assert "B" * 20 in prompt
