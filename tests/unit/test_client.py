"""The Python client without a server: what it sends (history as its own input) and what it reads of responses
(usage and the question searched, on the final one)."""

import json

from tritonrag_client.client import RagAnswer, _body, _event, _history_json

HISTORY = [{"role": "user", "content": "Who is Phileas Fogg?"}, {"role": "assistant", "content": "A gentleman."}]


def test_history_travels_as_the_history_input_not_as_a_parameter():
    body = _body("Where was he born?", False, {"flow": "rag-chat"}, _history_json(HISTORY))
    assert json.loads(body["history"]) == HISTORY and body["parameters"] == {"flow": "rag-chat"}
    assert "history" not in _body("q", True, {}, None)


def test_the_final_response_gives_usage_and_query():
    usage = {"prompt_tokens": 30, "completion_tokens": 5, "total_tokens": 35}
    answer = RagAnswer()
    answer.add(_event({"text_output": "Fogg", "sources": "[]"}))
    answer.add(_event({"text_output": "", "finish_reason": "stop", "usage": json.dumps(usage),
                       "query": [b"Where was Phileas Fogg born?"]}))
    assert (answer.text, answer.usage, answer.query) == ("Fogg", usage, "Where was Phileas Fogg born?")
    event = _event({"text_output": "x"})
    assert event.usage is None and event.query is None
