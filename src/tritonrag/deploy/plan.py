"""A deployment spec applied to the settings and placed on the GPUs: what the renderer writes and --dry-run shows.

One ComponentPlan per served model (``DeploymentSpec.served_models``), extra generators included: a generator of the
spec's own (``role: generator``) is planned from the ``[generator]`` settings section, which its ``engine`` and
``model`` override as the generator's do. The ingress (the spec's ``ingress`` block) is planned apart, as an
IngressPlan: it is no Triton model, so nothing is placed on a GPU or rendered for it, but ``plan_rows`` shows it as a
row of its own.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tritonrag.deploy.placement import Gpu, Placement, PlacementError, instance_groups, plan
from tritonrag.deploy.spec import INGRESS, DeploymentSpec, SpecError, load_spec
from tritonrag.settings import Settings, override
from tritonrag.settings.sections import IngressSettings

# Keys the spec sets at component level; ``engine`` may not set them behind its back (all but ``model`` are no
# settings at all, but a clear pointer beats "unknown setting").
SPEC_LEVEL = {"instances": "instances", "max_batch_size": "batching.max_batch_size",
              "preferred_batch_sizes": "batching.preferred_batch_sizes",
              "max_queue_delay_us": "batching.max_queue_delay_us", "device": "device", "model": "model"}


# Above this a GPU's shares leave too little room for the instances' CUDA contexts, which no cap covers.
FULL_SHARE = 0.95


@dataclass(frozen=True)
class ComponentPlan:
    name: str
    overrides: Mapping[str, Any]  # settings the spec changes, passed to the instances as model parameters
    placements: tuple[Placement, ...]
    instance_groups: tuple[Mapping[str, Any], ...]
    max_batch_size: int
    preferred_batch_sizes: tuple[int, ...]
    max_queue_delay_us: int | None
    role: str = ""  # the contract model whose IO, adapter and settings section it uses; "": its own name

    def __post_init__(self) -> None:
        if not self.role:
            object.__setattr__(self, "role", self.name)


@dataclass(frozen=True)
class IngressPlan:
    """The HTTP service in front of Triton (``tritonrag ingress``) as the spec sizes it: replicas of its own (not
    Triton servers), each running ``settings.workers`` worker processes on ``settings.port``."""

    replicas: int  # the starting count
    replica_range: tuple[int, int | None]  # an autoscaler's bounds; None: no maximum
    settings: IngressSettings  # [ingress] with the spec's workers and port over it
    overrides: Mapping[str, Any]  # what the spec changes in [ingress]
    cpu: float | None = None  # cores one replica requests; None: the spec says nothing
    memory_gib: float | None = None


@dataclass(frozen=True)
class DeploymentPlan:
    spec: DeploymentSpec
    gpus: tuple[Gpu, ...]
    components: Mapping[str, ComponentPlan]
    replicas: tuple[int, int | None]  # of the Triton server (every component); the ingress has its own
    ingress: IngressPlan

    def gpu_load(self) -> dict[int, tuple[float, float, list[str]]]:
        """Per GPU: shares taken, GiB capped, and which component instances run there."""
        load: dict[int, tuple[float, float, list[str]]] = {g.index: (0.0, 0.0, []) for g in self.gpus}
        for c in self.components.values():
            for p in c.placements:
                for gpu in p.gpus:
                    share, memory, names = load[gpu]
                    load[gpu] = (share + p.share, memory + p.memory_cap_gib, [*names, f"{c.name}#{p.instance}"])
        return load

    @property
    def warnings(self) -> list[str]:
        """GPUs shared so fully that the CUDA contexts, which no cap covers, may not fit."""
        return [f"GPU {gpu} is fully shared ({share:.2f}): the CUDA context of each of its {len(names)} processes "
                "(~0.3-0.5 GiB) is outside the caps, and vLLM starts only if its share is still free when it loads; "
                f"the others must stay well under their caps, or leave about {1 - FULL_SHARE:.2f} unshared"
                for gpu, (share, _, names) in self.gpu_load().items() if share > FULL_SHARE and len(names) > 1]


def _overrides(name: str, spec: DeploymentSpec, settings: Settings) -> dict[str, Any]:
    """The settings the spec changes for ``name``, checked against its role's section (``[generator]`` for every
    generator)."""
    component = spec.component(name)
    overrides = dict(component.engine)
    for key in overrides:
        if key in SPEC_LEVEL:
            raise SpecError(f"components.{name}.engine.{key}: set it as components.{name}.{SPEC_LEVEL[key]}")
    if component.model is not None:
        overrides["model"] = component.model
    try:  # the same check the instances make when they load: fail here, not in Triton's log
        override(getattr(settings, component.role), overrides, f"components.{name}.engine")
    except ValueError as exc:
        raise SpecError(str(exc)) from None
    return overrides


def _ingress(spec: DeploymentSpec, settings: Settings) -> IngressPlan:
    """The spec's ingress block over the ``[ingress]`` settings; its port may not be one of Triton's."""
    ingress = spec.ingress
    overrides = ingress.overrides()
    try:
        applied = override(settings.ingress, overrides, INGRESS)
    except ValueError as exc:
        raise SpecError(str(exc)) from None
    triton = {"http_port": settings.server.http_port, "grpc_port": settings.server.grpc_port,
              "metrics_port": settings.server.metrics_port}
    for key, port in triton.items():
        if ingress.port == port:
            raise SpecError(f"{INGRESS}.port: {port} is Triton's {key.removesuffix('_port')} port ([server] {key}); "
                            "give the ingress a port of its own (default 8080)")
    return IngressPlan(ingress.count, ingress.replica_range(), applied, overrides, ingress.cpu, ingress.memory_gib)


def plan_deployment(spec: DeploymentSpec, settings: Settings, gpus: Sequence[Gpu]) -> DeploymentPlan:
    """Apply ``spec`` to ``settings`` (the ``engine`` overrides) and place every instance on ``gpus``; instances and
    batching are the spec's (its defaults where it leaves them out). SpecError/PlacementError otherwise."""
    placements = plan(spec.demands(), gpus)
    components = {}
    for name, role in spec.served_models():
        batching = spec.batching(name)
        mine = tuple(p for p in placements if p.component == name)
        components[name] = ComponentPlan(name, _overrides(name, spec, settings), mine,
                                         tuple(instance_groups(mine, name)), batching.max_batch_size or 0,
                                         batching.preferred_batch_sizes, batching.max_queue_delay_us, role)
    return DeploymentPlan(spec, tuple(gpus), components, spec.replica_range(), _ingress(spec, settings))


