"""The HAProxy configuration (tritonrag.deploy.load_balancer) and the compose layout of two replicas behind it."""

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tritonrag.deploy.load_balancer import (
    HAPROXY_CFG,
    Frontends,
    HealthCheck,
    Replica,
    compose_replicas,
    load_defaults,
    render_compose,
    render_haproxy,
    stream_timeout_s,
)

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker" / "compose.yaml"
REPLICAS = [Replica("a", "10.0.0.1", 8000, 8001, 8080), Replica("b", "10.0.0.2", 9000, 9001, 9080)]


def _sections(text: str) -> dict[str, list[str]]:
    sections, current = {}, None
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if not line.startswith(" "):
            current = line.strip()
            sections[current] = []
        else:
            sections[current].append(line.split(" #")[0].strip())
    return sections


def test_each_backend_health_checks_every_replica_on_its_own_url():
    sections = _sections(render_haproxy(REPLICAS, load_defaults()))
    assert "option httpchk GET /health" in sections["backend ingress"]
    assert "option httpchk GET /v2/health/ready" in sections["backend triton_http"]
    assert "option httpchk GET /v2/health/ready" in sections["backend triton_grpc"]
    assert "server a 10.0.0.1:8080" in sections["backend ingress"]
    assert "server b 10.0.0.2:9000" in sections["backend triton_http"]
    # gRPC: HTTP/2 cleartext to the server, its health on the HTTP port in HTTP/1
    assert "server b 10.0.0.2:9001 proto h2 port 9000 check-proto h1" in sections["backend triton_grpc"]
    assert any(line.endswith("proto h2") for line in sections["frontend triton_grpc"])


def test_replicas_under_a_supervisor_are_checked_on_its_readiness_not_tritons():
    """`tritonrag serve`'s /health/ready (port 8003) is false while a broken model is restored; Triton's is not."""
    from dataclasses import replace

    supervised = [replace(r, health=8003) for r in REPLICAS]
    sections = _sections(render_haproxy(supervised, load_defaults()))
    assert "option httpchk GET /health/ready" in sections["backend triton_http"]
    assert "server b 10.0.0.2:9000 port 8003" in sections["backend triton_http"]
    assert "server b 10.0.0.2:9001 proto h2 port 8003 check-proto h1" in sections["backend triton_grpc"]
    with pytest.raises(ValueError, match="health port"):
        render_haproxy([supervised[0], REPLICAS[1]], load_defaults())


def test_front_ends_default_to_the_settings_ports():
    settings = load_defaults()
    sections = _sections(render_haproxy(REPLICAS, settings))
    assert f"bind *:{settings.ingress.port}" in sections["frontend ingress"]
    assert f"bind *:{settings.server.http_port}" in sections["frontend triton_http"]
    assert f"bind *:{settings.server.grpc_port} proto h2" in sections["frontend triton_grpc"]
    sections = _sections(render_haproxy(REPLICAS, settings, Frontends("127.0.0.1", 1, 2, 3, 4)))
    assert "bind 127.0.0.1:1" in sections["frontend ingress"] and "bind 127.0.0.1:4" in sections["listen stats"]


def test_retries_and_timeouts_never_hang_and_come_from_the_settings():
    settings = load_defaults()
    defaults = _sections(render_haproxy(REPLICAS, settings))["defaults"]
    assert "retry-on conn-failure empty-response junk-response response-timeout 503" in defaults
    assert "option redispatch 1" in defaults and "retries 2" in defaults
    silence = round(stream_timeout_s(settings) * 1000)
    assert silence == round((max(settings.ingress.request_timeout_s, settings.rag.bls_timeout_s) + 30) * 1000)
    for name in ("client", "server", "tunnel"):
        assert f"timeout {name} {silence}ms" in defaults
    assert all(not line.startswith("timeout") or not line.endswith(" 0") for line in defaults)
    assert "option srvtcpka" in defaults
    assert not any("shutdown-sessions" in line for line in defaults), "a draining replica finishes its streams"


