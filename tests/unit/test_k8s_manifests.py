"""deploy/k8s: every manifest parses, the pieces agree with each other (probes, volumes, Service, HPA and the
Prometheus adapter's rules), the example spec and settings stay loadable by tritonrag itself, and, where the
tools are installed, the manifests pass Kubernetes' JSON schemas (kubernetes-validate, offline), yamllint and
`kubectl kustomize`."""

from __future__ import annotations

import re
import shutil
import subprocess
from functools import cache
from pathlib import Path

import pytest
import yaml

from tritonrag.deploy.placement import Gpu
from tritonrag.deploy.plan import plan_deployment
from tritonrag.deploy.spec import COMPONENTS, load_spec
from tritonrag.settings import load_settings

K8S = Path(__file__).resolve().parents[2] / "deploy" / "k8s"
NOT_MANIFESTS = {"prometheus-adapter/helm-values.yaml"}  # Helm chart values, not a Kubernetes object
APPLIED_ON_THEIR_OWN = {"ingest-job.yaml"}  # besides prometheus-adapter/ (see kustomization.yaml)
NAMESPACE = "tritonrag"
INDEX_MOUNT = "/opt/tritonrag/index"
LAUNCHER_STOP_S = 30  # tritonrag.deploy.server.TritonServer.stop: SIGINT, then SIGKILL after this long


def rel(path: Path) -> str:
    return path.relative_to(K8S).as_posix()


YAML_FILES = sorted(rel(p) for p in K8S.rglob("*.yaml"))


@cache
def documents(name: str) -> tuple[dict, ...]:
    return tuple(d for d in yaml.safe_load_all((K8S / name).read_text()) if d is not None)


def manifest_files() -> list[str]:
    return [f for f in YAML_FILES if f not in NOT_MANIFESTS and f != "kustomization.yaml"]


@cache
def objects() -> dict[tuple[str, str], dict]:
    found = {}
    for name in manifest_files():
        for doc in documents(name):
            key = (doc["kind"], doc["metadata"]["name"])
            assert key not in found, f"{key} defined twice"
            found[key] = doc
    return found


def pod_spec(kind: str, name: str) -> dict:
    return objects()[(kind, name)]["spec"]["template"]["spec"]


def container(kind: str, name: str) -> dict:
    (only,) = pod_spec(kind, name)["containers"]
    return only


def port_number(c: dict, port: int | str) -> int:
    if isinstance(port, int):
        return port
    (number,) = [p["containerPort"] for p in c["ports"] if p["name"] == port]
    return number


def configmap_file(key: str) -> str:
    return objects()[("ConfigMap", "tritonrag-spec")]["data"][key]


@cache
def adapter_rules() -> list[dict]:
    return yaml.safe_load(objects()[("ConfigMap", "tritonrag-adapter-rules")]["data"]["config.yaml"])["rules"]


def test_the_expected_files_exist():
    for name in ("kustomization.yaml", "README.md", "deployment.yaml", "service.yaml", "hpa.yaml", "storage.yaml",
                 "configmap.yaml", "ingest-job.yaml", "prometheus-adapter/adapter-rules.yaml"):
        assert (K8S / name).is_file(), name


@pytest.mark.parametrize("name", YAML_FILES)
def test_every_file_parses_and_names_its_objects(name):
    docs = documents(name)
    assert docs, f"{name} holds no YAML document"
    if name in NOT_MANIFESTS or name == "kustomization.yaml":
        return
    for doc in docs:
        assert {"apiVersion", "kind", "metadata"} <= set(doc), f"{name}: not a Kubernetes object"
        if doc["kind"] != "Namespace":
            expected = "monitoring" if name.startswith("prometheus-adapter/") else NAMESPACE
            assert doc["metadata"].get("namespace") == expected, f"{name}: {doc['kind']} namespace"


def test_kustomization_lists_every_manifest_but_the_ones_applied_on_their_own():
    kustomization = documents("kustomization.yaml")[0]
    listed = set(kustomization["resources"])
    for name in listed:
        assert (K8S / name).is_file(), f"kustomization.yaml lists missing {name}"
    top_level = {f for f in manifest_files() if "/" not in f}
    assert listed == top_level - APPLIED_ON_THEIR_OWN


