"""The deployment spec: one YAML file saying, per component, how many instances run where and with what share.

    cluster:
      gpus: detect            # or a count with memory (gpus: 8, gpu_memory_gib: 80), or a list of GiB per GPU
    components:
      embedder:  {instances: 2, device: gpu, gpu_share: 0.1, placement: pack,
                  batching: {max_batch_size: 64, preferred_batch_sizes: [16, 32], max_queue_delay_us: 0}}
      generator: {instances: 1, device: gpu, gpu_share: 0.8, engine: {max_num_seqs: 64, tensor_parallel_size: 2}}

``instances`` is per server; ``min_instances``/``max_instances`` bound the whole cluster (see ``replica_range``).
What a file leaves out takes the spec's defaults: one instance per server on the CPU, and Triton batches only the
embedder, the retriever and the reranker (``DEFAULT_BATCHING``). Placement and batching are not settings: the spec
owns them. ``engine`` overrides the component's settings section (tritonrag.settings), ``model`` its model. A
generator with ``engine.tensor_parallel_size: N`` spans N GPUs at ``gpu_share`` (up to 1) of each; ``gpu_share: N`` (a
whole number above 1) means N whole GPUs.
Only the embedder, retriever, reranker and generator run on a GPU.

Several generator models: a component under a name of its own with ``role: generator`` is one more generator, its
own Triton model (same inputs, outputs and adapter as ``generator``) with its own instances, device and GPU share,
e.g. a small fast model for rewriting questions or critiquing answers next to a larger one for the answers:

      generator_small: {role: generator, model: "{home}/models/smollm2-135m-instruct", device: gpu, gpu_share: 0.1}

It takes every key the generator takes; its ``engine`` and ``model`` override the ``[generator]`` settings section,
as the generator's do. Its name (``^[a-z][a-z0-9_]{0,31}$``) is its Triton model's and its folder's.
``served_models`` lists every model the repository serves with its role: those of ``contract.MODELS`` (their own
role), the extra generators right after ``generator`` in file order.

The ingress: a top-level ``ingress`` block (not a component: it is no Triton model and gets no config.pbtxt) sizes
the OpenAI-compatible HTTP service in front of Triton (``tritonrag ingress``, tritonrag.ingress), a stateless process
of its own that calls Triton over gRPC:

    ingress: {min_replicas: 2, max_replicas: 8, workers: 2, cpu: 1, memory_gib: 1}

``replicas`` is the starting (or, without ``min_replicas``/``max_replicas``, the fixed) count of ingress processes
(pods), independent of how many Triton servers run; ``workers`` (uvicorn processes per replica) and ``port`` override
the ``[ingress]`` settings; ``cpu`` (cores) and ``memory_gib`` are what one replica requests (deploy/k8s uses them,
and its CPU autoscaler is relative to ``cpu``). A spec without the block runs one replica with the settings'
workers and port (``IngressSpec``).

Unknown keys and bad values are errors that name the component and key. ``demands`` turns the spec into the
placement planner's input (tritonrag.deploy.placement).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from tritonrag.deploy.placement import STRATEGIES, Demand, Gpu
from tritonrag.serving.contract import EMBEDDER, GENERATOR, MODELS, RERANKER, RETRIEVER

COMPONENTS = MODELS  # one component per served model
GPU_COMPONENTS = (EMBEDDER.model, RETRIEVER.model, RERANKER.model, GENERATOR.model)
MODEL_COMPONENTS = (EMBEDDER.model, RERANKER.model, GENERATOR.model)  # the ones with a ``model`` setting
DEVICES = ("cpu", "gpu")
COMPONENT_KEYS = {"model", "instances", "min_instances", "max_instances", "device", "gpu_share", "gpu_memory_gib",
                  "placement", "batching", "engine", "role"}
ROLES = (GENERATOR.model,)  # what a component under a name of its own may be (``role:``)
# A component of its own names a Triton model and its folder: lower case, digits and _, starting with a letter.
NAME_PATTERN = re.compile(r"^[a-z][a-z0-9_]{0,31}$")


BATCHING_KEYS = {"max_batch_size", "preferred_batch_sizes", "max_queue_delay_us"}

DEFAULT_INSTANCES = 1  # per server
DEFAULT_DEVICE = "cpu"

INGRESS = "ingress"  # the top-level block (and the plan's row) of the HTTP service in front of Triton
INGRESS_KEYS = {"replicas", "min_replicas", "max_replicas", "workers", "port", "cpu", "memory_gib"}
MAX_PORT = 65535


class SpecError(ValueError):
    """The spec is invalid; the message names where (``components.embedder.gpu_share``) and why."""


@dataclass(frozen=True)
class Batching:
    max_batch_size: int | None = None
    preferred_batch_sizes: tuple[int, ...] = ()
    max_queue_delay_us: int | None = None


# The models Triton batches dynamically, and their batching where the spec leaves it out. max_batch_size: the rows
# Triton may hand one execute call. Triton's batcher batches whatever queued while the instance was busy even with no
# delay; a delay only makes a lone request wait.
DEFAULT_BATCHING = {
    # 2000 us measured: same saturated throughput, +2 ms per request (benchmarks/results/)
    EMBEDDER.model: Batching(max_batch_size=64, max_queue_delay_us=0),
    # 1000 us cost 2.8x the throughput at concurrency 1 and 2x at 4 (same reason)
    RETRIEVER.model: Batching(max_batch_size=64, max_queue_delay_us=0),
    # a row is a query with up to [reranker] max_passages passages (ragged: their counts may differ in a batch)
    RERANKER.model: Batching(max_batch_size=16, max_queue_delay_us=0),
}
BATCHED = tuple(DEFAULT_BATCHING)
UNBATCHED = Batching(max_batch_size=0)  # the others: one request per execute call, no dynamic batcher


@dataclass(frozen=True)
class ComponentSpec:
    name: str
    instances: int | None = None  # per server; None: DEFAULT_INSTANCES
    min_instances: int | None = None  # cluster level (autoscaling), not per server
    max_instances: int | None = None
    device: str = DEFAULT_DEVICE
    gpu_share: float = 0.0
    gpu_memory_gib: float | None = None
    placement: str = "pack"
    model: str | None = None
    batching: Batching = field(default_factory=Batching)
    engine: Mapping[str, Any] = field(default_factory=dict)
    role: str = ""  # the contract model whose IO and adapter it uses; "": its own name (a standard component)

    def __post_init__(self) -> None:
        if not self.role:
            object.__setattr__(self, "role", self.name)

    @property
    def gpus_per_instance(self) -> int:
        """GPUs one instance spans: a whole share, or the generator's tensor parallel size, else 1 (0 on CPU)."""
        if self.device == "cpu":
            return 0
        if self.gpu_share > 1:
            return int(self.gpu_share)
        return int(self.engine.get("tensor_parallel_size", 1))