Runner = Callable[[list[str]], str]


def _run(command: list[str]) -> str:
    return subprocess.run(command, capture_output=True, text=True, check=True, timeout=30).stdout


def detect_gpus(run: Runner = _run) -> tuple[Gpu, ...]:
    """This machine's GPUs and their memory, from nvidia-smi; none when it is missing."""
    if shutil.which("nvidia-smi") is None and run is _run:
        return ()
    try:
        out = run(["nvidia-smi", "--query-gpu=index,memory.total", "--format=csv,noheader,nounits"])
    except (OSError, subprocess.SubprocessError):
        return ()
    gpus = []
    for line in out.strip().splitlines():
        index, mib = (part.strip() for part in line.split(","))
        gpus.append(Gpu(int(index), round(float(mib) / 1024, 1)))
    return tuple(gpus)


def load_plan(spec_path: Path, settings: Settings, detect: Callable[[], tuple[Gpu, ...]] = detect_gpus,
              use_machine_gpus: bool = False) -> DeploymentPlan:
    """Read, validate and place the spec at ``spec_path``; its GPUs come from nvidia-smi when it says
    ``gpus: detect`` or ``use_machine_gpus`` is set (the same spec on a machine with other GPUs)."""
    try:
        text = Path(spec_path).read_text()
    except OSError as exc:
        raise SpecError(f"cannot read the deployment spec {spec_path}: {exc.strerror}") from None
    spec = load_spec(text)
    try:
        gpus = detect() if spec.gpus is None or use_machine_gpus else spec.gpus
        return plan_deployment(spec, settings, gpus)
    except PlacementError as exc:
        raise SpecError(f"{spec_path}: {exc}") from None


def plan_rows(plan: DeploymentPlan) -> list[tuple[str, ...]]:
    """One row per instance group: component (served model), instances, where, share of each GPU, memory cap, Triton's
    instance_group, and the settings the spec overrides; then the ingress's row (``ingress_row``)."""
    rows = []
    for c in plan.components.values():
        settings = ", ".join(f"{k}={v}" for k, v in c.overrides.items()) or "-"
        for group in c.instance_groups:
            mine = [p for p in c.placements if _in_group(p, group)]
            gpus = sorted({g for p in mine for g in p.gpus})
            where = "CPU" if not gpus else ("GPUs " if len(gpus) > 1 else "GPU ") + ",".join(map(str, gpus))
            share = f"{mine[0].share:.2f}" if gpus else "-"
            cap = f"{mine[0].memory_cap_gib:.1f} GiB ({mine[0].memory_fraction:.2f})" if gpus else "-"
            kind = f"{group['kind']} x{group['count']}" + (f" gpus {group['gpus']}" if "gpus" in group else "") + (
                f" {group['name']}" if "name" in group else "")
            rows.append((c.name, str(len(mine)), where, share, cap, kind, settings))
    rows.append(ingress_row(plan.ingress))
    return rows


def ingress_row(ingress: IngressPlan) -> tuple[str, ...]:
    """The ingress in plan_rows' columns: its replicas (and their autoscaling bounds), on the CPU in processes of its
    own, no Triton instance group; its workers and port (the spec's or the [ingress] settings') and what one replica
    requests."""
    low, high = ingress.replica_range
    count = str(ingress.replicas) if (low, high) == (ingress.replicas, ingress.replicas) else (
        f"{ingress.replicas} ({low}..{high if high is not None else 'any'})")
    details = [f"workers={ingress.settings.workers}", f"port={ingress.settings.port}"]
    if ingress.cpu is not None:
        details.append(f"cpu={ingress.cpu:g}")
    if ingress.memory_gib is not None:
        details.append(f"memory={ingress.memory_gib:g} GiB")
    return (INGRESS, count, "CPU, own process", "-", "-", "none: not a Triton model", ", ".join(details))


def _in_group(p: Placement, group: Mapping[str, Any]) -> bool:
    if "visible_gpus" in group:
        return list(p.gpus) == list(group["visible_gpus"])
    if "gpus" in group:
        return list(p.gpus) == list(group["gpus"])
    return not p.gpus


def gpu_rows(plan: DeploymentPlan) -> list[tuple[str, ...]]:
    """One row per GPU: its memory, the shares and memory its instances take, and which they are."""
    memory = {g.index: g.memory_gib for g in plan.gpus}
    return [(str(gpu), f"{memory[gpu]:.0f} GiB", f"{share:.2f}", f"{capped:.1f} GiB", " ".join(names) or "-")
            for gpu, (share, capped, names) in plan.gpu_load().items()]
