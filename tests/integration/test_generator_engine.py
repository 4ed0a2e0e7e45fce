"""The generator engine under load: exact max_tokens, concurrency, cancellation, and its custom metrics."""

import json
import queue
import re
import threading
import time
import urllib.request

import numpy as np
import tritonclient.grpc as grpcclient

from .helpers import bytes_input, grpc_stream, outputs_of, post_json


def metrics(server):
    with urllib.request.urlopen(server.metrics_url, timeout=10) as response:
        return response.read().decode()


def metric(server, name, **labels):
    """Sum of a Prometheus metric's samples whose labels include ``labels``."""
    total = 0.0
    for line in metrics(server).splitlines():
        match = re.match(rf"^{name}\{{(.*)\}} (\S+)$", line)
        if match and all(f'{k}="{v}"' in match.group(1) for k, v in labels.items()):
            total += float(match.group(2))
    return total


def wait_for(condition, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.2)
    return False


def generator_inputs(prompt, **sampling):
    stream = grpcclient.InferInput("stream", [1], "BOOL")
    stream.set_data_from_numpy(np.array([True]))
    return [bytes_input("text_input", [prompt]), bytes_input("sampling_parameters", [json.dumps(sampling)]), stream]


def test_engine_is_reported_in_metrics(server):
    assert 'tritonrag_generator_requests_in_flight{engine="' in metrics(server)
    assert "tritonrag_generator_time_to_first_token_seconds_bucket" in metrics(server)


def test_max_tokens_is_honoured_exactly(server):
    before = metric(server, "tritonrag_generator_output_tokens_total")
    status, reply = post_json(f"http://{server.http_url}/v2/models/generator/generate",
                              {"text_input": "Count: one, two, three, four,", "parameters": {"max_tokens": 7}})
    assert status == 200, reply
    assert reply["finish_reason"] == "length"
    assert wait_for(lambda: metric(server, "tritonrag_generator_output_tokens_total") - before == 7, 5)


def test_concurrent_requests_all_complete_and_overlap(server):
    prompts = [f"Story {i}: Once upon a time, in a village by the sea," for i in range(8)]
    results, peak = {}, [0.0]
    done = threading.Event()

    def watch():
        while not done.is_set():
            peak[0] = max(peak[0], metric(server, "tritonrag_generator_requests_in_flight"))
            time.sleep(0.1)

    def run(i):
        results[i] = grpc_stream(server.grpc_url, "generator", generator_inputs(prompts[i], max_tokens=24))

    watcher = threading.Thread(target=watch)
    watcher.start()
    threads = [threading.Thread(target=run, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    done.set()
    watcher.join()
    assert len(results) == 8
    for responses, error in results.values():
        assert error is None
        assert outputs_of(responses[-1], "finish_reason") in ("length", "stop")
        assert "".join(outputs_of(r, "text_output") or "" for r in responses).strip()
    assert peak[0] > 1, "requests should be generated concurrently on one instance"


def _cancel_after_first_tokens(server, model, inputs, parameters=None):
    """Start a long stream, read a few responses, cancel it; returns the number of responses seen."""
    results = queue.Queue()
    client = grpcclient.InferenceServerClient(server.grpc_url)
    client.start_stream(callback=lambda result, error: results.put((result, error)))
    client.async_stream_infer(model, inputs, parameters=parameters)
    seen = 0
    while seen < 4:
        _, error = results.get(timeout=120)
        assert error is None, error
        seen += 1
    client.stop_stream(cancel_requests=True)
    client.close()
    return seen


def test_cancelled_generator_stream_stops_engine_work(server):
    cancelled = metric(server, "tritonrag_generator_requests_total", finish_reason="cancelled")
    _cancel_after_first_tokens(server, "generator", generator_inputs("The history of the world, chapter one:",
                                                                     max_tokens=1000))
    assert wait_for(lambda: metric(server, "tritonrag_generator_requests_in_flight") == 0, 30)
    assert metric(server, "tritonrag_generator_requests_total", finish_reason="cancelled") == cancelled + 1
    tokens = metric(server, "tritonrag_generator_output_tokens_total")
    time.sleep(1.0)
    assert metric(server, "tritonrag_generator_output_tokens_total") == tokens, "nothing generates for nobody"


def test_cancelling_rag_cancels_its_generator_request(server):
    cancelled = metric(server, "tritonrag_generator_requests_total", finish_reason="cancelled")
    stream = grpcclient.InferInput("stream", [1], "BOOL")
    stream.set_data_from_numpy(np.array([True]))
    _cancel_after_first_tokens(server, "rag", [bytes_input("text_input", ["Tell me about the journey"]), stream],
                               parameters={"max_tokens": 1000, "template": "qa"})
    assert wait_for(lambda: metric(server, "tritonrag_generator_requests_in_flight") == 0, 30)
    assert metric(server, "tritonrag_generator_requests_total", finish_reason="cancelled") == cancelled + 1


def test_bad_sampling_parameters_fail_alone_while_others_stream(server):
    good = {}

    def long_request():
        good["result"] = grpc_stream(server.grpc_url, "generator", generator_inputs("A long tale:", max_tokens=32))

    thread = threading.Thread(target=long_request)
    thread.start()
    url = f"http://{server.http_url}/v2/models/generator/generate"
    for sampling, message in [
        ({"max_tokens": 0}, "max_tokens must be between 1 and"),
        ({"temperature": "hot"}, "temperature must be a number"),
        ({"stop": 5}, "stop must be a string or a list of strings"),
        ({"seed": 1.5}, "seed must be an integer"),
        ({"top_k": -3}, "top_k must be >= 0"),
    ]:
        status, reply = post_json(url, {"text_input": "Hi", "sampling_parameters": json.dumps(sampling)})
        assert status == 400 and message in reply["error"], (sampling, reply)
    thread.join(300)
    responses, error = good["result"]
    assert error is None and outputs_of(responses[-1], "finish_reason") == "length"


def test_sampling_with_a_seed_is_reproducible(server):
    url = f"http://{server.http_url}/v2/models/generator/generate"
    body = {"text_input": "My favourite colour is",
            "sampling_parameters": json.dumps({"max_tokens": 12, "temperature": 1.0, "top_p": 0.9, "seed": 7})}
    first, second = post_json(url, body)[1], post_json(url, body)[1]
    assert first["text_output"] == second["text_output"]
