"""deploy/k8s: every manifest parses, the pieces agree with each other (probes, volumes, Service, HPA and the
Prometheus adapter's rules; the ingress's Deployment, Service, HPA, PDB and API key Secret), the example spec and
settings stay loadable by tritonrag itself, and, where the tools are installed, the manifests pass Kubernetes' JSON
schemas (kubernetes-validate, offline), yamllint and `kubectl kustomize`."""

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
# besides prometheus-adapter/ (see kustomization.yaml); the Secret example holds no real key
APPLIED_ON_THEIR_OWN = {"ingest-job.yaml", "ingress-secret.example.yaml"}
NAMESPACE = "tritonrag"
INDEX_MOUNT = "/opt/tritonrag/index"
LAUNCHER_STOP_S = 30  # tritonrag.deploy.server.TritonServer.stop: SIGINT, then SIGKILL after this long
INGRESS = "tritonrag-ingress"  # the ingress's Deployment, Service, HPA and PDB
INGRESS_PORT = 8080  # [ingress] port (src/tritonrag/settings/defaults.toml)
KEYS_SECRET = "tritonrag-ingress-keys"


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
                 "configmap.yaml", "ingest-job.yaml", "prometheus-adapter/adapter-rules.yaml",
                 "ingress-deployment.yaml", "ingress-service.yaml", "ingress-hpa.yaml", "ingress-pdb.yaml",
                 "ingress-secret.example.yaml"):
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
    assert "--no-ingress" in c["args"]  # the ingress has pods of its own (ingress-deployment.yaml)
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"http": 8000, "grpc": 8001, "metrics": 8002,
                                                               "health": 8003}
    resources = c["resources"]
    assert resources["limits"]["nvidia.com/gpu"] == 1
    assert resources["requests"].get("nvidia.com/gpu", 1) == 1
    env = {e["name"]: e.get("value") for e in c["env"]}
    assert env["TRITONRAG_HOME"] == "/opt/tritonrag"
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/opt/tritonrag/spec.yaml"]["subPath"] == "spec.yaml"
    assert mounts[env["TRITONRAG_CONFIG"]]["subPath"] == "tritonrag.toml"
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and annotations["prometheus.io/port"] == "8002"
    spec = pod_spec("Deployment", "tritonrag")
    assert spec["nodeSelector"] and spec["tolerations"]


def test_probes_use_the_supervisors_health_endpoints_and_allow_for_model_loading():
    """Triton's own readiness is 200 again while a model whose stub died is being restored: the probes ask the
    supervisor ([server] health_port)."""
    from tritonrag.settings import load_settings

    c = container("Deployment", "tritonrag")
    ready, live, startup = c["readinessProbe"]["httpGet"], c["livenessProbe"]["httpGet"], c["startupProbe"]
    health_port = load_settings().server.health_port
    assert ready["path"] == "/health/ready" and port_number(c, ready["port"]) == health_port
    assert live["path"] == "/health/live" and port_number(c, live["port"]) == health_port
    assert startup["httpGet"]["path"] == "/health/ready"
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


def pod_labels(name: str) -> dict:
    return objects()[("Deployment", name)]["spec"]["template"]["metadata"]["labels"]


def selects(selector: dict, name: str) -> bool:
    return selector.items() <= pod_labels(name).items()


def ingress_command() -> list[str]:
    c = container("Deployment", INGRESS)
    return [*c.get("command", []), *c.get("args", [])]


def option(command: list[str], flag: str) -> str:
    assert command.count(flag) == 1, f"{flag} given {command.count(flag)} times in {command}"
    return command[command.index(flag) + 1]


def cores(quantity: str | int | float) -> float:
    text = str(quantity)
    return int(text[:-1]) / 1000 if text.endswith("m") else float(text)


def gib(quantity: str) -> float:
    units = {"Gi": 1.0, "Mi": 1 / 1024, "Ki": 1 / 1024**2}
    (unit,) = [u for u in units if quantity.endswith(u)]
    return float(quantity.removesuffix(unit)) * units[unit]


def ingress_spec():
    return load_spec(configmap_file("spec.yaml")).ingress


