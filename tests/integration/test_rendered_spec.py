"""A repository rendered from a deployment spec, served by a real tritonserver: instance counts and the settings the
spec overrides reach the instances (through config parameters), over HTTP and gRPC. The stand-in embedder and
generator keep it fast; the retriever and prompt builder are real."""

from pathlib import Path

import pytest
import tritonclient.grpc as grpcclient
import tritonclient.http as httpclient

from tritonrag.deploy.plan import load_plan
from tritonrag.deploy.render import render_repository
from tritonrag.deploy.server import Ports, TritonServer
from tritonrag.settings import CONFIG_ENV, load_settings

from .helpers import bytes_input, grpc_stream, post_json

ROOT = Path(__file__).resolve().parents[2]
SPEC = """
cluster: {gpus: 0}
components:
  embedder: {instances: 2, batching: {max_batch_size: 16, preferred_batch_sizes: [8, 16]}}
  prompt_builder: {instances: 2, engine: {max_query_chars: 40}}
  generator: {engine: {max_tokens_default: 5}}
  generator_small: {role: generator, engine: {max_tokens_default: 3}}
  rag: {engine: {critic_generator: generator_small}}
"""


@pytest.fixture(scope="module")
def spec_server(tmp_path_factory, knowledge_base):
    folder = tmp_path_factory.mktemp("spec")
    (folder / "spec.yaml").write_text(SPEC)
    repository = folder / "repository"
    env = {CONFIG_ENV: str(ROOT / "benchmarks" / "stand_in.toml")}
    settings = load_settings(env[CONFIG_ENV])
    render_repository(settings, repository, plan=load_plan(folder / "spec.yaml", settings))
    server = TritonServer(repository, settings.home, Ports.choose(0, 0, 0), env=env,
                          log_file=folder / "tritonserver.log")
    server.start(settings.server.startup_timeout_s)
    yield server
    server.stop()


def test_instance_groups_and_batching_come_from_the_spec(spec_server):
    http = httpclient.InferenceServerClient(spec_server.http_url)
    config = http.get_model_config("embedder")
    assert config["instance_group"][0]["count"] == 2 and config["instance_group"][0]["kind"] == "KIND_CPU"
    assert config["max_batch_size"] == 16 and config["dynamic_batching"]["preferred_batch_size"] == [8, 16]
    grpc = grpcclient.InferenceServerClient(spec_server.grpc_url)
    builder = grpc.get_model_config("prompt_builder", as_json=True)["config"]
    assert builder["instance_group"][0]["count"] == 2
    assert builder["parameters"]["max_query_chars"]["string_value"] == "40"


def test_overridden_settings_reach_the_instances(spec_server):
    grpc = grpcclient.InferenceServerClient(spec_server.grpc_url)
    with pytest.raises(Exception, match="the limit is 40"):
        grpc.infer("prompt_builder", [bytes_input("query", ["x" * 41], [1])])
    # the generator's max_tokens_default 5, what a RAG request that sets none gets: the stand-in generator streams
    # exactly max_tokens words
    status, body = post_json(f"http://{spec_server.http_url}/v2/models/rag/generate", {"text_input": "Who is Fogg?"})
    assert status == 200 and len(body["text_output"].split()) == 5, body
    responses, error = grpc_stream(spec_server.grpc_url, "rag", [bytes_input("text_input", ["Who is Fogg?"], [1])])
    assert error is None and responses


def test_a_second_generator_is_its_own_model_and_the_critic_runs_on_it(spec_server):
    http = httpclient.InferenceServerClient(spec_server.http_url)
    assert http.is_model_ready("generator_small")
    status, body = post_json(f"http://{spec_server.http_url}/v2/models/generator_small/generate",
                             {"text_input": "one two three four five six"})
    assert status == 200 and len(body["text_output"].split()) == 3, body  # its own max_tokens_default
    # qa-checked asks the critic generator for a JSON verdict; the stand-in engine refuses structured output, so
    # the error names the model the critic ran on
    status, body = post_json(f"http://{spec_server.http_url}/v2/models/rag/generate",
                             {"text_input": "Who is Fogg?", "parameters": {"flow": "qa-checked"}})
    assert status == 400 and "generator_small: structured output" in body["error"], body