@dataclass(frozen=True)
class IngressSpec:
    """The OpenAI-compatible HTTP service in front of Triton (``tritonrag ingress``): processes of their own, scaled
    apart from the Triton servers; None where the spec leaves a key out (the ``[ingress]`` settings decide workers
    and port; nothing is requested)."""

    replicas: int | None = None  # the starting count; None: min_replicas, else 1
    min_replicas: int | None = None
    max_replicas: int | None = None
    workers: int | None = None  # uvicorn worker processes per replica; None: [ingress] workers
    port: int | None = None  # None: [ingress] port
    cpu: float | None = None  # cores one replica requests
    memory_gib: float | None = None  # memory one replica requests

    @property
    def count(self) -> int:
        """How many replicas run to start with: ``replicas``, else ``min_replicas``, else 1."""
        if self.replicas is not None:
            return self.replicas
        return self.min_replicas if self.min_replicas is not None else 1

    def replica_range(self) -> tuple[int, int | None]:
        """The bounds an autoscaler keeps the ingress replicas in (None: no maximum); a fixed count without
        ``min_replicas``/``max_replicas``."""
        low = self.min_replicas if self.min_replicas is not None else self.count
        if self.max_replicas is not None:
            return low, self.max_replicas
        return low, (None if self.min_replicas is not None else self.count)

    def overrides(self) -> dict[str, int]:
        """The ``[ingress]`` settings the spec sets."""
        return {key: value for key, value in (("workers", self.workers), ("port", self.port)) if value is not None}