def test_ingress_runs_tritonrag_ingress_against_the_internal_triton_service():
    c = container("Deployment", INGRESS)
    assert c["image"] == container("Deployment", "tritonrag")["image"]  # the same image (and kustomize rewrite)
    command = ingress_command()
    assert command[:2] == ["tritonrag", "ingress"]
    host, _, port = option(command, "--triton").rpartition(":")
    triton = objects()[("Service", host.split(".")[0])]
    assert triton["metadata"]["name"] == "tritonrag" and triton["spec"]["type"] == "ClusterIP"
    grpc = {p["port"]: p for p in triton["spec"]["ports"]}[int(port)]
    assert grpc["name"] == "grpc" and grpc["appProtocol"] == "grpc"
    assert option(command, "--host") == "0.0.0.0"
    assert {p["name"]: p["containerPort"] for p in c["ports"]} == {"http": int(option(command, "--port"))}
    assert int(option(command, "--port")) == INGRESS_PORT
    # sized as the spec's ingress block: workers, and what one replica requests
    spec = ingress_spec()
    assert int(option(command, "--workers")) == spec.workers
    requests = c["resources"]["requests"]
    assert cores(requests["cpu"]) == spec.cpu and gib(requests["memory"]) == spec.memory_gib
    assert gib(c["resources"]["limits"]["memory"]) >= spec.memory_gib
    assert "cpu" not in c["resources"].get("limits", {})
    # no GPU, no GPU node
    assert not any("nvidia.com/gpu" in r for r in c["resources"].values())
    pod = pod_spec("Deployment", INGRESS)
    assert "nodeSelector" not in pod and "tolerations" not in pod
    # the servers' settings file: its [ingress] section
    env = {e["name"]: e.get("value") for e in c["env"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    settings = mounts[env["TRITONRAG_CONFIG"]]
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert settings["subPath"] == "tritonrag.toml"
    assert volumes[settings["name"]]["configMap"]["name"] == "tritonrag-spec"
    annotations = objects()[("Deployment", INGRESS)]["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true" and int(annotations["prometheus.io/port"]) == INGRESS_PORT
    assert annotations["prometheus.io/path"] == "/metrics"


def test_ingress_probes_ready_on_triton_and_live_on_the_process():
    c = container("Deployment", INGRESS)
    ready, live, startup = (c[probe]["httpGet"] for probe in ("readinessProbe", "livenessProbe", "startupProbe"))
    assert ready["path"] == "/health" and port_number(c, ready["port"]) == INGRESS_PORT
    # liveness must not follow Triton's readiness: a Triton still loading models would get every ingress restarted
    assert live["path"] == "/health?live=1" and port_number(c, live["port"]) == INGRESS_PORT
    assert startup["path"] == "/health?live=1" and port_number(c, startup["port"]) == INGRESS_PORT
    pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert pod_spec("Deployment", INGRESS)["terminationGracePeriodSeconds"] > int(pre_stop[1])


def test_ingress_runs_as_non_root_on_a_read_only_root_filesystem():
    pod = pod_spec("Deployment", INGRESS)
    context = {**pod["securityContext"], **container("Deployment", INGRESS)["securityContext"]}
    assert context["runAsNonRoot"] is True and context["runAsUser"] != 0 and context["runAsGroup"] != 0
    assert context["readOnlyRootFilesystem"] is True
    assert context["allowPrivilegeEscalation"] is False
    assert context["capabilities"]["drop"] == ["ALL"]
    assert context["seccompProfile"]["type"] == "RuntimeDefault"
    assert pod["automountServiceAccountToken"] is False
    # the one writable place is an emptyDir at /tmp
    volumes = {v["name"]: v for v in pod["volumes"]}
    writable = [m for m in container("Deployment", INGRESS)["volumeMounts"] if not m.get("readOnly")]
    assert [(m["mountPath"], "emptyDir" in volumes[m["name"]]) for m in writable] == [("/tmp", True)]


def test_ingress_api_keys_come_from_a_secret_that_kustomize_does_not_apply():
    pod = pod_spec("Deployment", INGRESS)
    keys_file = Path(option(ingress_command(), "--api-keys-file"))
    (mount,) = [m for m in container("Deployment", INGRESS)["volumeMounts"] if m["mountPath"] == str(keys_file.parent)]
    assert mount["readOnly"] is True and "subPath" not in mount  # a rotated Secret reaches the file
    secret = {v["name"]: v for v in pod["volumes"]}[mount["name"]]["secret"]
    assert secret["secretName"] == KEYS_SECRET and not secret.get("optional")  # no Secret, no pod: never open
    (item,) = secret["items"]
    assert item["path"] == keys_file.name
    assert secret["defaultMode"] & 0o007 == 0, "the key file is not world-readable"
    example = objects()[("Secret", KEYS_SECRET)]
    assert set(example["stringData"]) == {item["key"]}
    assert "ingress-secret.example.yaml" not in documents("kustomization.yaml")[0]["resources"]


def test_ingress_service_is_the_only_exposed_one_and_selects_only_the_ingress_pods():
    service = objects()[("Service", INGRESS)]["spec"]
    assert service["type"] == "LoadBalancer"
    assert selects(service["selector"], INGRESS) and not selects(service["selector"], "tritonrag")
    (port,) = service["ports"]
    assert port["port"] == 80 and port_number(container("Deployment", INGRESS), port["targetPort"]) == INGRESS_PORT
    # Triton's own Service stays internal and does not send traffic to the ingress pods
    triton = objects()[("Service", "tritonrag")]["spec"]
    assert not selects(triton["selector"], INGRESS)
    exposed = {name for (kind, name), obj in objects().items()
               if kind == "Service" and obj["spec"].get("type", "ClusterIP") != "ClusterIP"}
    assert exposed == {INGRESS}


def test_ingress_hpa_scales_its_deployment_on_cpu_within_the_specs_bounds():
    hpa = objects()[("HorizontalPodAutoscaler", INGRESS)]
    assert hpa["apiVersion"] == "autoscaling/v2"
    spec = hpa["spec"]
    assert spec["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": INGRESS}
    (metric,) = spec["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
    target = metric["resource"]["target"]
    assert target["type"] == "Utilization" and 0 < target["averageUtilization"] <= 100
    # utilisation is relative to the request: the container must make one
    assert cores(container("Deployment", INGRESS)["resources"]["requests"]["cpu"]) > 0
    ingress = ingress_spec()
    assert ingress.replica_range() == (spec["minReplicas"], spec["maxReplicas"])
    assert objects()[("Deployment", INGRESS)]["spec"]["replicas"] == ingress.count
    assert spec["minReplicas"] >= 2, "one ingress pod is a single point of failure"
    # the Triton HPA keeps scaling the Triton Deployment only
    assert objects()[("HorizontalPodAutoscaler", "tritonrag")]["spec"]["scaleTargetRef"]["name"] == "tritonrag"


def test_each_pdb_covers_its_own_pods():
    ingress = objects()[("PodDisruptionBudget", INGRESS)]["spec"]
    triton = objects()[("PodDisruptionBudget", "tritonrag")]["spec"]
    assert selects(ingress["selector"]["matchLabels"], INGRESS)
    assert not selects(ingress["selector"]["matchLabels"], "tritonrag")
    assert not selects(triton["selector"]["matchLabels"], INGRESS)
    assert ingress["maxUnavailable"] < objects()[("HorizontalPodAutoscaler", INGRESS)]["spec"]["minReplicas"]
    assert objects()[("Deployment", INGRESS)]["spec"]["selector"]["matchLabels"].items() <= pod_labels(INGRESS).items()


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
    assert "ingress" in yaml.safe_load(text)  # its own block: the ingress is no Triton model
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
    assert "ingress" not in deployment.components
    assert deployment.ingress.settings.workers == spec.ingress.workers


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
    # the ingress binds beyond localhost: the exposed API must require the keys it is given
    assert settings.ingress.allow_anonymous is False
    assert settings.ingress.port == INGRESS_PORT


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


# --- the hardened pods: non-root, read-only root filesystem, writable emptyDirs only where the image writes ---------

IMAGE_UID = 1000  # docker/Dockerfile's USER 1000:1000 (triton-server)
IMAGE_HOME = "/home/triton-server"  # the Dockerfile's HOME, where its caches point (XDG_CACHE_HOME, VLLM_CACHE_ROOT)
PODS = [("Deployment", "tritonrag"), ("Deployment", INGRESS), ("Job", "tritonrag-ingest")]


def writable_mounts(kind: str, name: str) -> dict[str, dict]:
    """mountPath -> volume of every mount that is not read-only."""
    volumes = {v["name"]: v for v in pod_spec(kind, name)["volumes"]}
    return {m["mountPath"]: volumes[m["name"]] for m in container(kind, name)["volumeMounts"] if not m.get("readOnly")}


@pytest.mark.parametrize("kind, name", PODS)
def test_every_pod_runs_as_the_images_user_with_no_privileges(kind, name):
    pod, c = pod_spec(kind, name), container(kind, name)
    context = {**pod.get("securityContext", {}), **c.get("securityContext", {})}
    assert context["runAsNonRoot"] is True
    assert context["runAsUser"] == context["runAsGroup"] == IMAGE_UID
    assert pod["securityContext"]["fsGroup"] == IMAGE_UID  # may read and write its volumes
    assert context["seccompProfile"]["type"] == "RuntimeDefault"
    assert context["allowPrivilegeEscalation"] is False and not context.get("privileged")
    assert context["capabilities"]["drop"] == ["ALL"] and not context["capabilities"].get("add")
    assert context["readOnlyRootFilesystem"] is True
    assert pod["automountServiceAccountToken"] is False and pod["enableServiceLinks"] is False
    assert not pod.get("hostNetwork") and not pod.get("hostPID") and not pod.get("hostIPC")
    # the writable places are volumes: emptyDirs (sized), or the index claim the ingestion Job writes
    for path, volume in writable_mounts(kind, name).items():
        if "emptyDir" in volume:
            assert volume["emptyDir"].get("sizeLimit"), f"{name}: {path} has no sizeLimit"
        else:
            assert (kind, path) == ("Job", INDEX_MOUNT), f"{name}: {path} is writable and not an emptyDir"
    assert "emptyDir" in writable_mounts(kind, name)["/tmp"]


def test_dockerfile_user_and_home_are_the_manifests():
    dockerfile = (K8S.parents[1] / "docker" / "Dockerfile").read_text()
    assert re.search(rf"^USER {IMAGE_UID}:{IMAGE_UID}$", dockerfile, re.M)
    assert re.search(rf"^\s+HOME={IMAGE_HOME} \\$", dockerfile, re.M)


def test_triton_has_room_to_write_where_it_writes():
    writable = writable_mounts("Deployment", "tritonrag")
    # temporary files, $HOME's caches (vLLM, Hugging Face, torch.compile), the log and the rendered repository
    for path in ("/tmp", IMAGE_HOME, "/opt/tritonrag/logs", "/opt/tritonrag/repositories"):
        assert "emptyDir" in writable[path], path
    # the Python backend's shared memory: in RAM, bigger than a container's 64 MiB /dev/shm
    shm = writable["/dev/shm"]["emptyDir"]
    assert shm["medium"] == "Memory" and gib(shm["sizeLimit"]) >= 1
    # the index and the settings stay read-only
    assert INDEX_MOUNT not in writable and "/opt/tritonrag/spec.yaml" not in writable
    job = writable_mounts("Job", "tritonrag-ingest")
    assert "emptyDir" in job["/tmp"] and "emptyDir" in job[IMAGE_HOME]


def test_triton_bound_beyond_localhost_restricts_its_admin_apis_with_a_key_from_a_secret():
    c = container("Deployment", "tritonrag")
    assert option(c["args"], "--host") == "0.0.0.0"  # so `serve` adds restricted_args (deploy/server.py)
    env = {e["name"]: e for e in c["env"]}
    # from a Secret: with a read-only root filesystem tritonrag cannot keep a generated key in $TRITONRAG_HOME
    ref = env["TRITONRAG_TRITON_ADMIN_KEY"]["valueFrom"]["secretKeyRef"]
    assert ref["name"] and ref["key"] and not ref.get("optional")
    from tritonrag.deploy.server import ADMIN_KEY_ENV

    assert ADMIN_KEY_ENV == "TRITONRAG_TRITON_ADMIN_KEY"
