"""Start one real tritonserver on the committed model repository for the whole test session, serving with
tests/integration/settings.toml (a small generator model) unless TRITONRAG_CONFIG names other settings."""

import os
from pathlib import Path

import pytest

from tritonrag.deploy.server import Ports, TritonServer
from tritonrag.kb.search import KnowledgeBase
from tritonrag.kb.versions import published_version
from tritonrag.settings import CONFIG_ENV, load_settings

REPOSITORY = Path(__file__).resolve().parents[2] / "model_repository"
CONFIG = os.environ.get(CONFIG_ENV) or str(Path(__file__).with_name("settings.toml"))


def pytest_collection_modifyitems(items):
    for item in items:
        if "integration" in str(item.fspath):
            item.add_marker(pytest.mark.integration)


@pytest.fixture(scope="session")
def settings():
    return load_settings(CONFIG)


@pytest.fixture(scope="session")
def knowledge_base(settings):
    if published_version(settings.index_dir) is None:
        pytest.fail(f"no knowledge base at {settings.index_dir}: run scripts/setup.sh first")
    kb = KnowledgeBase(settings.index_dir)
    yield kb
    kb.close()


@pytest.fixture(scope="session")
def server(settings, knowledge_base):
    triton = TritonServer(REPOSITORY, settings.home, Ports.choose(0, 0, 0), env={CONFIG_ENV: CONFIG})
    triton.start(settings.server.startup_timeout_s)
    yield triton
    triton.stop()
    assert triton.process.returncode is not None


INGRESS_KEY = "test-key-" + "0" * 24  # the tests' API key (its name: "tests")


@pytest.fixture(scope="session")
def ingress(server, settings):
    """The OpenAI-compatible ingress in front of the session's Triton, with one API key."""
    from tritonrag.deploy.ingress_process import IngressProcess

    process = IngressProcess(server.grpc_url, Ports.choose(0, 0, 0).http, settings.home,
                             env={CONFIG_ENV: CONFIG, "TRITONRAG_API_KEYS": f"tests:{INGRESS_KEY}"})
    process.start()
    process.api_key = INGRESS_KEY
    yield process
    process.stop()