@dataclass(frozen=True)
class DeploymentSpec:
    gpus: tuple[Gpu, ...] | None  # None: detect at render time
    components: tuple[ComponentSpec, ...]
    ingress: IngressSpec = field(default_factory=IngressSpec)  # not a component: no Triton model, no config.pbtxt

    def component(self, name: str) -> ComponentSpec:
        """The named component's spec; one the file leaves out runs on the CPU with the defaults."""
        return next((c for c in self.components if c.name == name), ComponentSpec(name))

    def served_models(self) -> list[tuple[str, str]]:
        """Every model the repository serves, in order, with its role (the contract model whose IO and adapter it
        uses): those of ``contract.MODELS`` as their own role, the extra generators right after ``generator``."""
        extra = [(c.name, c.role) for c in self.components if c.name not in COMPONENTS]
        served = []
        for name in COMPONENTS:
            served.append((name, name))
            if name == GENERATOR.model:
                served += extra
        return served

    def role(self, name: str) -> str:
        """The role of the served model ``name``: its own name for the standard ones."""
        return self.component(name).role

    def generators(self) -> list[str]:
        """The generator models served: ``generator`` first, then the extra ones in file order."""
        return [name for name, role in self.served_models() if role == GENERATOR.model]

    def generator_models(self) -> dict[str, str | None]:
        """Each served generator's spec ``model`` as written ("{home}" unexpanded), None where the spec sets none
        (the ``[generator]`` model of the settings)."""
        return {name: self.component(name).model for name in self.generators()}

    def instances(self, name: str) -> int:
        """Instances of ``name`` per server: the spec's, else DEFAULT_INSTANCES."""
        given = self.component(name).instances
        return given if given is not None else DEFAULT_INSTANCES

    def batching(self, name: str) -> Batching:
        """How Triton batches ``name``: what the spec sets over DEFAULT_BATCHING (UNBATCHED for the others)."""
        component = self.component(name)
        given, default = component.batching, DEFAULT_BATCHING.get(component.role, UNBATCHED)
        where = f"components.{name}.batching"
        sets_any = bool(given.max_batch_size or given.preferred_batch_sizes or given.max_queue_delay_us is not None)
        _check(where, component.role in BATCHED or not sets_any, f"only {_listed(BATCHED)} are batched by Triton")
        max_batch = default.max_batch_size if given.max_batch_size is None else given.max_batch_size
        preferred = given.preferred_batch_sizes or default.preferred_batch_sizes
        delay = default.max_queue_delay_us if given.max_queue_delay_us is None else given.max_queue_delay_us
        _check(f"{where}.preferred_batch_sizes", all(size <= (max_batch or 0) for size in preferred),
               f"sizes {list(preferred)} must not exceed max_batch_size {max_batch}")
        return Batching(max_batch, preferred, delay)

    def demands(self) -> list[Demand]:
        """The planner's input: every served model, those the file leaves out on the CPU with the default
        instances."""
        demands = []
        for name, _ in self.served_models():
            c = self.component(name)
            share = c.gpu_share if c.device == "gpu" else 0.0
            gpus = c.gpus_per_instance if share and share <= 1 else 0
            demands.append(Demand(name, self.instances(name), share, c.gpu_memory_gib, c.placement, gpus))
        return demands

    def replica_range(self) -> tuple[int, int | None]:
        """How many copies of the whole server the cluster runs so that every component's min/max_instances hold:
        the smallest count meeting every minimum and the largest staying under every maximum (None: no maximum)."""
        low, high = 1, None
        for c in self.components:
            per_server = self.instances(c.name)
            if c.min_instances is not None:
                low = max(low, -(-c.min_instances // per_server))
            if c.max_instances is not None:
                most = c.max_instances // per_server
                high = most if high is None else min(high, most)
        if high is not None and high < low:
            raise SpecError(f"components: min_instances need {low} servers but max_instances allow only {high} "
                            "(each server runs every component's instances)")
        return low, high


def _listed(names: tuple[str, ...]) -> str:
    """``a, b and c``."""
    return " and ".join([", ".join(names[:-1]), names[-1]] if len(names) > 1 else names)


def _check(where: str, ok: bool, why: str) -> None:
    if not ok:
        raise SpecError(f"{where}: {why}")


def _number(where: str, value: Any, kind: Callable[[Any], Any], minimum: float) -> Any:
    _check(where, isinstance(value, (int, float)) and not isinstance(value, bool), f"expected a number, got {value!r}")
    _check(where, kind is float or value == int(value), f"expected a whole number, got {value!r}")
    _check(where, value >= minimum, f"must be at least {minimum}, got {value!r}")
    return kind(value)


def _keys(where: str, raw: Any, allowed: set[str]) -> Mapping[str, Any]:
    _check(where, isinstance(raw, Mapping), f"expected a mapping, got {type(raw).__name__}")
    unknown = sorted(set(raw) - allowed)
    _check(where, not unknown, f"unknown key(s) {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}")
    return raw


def _batching(where: str, raw: Any) -> Batching:
    raw = _keys(where, raw, BATCHING_KEYS)
    preferred = raw.get("preferred_batch_sizes", [])
    _check(f"{where}.preferred_batch_sizes", isinstance(preferred, list), "expected a list of sizes")
    sizes = tuple(_number(f"{where}.preferred_batch_sizes", s, int, 1) for s in preferred)
    max_batch = raw.get("max_batch_size")
    max_batch = None if max_batch is None else _number(f"{where}.max_batch_size", max_batch, int, 0)
    if max_batch is not None:
        _check(f"{where}.preferred_batch_sizes", all(s <= max_batch for s in sizes),
               f"sizes {list(sizes)} must not exceed max_batch_size {max_batch}")
    delay = raw.get("max_queue_delay_us")
    return Batching(max_batch, sizes, None if delay is None else _number(f"{where}.max_queue_delay_us", delay, int, 0))


def _role(name: Any, raw: Any) -> str:
    """The role of the component ``name`` the file declares: its own name for a standard one, ``generator`` for one
    of its own (which must say so with ``role: generator``)."""
    where = f"components.{name}"
    given = raw.get("role") if isinstance(raw, Mapping) else None
    if name in COMPONENTS:
        _check(f"{where}.role", given is None or (name in ROLES and given == name),
               f"{name} is a standard component: it plays its own role; role is for a component of your own "
               f"(another generator model: give it a name of your own and role: {GENERATOR.model})")
        return str(name)
    if given is None:
        allowed = ", ".join(sorted(COMPONENTS))
        raise SpecError(f"components: unknown key(s) {name}; allowed: {allowed}, or a name of your own with "
                        f"role: {GENERATOR.model} (another generator model, e.g. a small one for the critic)")
    _check(f"{where}.role", given in ROLES, f"must be {' or '.join(ROLES)} (another generator model), got {given!r}")
    _check(where, isinstance(name, str) and bool(NAME_PATTERN.match(name)),
           f"a component of your own names its Triton model and folder: it must match {NAME_PATTERN.pattern} "
           "(lower case letters, digits and _, starting with a letter, at most 32 characters)")
    return str(given)


def _component(name: str, raw: Any) -> ComponentSpec:
    where = f"components.{name}"
    raw = _keys(where, raw or {}, COMPONENT_KEYS)
    role = _role(name, raw)
    device = raw.get("device", DEFAULT_DEVICE)
    _check(f"{where}.device", device in DEVICES, f"must be one of {', '.join(DEVICES)}, got {device!r}")
    share = _number(f"{where}.gpu_share", raw.get("gpu_share", 1.0 if device == "gpu" else 0.0), float, 0)
    _check(f"{where}.gpu_share", device == "gpu" or share == 0, "a CPU component takes no GPU share")
    _check(f"{where}.gpu_share", device == "cpu" or share > 0, "a GPU component needs a share above 0")
    _check(f"{where}.gpu_share", share <= 1 or share == int(share),
           f"above 1 it is a whole number of GPUs (e.g. 2 for tensor parallel 2), got {share}")
    _check(f"{where}.device", device == "cpu" or role in GPU_COMPONENTS,
           f"{name} does no GPU work; only {', '.join(GPU_COMPONENTS)} take a GPU")
    _check(f"{where}.gpu_share", share <= 1 or role == GENERATOR.model,
           "only the generator spans several GPUs (tensor parallel); give a share up to 1")
    _check(f"{where}.model", "model" not in raw or role in MODEL_COMPONENTS,
           f"only {', '.join(MODEL_COMPONENTS)} have a model")
    placement = raw.get("placement", "pack")
    _check(f"{where}.placement", placement in STRATEGIES, f"must be one of {', '.join(STRATEGIES)}")
    instances = raw.get("instances")
    instances = None if instances is None else _number(f"{where}.instances", instances, int, 1)
    low, high = raw.get("min_instances"), raw.get("max_instances")
    low = None if low is None else _number(f"{where}.min_instances", low, int, 1)
    high = None if high is None else _number(f"{where}.max_instances", high, int, 1)
    if low is not None and high is not None:
        _check(where, low <= high, f"min_instances {low} is above max_instances {high}")
    memory = raw.get("gpu_memory_gib")
    engine = raw.get("engine", {})
    _check(f"{where}.engine", isinstance(engine, Mapping), "expected a mapping of engine settings")
    parallel = engine.get("tensor_parallel_size")
    if parallel is not None:
        _number(f"{where}.engine.tensor_parallel_size", parallel, int, 1)
        _check(f"{where}.engine.tensor_parallel_size", device == "gpu" or parallel == 1, "tensor parallel needs GPUs")
        _check(f"{where}.engine.tensor_parallel_size", share <= 1 or share == parallel,
               f"gpu_share {share:g} (whole GPUs) and tensor_parallel_size {parallel} disagree")
    return ComponentSpec(
        name=name, instances=instances, min_instances=low, max_instances=high, device=device, gpu_share=share,
        gpu_memory_gib=None if memory is None else _number(f"{where}.gpu_memory_gib", memory, float, 0.01),
        placement=placement, model=raw.get("model"), batching=_batching(f"{where}.batching", raw.get("batching", {})),
        engine=dict(engine), role=role,
    )


def _gpus(raw: Any) -> tuple[Gpu, ...] | None:
    raw = _keys("cluster", raw or {}, {"gpus", "gpu_memory_gib"})
    gpus = raw.get("gpus", 0)
    if gpus == "detect":
        return None
    if isinstance(gpus, list):
        return tuple(Gpu(i, _number(f"cluster.gpus[{i}]", m, float, 0.01)) for i, m in enumerate(gpus))
    count = _number("cluster.gpus", gpus, int, 0)
    if count == 0:
        return ()
    _check("cluster.gpu_memory_gib", "gpu_memory_gib" in raw, "give each GPU's memory, or gpus: detect")
    memory = _number("cluster.gpu_memory_gib", raw["gpu_memory_gib"], float, 0.01)
    return tuple(Gpu(i, memory) for i in range(count))


def _optional(where: str, raw: Mapping[str, Any], key: str, kind: Callable[[Any], Any], minimum: float) -> Any:
    value = raw.get(key)
    return None if value is None else _number(f"{where}.{key}", value, kind, minimum)


def _ingress(raw: Any) -> IngressSpec:
    where = INGRESS
    if raw is not None and not isinstance(raw, Mapping):
        raise SpecError(f"{where}: expected a mapping of {', '.join(sorted(INGRESS_KEYS))} (the HTTP service in front "
                        f"of Triton; it is not a component), got {type(raw).__name__}")
    raw = _keys(where, raw or {}, INGRESS_KEYS)
    replicas = _optional(where, raw, "replicas", int, 1)
    low, high = _optional(where, raw, "min_replicas", int, 1), _optional(where, raw, "max_replicas", int, 1)
    if low is not None and high is not None:
        _check(where, low <= high, f"min_replicas {low} is above max_replicas {high}")
    if replicas is not None:
        _check(f"{where}.replicas", low is None or replicas >= low, f"{replicas} is below min_replicas {low}")
        _check(f"{where}.replicas", high is None or replicas <= high, f"{replicas} is above max_replicas {high}")
    port = _optional(where, raw, "port", int, 1)
    _check(f"{where}.port", port is None or port <= MAX_PORT, f"must be at most {MAX_PORT}, got {port}")
    return IngressSpec(replicas=replicas, min_replicas=low, max_replicas=high,
                       workers=_optional(where, raw, "workers", int, 1), port=port,
                       cpu=_optional(where, raw, "cpu", float, 0.001),
                       memory_gib=_optional(where, raw, "memory_gib", float, 0.01))


def parse_spec(raw: Any) -> DeploymentSpec:
    """A validated spec from parsed YAML (a mapping with ``cluster``, ``components``: the standard ones and any
    generators of its own, ``role: generator``, and ``ingress``, the HTTP service in front of Triton)."""
    raw = _keys("spec", raw, {"cluster", "components", INGRESS})
    components = raw.get("components") or {}
    _check("components", isinstance(components, Mapping), f"expected a mapping, got {type(components).__name__}")
    _check(f"components.{INGRESS}", INGRESS not in components,
           f"the {INGRESS} is no Triton model: size it in a top-level `{INGRESS}:` block "
           f"({', '.join(sorted(INGRESS_KEYS))}), not under components")
    for name, component in components.items():
        _role(name, component)  # unknown names first, before their keys
    return DeploymentSpec(_gpus(raw.get("cluster")), tuple(_component(n, c) for n, c in components.items()),
                          _ingress(raw.get(INGRESS)))


def load_spec(text: str) -> DeploymentSpec:
    """Parse and validate a YAML spec (safe loader: no Python objects)."""
    import yaml

    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpecError(f"not valid YAML: {exc}") from None
    return parse_spec(raw)
