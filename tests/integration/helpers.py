"""Small client-side helpers for the integration tests (plain HTTP and tritonclient)."""

import json
import queue
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
