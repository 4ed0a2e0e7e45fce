"""Small client-side helpers for the integration tests (plain HTTP and tritonclient)."""

import json
import queue
import re
import urllib.error
import urllib.request

import numpy as np
import tritonclient.grpc as grpcclient


def post_json(url, body, timeout=120):
    """POST JSON; returns (status, parsed body)."""
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def sse_events(url, body, timeout=120):
    """POST to a generate_stream endpoint; returns the list of decoded `data:` events."""
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    events = []
    with urllib.request.urlopen(request, timeout=timeout) as response:
        assert response.headers.get("Content-Type", "").startswith("text/event-stream")
        for raw in response:
            line = raw.decode().strip()
            if line.startswith("data:"):
                events.append(json.loads(line[5:]))
    return events


def bytes_input(name, values, shape=None, protocol=grpcclient):
    array = np.array([v if isinstance(v, bytes) else v.encode() for v in values], dtype=np.object_)
    array = array.reshape(shape or [len(values)])
    tensor = protocol.InferInput(name, list(array.shape), "BYTES")
    tensor.set_data_from_numpy(array)
    return tensor


def grpc_stream(url, model, inputs, parameters=None, timeout=300):
    """Run one decoupled request over a gRPC stream; returns (list of result objects, error or None)."""
    results = queue.Queue()
    client = grpcclient.InferenceServerClient(url)
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    try:
        client.async_stream_infer(model, inputs, parameters=parameters, enable_empty_final_response=True)
        collected = []
        while True:
            result, error = results.get(timeout=timeout)
            if error is not None:
                return collected, error
            collected.append(result)
            if result.get_response().parameters["triton_final_response"].bool_param:
                return collected, None
    finally:
        client.stop_stream()
        client.close()


def outputs_of(result, name):
    """A decoded string output of a gRPC result, or None when the response does not carry it."""
    if not any(o.name == name for o in result.get_response().outputs):
        return None
    return result.as_numpy(name).reshape(-1)[0].decode()


BARE_EXCEPTION = re.compile(r"^\s*[\w.]*(Error|Exception)?\s*:?\s*$")


def assert_clear(message, words):
    """A bad request's error message: non-empty, not a bare exception name (nor one with an empty message after
    it), and naming what to change (any of ``words``, case-insensitive)."""
    assert message and message.strip(), "an empty error message"
    assert not BARE_EXCEPTION.match(message), f"a bare exception name: {message!r}"
    assert not re.search(r"(Error|Exception):\s*$", message), f"an exception without its message: {message!r}"
    words = (words,) if isinstance(words, str) else words
    assert any(w.lower() in message.lower() for w in words), f"{message!r} names none of {words}"


def post_raw(url, data, timeout=120):
    """POST raw bytes as JSON; returns (status, the body's error message or its text)."""
    request = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, text = response.status, response.read().decode("utf-8", "replace")
    except urllib.error.HTTPError as exc:
        status, text = exc.code, exc.read().decode("utf-8", "replace")
    try:
        body = json.loads(text)
    except ValueError:
        return status, text
    return status, body.get("error", text) if isinstance(body, dict) else text


def sse_error(url, body, timeout=120):
    """POST to a generate_stream endpoint a request that should fail: (HTTP status, the error message), whether
    the error came as the HTTP status or as an SSE event after a 200."""
    request = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST")
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            for raw in response:
                line = raw.decode().strip()
                if line.startswith("data:"):
                    event = json.loads(line[5:])
                    if "error" in event:
                        return response.status, event["error"]
            return response.status, None
    except urllib.error.HTTPError as exc:
        text = exc.read().decode("utf-8", "replace")
        try:
            return exc.code, json.loads(text).get("error", text)
        except ValueError:
            return exc.code, text
