import socket

import pytest

from tritonrag.deploy.runtime import find_runtime, local_runtime_dir
from tritonrag.deploy.server import Ports, free_port, port_is_free


@pytest.fixture
def busy_port():
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    yield sock.getsockname()[1]
    sock.close()


def three_free_ports():
    socks = []
    try:
        for _ in range(3):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def test_port_is_free(busy_port):
    assert not port_is_free(busy_port)
    assert port_is_free(free_port())


def test_choose_keeps_free_preferred_ports():
    http, grpc, metrics = three_free_ports()
    assert Ports.choose(http, grpc, metrics) == Ports(http, grpc, metrics)


def test_choose_replaces_a_busy_port(busy_port, caplog):
    _, grpc, metrics = three_free_ports()
    with caplog.at_level("WARNING"):
        ports = Ports.choose(busy_port, grpc, metrics)
    assert ports.http != busy_port
    assert ports.http > 0
    assert port_is_free(ports.http)
    assert (ports.grpc, ports.metrics) == (grpc, metrics)
    assert str(busy_port) in caplog.text


def test_choose_zero_means_any_port():
    ports = Ports.choose(0, 0, 0)
    assert all(p > 0 for p in (ports.http, ports.grpc, ports.metrics))


def test_find_runtime_without_any_install(monkeypatch, tmp_path):
    empty_bin = tmp_path / "bin"
    empty_bin.mkdir()
    monkeypatch.setenv("PATH", str(empty_bin))
    monkeypatch.delenv("TRITONRAG_USE_LOCAL_TRITON", raising=False)
    home = tmp_path / "home"
    with pytest.raises(FileNotFoundError, match="install-runtime") as info:
        find_runtime(home)
    assert str(local_runtime_dir(home)) in str(info.value)


def test_choose_never_hands_out_the_same_port_twice():
    port = three_free_ports()[0]
    ports = Ports.choose(port, port, port)
    assert len({ports.http, ports.grpc, ports.metrics}) == 3