def test_a_dead_replica_leaves_the_pool_in_about_two_seconds():
    health = HealthCheck()
    assert health.inter_s + (health.fall - 1) * health.fastinter_s <= 2.0
    line = next(x for x in _sections(render_haproxy(REPLICAS, load_defaults(), health=health))["defaults"]
                if x.startswith("default-server"))
    assert "check inter 1000ms fastinter 500ms downinter 1000ms fall 3 rise 2" in line


def test_render_refuses_no_replicas_and_duplicate_names():
    with pytest.raises(ValueError, match="at least one"):
        render_haproxy([], load_defaults())
    with pytest.raises(ValueError, match="differ"):
        render_haproxy([REPLICAS[0], REPLICAS[0]], load_defaults())


def test_the_committed_config_is_the_rendered_one():
    assert HAPROXY_CFG.read_text() == render_compose(), "run python -m tritonrag.deploy.load_balancer"
    text = HAPROXY_CFG.read_text()
    assert "resolvers dns" in text and "nameserver dns 127.0.0.11:53" in text
    assert "init-addr last,libc,none" in text  # starts while a replica is down


@pytest.mark.skipif(shutil.which("haproxy") is None, reason="haproxy is not installed (scripts/setup.sh as root)")
def test_haproxy_accepts_the_configs(tmp_path):
    for name, text in (("compose.cfg", render_compose()), ("local.cfg", render_haproxy(REPLICAS, load_defaults()))):
        path = tmp_path / name
        path.write_text(text)
        result = subprocess.run([shutil.which("haproxy"), "-c", "-f", str(path)], capture_output=True, text=True,
                                timeout=30)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "ALERT" not in result.stdout + result.stderr


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


def test_compose_runs_two_replicas_behind_haproxy_with_the_config_mounted():
    services = _compose()["services"]
    haproxy = services["haproxy"]
    assert re.fullmatch(r"haproxy:2\.6\.\d+", haproxy["image"])
    mounts = dict(v.split(":")[:2] for v in haproxy["volumes"])
    assert mounts["../deploy/haproxy/haproxy.cfg"] == "/usr/local/etc/haproxy/haproxy.cfg"
    assert "8080:8080" in haproxy["ports"]
    assert all(p.startswith("127.0.0.1:") for p in haproxy["ports"] if p != "8080:8080"), "Triton: loopback only"
    assert "/healthz" in " ".join(haproxy["healthcheck"]["test"])
    for replica in compose_replicas():
        triton, ingress = services[replica.host], services[replica.ingress_host]
        assert "ports" not in triton and "ports" not in ingress, "reached through haproxy"
        assert ingress["command"][ingress["command"].index("--triton") + 1] == f"{replica.host}:{replica.grpc}"
        assert ingress["depends_on"][replica.host]["condition"] == "service_healthy"
        assert "8003/health/ready" in " ".join(triton["healthcheck"]["test"])  # the supervisor's readiness
        assert "/health'" in " ".join(ingress["healthcheck"]["test"])


def test_compose_tritonrag_services_run_as_1000_on_a_read_only_root():
    services = _compose()["services"]
    for name in ("triton-1", "triton-2", "ingress-1", "ingress-2"):
        service = services[name]
        assert service["user"] == "1000:1000" and service["read_only"] is True, name
        assert "/tmp" in service["tmpfs"] and "/home/triton-server" in service["tmpfs"], name
        assert service["cap_drop"] == ["ALL"], name
    for name in ("triton-1", "triton-2"):
        tmpfs = services[name]["tmpfs"]
        assert "/opt/tritonrag/logs" in tmpfs and "/opt/tritonrag/repositories" in tmpfs
        assert "TRITONRAG_TRITON_ADMIN_KEY" in services[name]["environment"]
    assert services["haproxy"]["read_only"] is True