def test_deployment_runs_the_spec_on_one_gpu_with_triton_ports():
    deployment = objects()[("Deployment", "tritonrag")]
    assert deployment["spec"]["replicas"] == 2
    c = container("Deployment", "tritonrag")
    assert c["image"].startswith("tritonrag:")
    assert c["args"][:2] == ["tritonrag", "serve"] and "--spec" in c["args"]
    assert c["args"][c["args"].index("--spec") + 1] == "/opt/tritonrag/spec.yaml"
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"http": 8000, "grpc": 8001, "metrics": 8002}
    resources = c["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 1
    assert resources["requests"].get("nvidia.com/gpu", 1) == 1
    env = {e["name"]: e["value"] for e in c["env"]}
    assert env["TRITONRAG_HOME"] == "/opt/tritonrag"
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/opt/tritonrag/spec.yaml"]["subPath"] == "spec.yaml"
    assert mounts[env["TRITONRAG_CONFIG"]]["subPath"] == "tritonrag.toml"
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == "8002"
    spec = pod_spec("Deployment", "tritonrag")
    assert spec["nodeSelector"] and spec["tolerations"]


def test_probes_use_triton_health_endpoints_and_allow_for_model_loading():
    c = container("Deployment", "tritonrag")
    ready, live, startup = c["readinessProbe"]["httpGet"], c["livenessProbe"]["httpGet"], c["startupProbe"]
    assert ready["path"] == "/v2/health/ready" and port_number(c, ready["port"]) == 8000
    assert live["path"] == "/v2/health/live" and port_number(c, live["port"]) == 8000
    assert startup["httpGet"]["path"] == "/v2/health/ready"
    startup_budget_s = startup["periodSeconds"] * startup["failureThreshold"]
    assert startup_budget_s >= 600, "model loading takes minutes"


def test_termination_leaves_room_for_triton_to_drain():
    spec = pod_spec("Deployment", "tritonrag")
    pre_stop = container("Deployment", "tritonrag")["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert spec["terminationGracePeriodSeconds"] > int(pre_stop[1]) + LAUNCHER_STOP_S


def test_index_is_one_rwx_claim_read_only_in_the_servers_and_written_by_the_ingest_job():
    claim = objects()[("PersistentVolumeClaim", "tritonrag-index")]
    assert "ReadWriteMany" in claim["spec"]["accessModes"]

    def index_mount(kind, name):
        volumes = {v["name"]: v for v in pod_spec(kind, name)["volumes"]}
        (mount,) = [m for m in container(kind, name)["volumeMounts"] if m["mountPath"] == INDEX_MOUNT]
        return volumes[mount["name"]], mount

    volume, mount = index_mount("Deployment", "tritonrag")
    assert volume["persistentVolumeClaim"]["claimName"] == "tritonrag-index"
    assert mount["readOnly"] is True

    volume, mount = index_mount("Job", "tritonrag-ingest")
    assert volume["persistentVolumeClaim"]["claimName"] == "tritonrag-index"
    assert not mount.get("readOnly") and not volume["persistentVolumeClaim"].get("readOnly")
    job = container("Job", "tritonrag-ingest")
    assert job["args"][:3] == ["tritonrag", "ingest", "/docs"]
    assert job["image"] == container("Deployment", "tritonrag")["image"]
    assert any(m["mountPath"] == "/docs" for m in job["volumeMounts"])


def test_service_selects_the_server_pods_on_triton_ports():
    service = objects()[("Service", "tritonrag")]
    assert service["spec"]["type"] == "ClusterIP"
    pod_labels = objects()[("Deployment", "tritonrag")]["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    c = container("Deployment", "tritonrag")
    ports = {p["name"]: p for p in service["spec"]["ports"]}
    assert {name: p["port"] for name, p in ports.items()} == {"http": 8000, "grpc": 8001, "metrics": 8002}
    assert ports["grpc"]["appProtocol"] == "grpc"
    for p in ports.values():
        assert port_number(c, p["targetPort"]) == p["port"]
    pdb = objects()[("PodDisruptionBudget", "tritonrag")]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()


def test_adapter_rules_are_in_the_adapters_format():
    rules = adapter_rules()
    assert rules
    for rule in rules:
        assert set(rule) <= {"seriesQuery", "seriesFilters", "resources", "name", "metricsQuery"}
        assert rule["resources"]["overrides"] == {"namespace": {"resource": "namespace"}, "pod": {"resource": "pod"}}
        series = re.match(r"\w+", rule["seriesQuery"]).group()
        assert re.search(rule["name"]["matches"], series), f"name.matches does not match {series}"
        assert "<<.LabelMatchers>>" in rule["metricsQuery"] and "<<.GroupBy>>" in rule["metricsQuery"]
    by_name = {rule["name"]["as"]: rule for rule in rules}
    queue = by_name["tritonrag_queue_time_us_per_request"]["metricsQuery"]
    for needed in ("rate(nv_inference_queue_duration_us", "rate(nv_inference_request_success", *COMPONENTS):
        assert needed in queue
    values = documents("prometheus-adapter/helm-values.yaml")[0]
    assert values["rules"]["existing"] == "tritonrag-adapter-rules"


def test_hpa_scales_the_deployment_on_metrics_the_adapter_serves():
    hpa = objects()[("HorizontalPodAutoscaler", "tritonrag")]
    assert hpa["apiVersion"] == "autoscaling/v2"
    spec = hpa["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "tritonrag"}
    # the cluster-level bounds the spec's min/max_instances imply (what `tritonrag render --dry-run` prints)
    assert load_spec(configmap_file("spec.yaml")).replica_range() == (spec["minReplicas"], spec["maxReplicas"])
    replicas = objects()[("Deployment", "tritonrag")]["spec"]["replicas"]
    assert spec["minReplicas"] <= replicas <= spec["maxReplicas"]
    served = {rule["name"]["as"] for rule in adapter_rules()}
    metrics = {m["pods"]["metric"]["name"]: m["pods"]["target"] for m in spec["metrics"]}
    assert set(metrics) == {"tritonrag_queue_time_us_per_request", "tritonrag_generator_requests_in_flight"}
    assert set(metrics) <= served
    assert all(t["type"] == "AverageValue" for t in metrics.values())
    # the in-flight target is a fraction of what one generator runs at once (engine.max_num_seqs)
    generator = {c.name: c for c in load_spec(configmap_file("spec.yaml")).components}["generator"]
    in_flight = float(metrics["tritonrag_generator_requests_in_flight"]["averageValue"])
    assert 0 < in_flight < generator.engine["max_num_seqs"]
    assert spec["behavior"]["scaleDown"]["stabilizationWindowSeconds"] >= 300


def test_configmap_spec_loads_through_deploy_spec_and_fits_one_gpu(settings):
    text = configmap_file("spec.yaml")
    assert set(yaml.safe_load(text)["components"]) == set(COMPONENTS)
    spec = load_spec(text)
    assert spec.gpus is None  # gpus: detect
    by_name = {c.name: c for c in spec.components}
    assert {n: (c.device, c.gpu_share) for n, c in by_name.items()} == {
        "embedder": ("gpu", 0.1), "retriever": ("gpu", 0.1), "prompt_builder": ("cpu", 0.0),
        "reranker": ("gpu", 0.05), "generator": ("gpu", 0.75), "rag": ("cpu", 0.0)}
    assert by_name["embedder"].batching.preferred_batch_sizes == (16, 32)
    assert (by_name["embedder"].min_instances, by_name["embedder"].max_instances) == (2, 8)
    # applied to the pod's settings and placed on the one GPU a pod gets, as `tritonrag serve --spec` does
    deployment = plan_deployment(spec, settings, (Gpu(0, 80.0),))
    assert set(deployment.gpu_load()) == {0} and deployment.gpu_load()[0][0] <= 1.0
    assert deployment.components["generator"].overrides == {"max_num_seqs": 64}


@pytest.fixture
def settings(monkeypatch, tmp_path):
    """The settings a server pod runs with: the packaged defaults under the ConfigMap's tritonrag.toml."""
    monkeypatch.setenv("TRITONRAG_HOME", "/opt/tritonrag")
    path = tmp_path / "tritonrag.toml"
    path.write_text(configmap_file("tritonrag.toml"))
    return load_settings(path)


def test_configmap_settings_load_and_fit_the_pod(settings):
    assert str(settings.index_dir).startswith(INDEX_MOUNT + "/")  # the knowledge base is on the shared volume
    # the launcher must give up on Triton before Kubernetes gives up on the pod, or the probe budget is moot
    startup = container("Deployment", "tritonrag")["startupProbe"]
    assert 300 <= settings.server.startup_timeout_s < startup["periodSeconds"] * startup["failureThreshold"]


def test_manifests_match_the_kubernetes_schemas():
    try:
        from kubernetes_validate import utils
    except ImportError:
        pytest.skip("kubernetes-validate is not installed (pip install kubernetes-validate): schema check skipped")
    bundled = utils.all_versions()
    versions = sorted({bundled[0], bundled[-1]})  # the oldest and newest Kubernetes it bundles schemas for
    problems = []
    for name in manifest_files():
        for doc in documents(name):
            for version in versions:
                try:
                    utils.validate(doc, version, strict=True)  # strict: unknown fields are errors too
                except utils.ValidationError as exc:
                    path = ".".join(str(p) for p in exc.path)
                    problems.append(f"{name} {doc['kind']} @ {version}: {path}: {exc.message}")
                except utils.SchemaNotFoundError as exc:  # e.g. a removed apiVersion such as autoscaling/v2beta2
                    problems.append(f"{name}: {exc.message}")
    assert not problems, "\n".join(problems)


def test_yamllint_is_clean():
    try:
        from yamllint import linter
        from yamllint.config import YamlLintConfig
    except ImportError:
        pytest.skip("yamllint is not installed (pip install yamllint): lint skipped")
    config = YamlLintConfig(file=str(K8S / ".yamllint"))
    problems = [f"{name}:{p.line}:{p.column} {p.level} {p.message}"
                for name in YAML_FILES for p in linter.run((K8S / name).read_text(), config)]
    assert not problems, "\n".join(problems)


def test_kustomize_builds_the_listed_objects():
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: `kubectl kustomize` check skipped")
    out = subprocess.run([kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    built = {(d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(out.stdout) if d}
    listed = documents("kustomization.yaml")[0]["resources"]
    assert built == {(d["kind"], d["metadata"]["name"]) for name in listed for d in documents(name)}
