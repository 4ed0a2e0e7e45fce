"""Placement of model instances on GPUs (or the CPU) from fractional shares, without hand assignment.

Each component asks for ``instances`` instances, each with a GPU ``share`` (0: CPU; a fraction like 0.1; or a
whole number of GPUs, e.g. 2 for tensor parallelism), optionally spanning ``gpus`` GPUs with that share of each
(tensor parallel 2 at 0.8 of each GPU), and optionally the GPU memory it needs. A GPU never carries
more than 1.0 of shares nor more memory than it has. ``pack`` puts an instance on the busiest GPU it still fits
(fewest GPUs used); ``spread`` on the least busy one (most GPUs used). Ties go to the lowest GPU index and
components are placed biggest share first, then by name, so the same spec always gives the same plan.

Shares split memory and scheduling, not compute: instances on one GPU time-share its SMs (MIG isolates them).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

STRATEGIES = ("pack", "spread")
EPSILON = 1e-9


class PlacementError(ValueError):
    """The spec cannot be placed on the inventory; the message says what does not fit and what is left."""


@dataclass(frozen=True)
class Gpu:
    index: int
    memory_gib: float


@dataclass(frozen=True)
class Demand:
    """What one component asks for."""

    component: str
    instances: int
    share: float = 0.0  # 0 = CPU; < 1 = a fraction of one GPU; >= 1 = that many whole GPUs per instance
    memory_gib: float | None = None  # per instance and GPU; default: share x the GPU's memory
    strategy: str = "pack"
    gpus: int = 0  # GPUs per instance, each at ``share``; 0: from the share (a whole share is that many GPUs)

    def __post_init__(self) -> None:
        if self.instances < 1:
            raise PlacementError(f"{self.component}: instances must be at least 1, got {self.instances}")
        if self.share < 0:
            raise PlacementError(f"{self.component}: gpu share must be >= 0, got {self.share}")
        if self.share > 1 and self.share != int(self.share):
            raise PlacementError(f"{self.component}: a gpu share above 1 must be a whole number of GPUs, "
                                 f"got {self.share}")
        if self.strategy not in STRATEGIES:
            raise PlacementError(f"{self.component}: strategy must be one of {', '.join(STRATEGIES)}, "
                                 f"got {self.strategy!r}")
        if self.gpus < 0 or (self.gpus > 1 and self.share > 1):
            raise PlacementError(f"{self.component}: give GPUs per instance either as a whole share ({self.share}) "
                                 f"or as gpus ({self.gpus}) with a share of each, not both")
        if self.memory_gib is not None and self.memory_gib <= 0:
            raise PlacementError(f"{self.component}: memory_gib must be positive, got {self.memory_gib}")

    @property
    def gpus_per_instance(self) -> int:
        if self.share == 0:
            return 0
        return int(self.share) if self.share > 1 else max(self.gpus, 1)

    @property
    def share_per_gpu(self) -> float:
        return min(self.share, 1.0)


@dataclass(frozen=True)
class Placement:
    """One instance: where it runs, its share of each of its GPUs, and its memory cap on each (GiB)."""

    component: str
    instance: int
    gpus: tuple[int, ...]  # empty: CPU
    share: float
    memory_cap_gib: float
    memory_fraction: float = 0.0  # memory_cap_gib over the memory of the smallest of its GPUs

    @property
    def kind(self) -> str:
        if len(self.gpus) > 1:
            return "KIND_MODEL"
        return "KIND_GPU" if self.gpus else "KIND_CPU"


class _Load:
    def __init__(self, gpus: Sequence[Gpu]) -> None:
        self.gpus = {g.index: g for g in gpus}
        self.share: dict[int, float] = dict.fromkeys(self.gpus, 0.0)
        self.memory: dict[int, float] = dict.fromkeys(self.gpus, 0.0)

    def memory_need(self, demand: Demand, gpu: int) -> float:
        if demand.memory_gib is not None:
            return demand.memory_gib
        return demand.share_per_gpu * self.gpus[gpu].memory_gib

    def fits(self, demand: Demand, gpu: int) -> bool:
        return (self.share[gpu] + demand.share_per_gpu <= 1.0 + EPSILON
                and self.memory[gpu] + self.memory_need(demand, gpu) <= self.gpus[gpu].memory_gib + EPSILON)

    def take(self, demand: Demand, gpu: int) -> float:
        need = self.memory_need(demand, gpu)
        self.share[gpu] += demand.share_per_gpu
        self.memory[gpu] += need
        return need

    def describe(self) -> str:
        return ", ".join(f"GPU {i}: {1 - self.share[i]:.2f} share and {g.memory_gib - self.memory[i]:.1f} GiB free"
                         for i, g in self.gpus.items())


def _choose(load: _Load, demand: Demand) -> list[int]:
    """The GPUs for one instance, by the demand's strategy; empty when it does not fit."""
    fitting = [i for i in load.gpus if load.fits(demand, i)]
    if demand.strategy == "pack":  # busiest first: fewest GPUs in use
        fitting.sort(key=lambda i: (-load.share[i], i))
    else:  # least busy first: most GPUs in use
        fitting.sort(key=lambda i: (load.share[i], i))
    needed = demand.gpus_per_instance
    return fitting[:needed] if len(fitting) >= needed else []


def plan(demands: Sequence[Demand], gpus: Sequence[Gpu]) -> list[Placement]:
    """Every instance of every demand placed, in component order; raises PlacementError when it does not fit."""
    names = [d.component for d in demands]
    if len(set(names)) != len(names):
        raise PlacementError(f"components must be unique, got {names}")
    if len({g.index for g in gpus}) != len(gpus):
        raise PlacementError("GPU indexes must be unique")
    load = _Load(gpus)
    placed: dict[str, list[Placement]] = defaultdict(list)
    for demand in sorted(demands, key=lambda d: (-d.share, d.component)):
        for instance in range(demand.instances):
            if demand.share == 0:
                placed[demand.component].append(Placement(demand.component, instance, (), 0.0, 0.0))
                continue
            if not gpus:
                raise PlacementError(f"{demand.component} asks for a GPU share of {demand.share}, but the inventory "
                                     "has no GPU: set its share to 0 (CPU) or list GPUs")
            chosen = _choose(load, demand)
            if not chosen:
                raise PlacementError(
                    f"{demand.component} instance {instance + 1} of {demand.instances} (share {demand.share}"
                    + (f", {demand.memory_gib} GiB" if demand.memory_gib is not None else "")
                    + f") does not fit: {load.describe()}. Lower the shares or instances, or add GPUs")
            caps = [load.take(demand, gpu) for gpu in chosen]
            fraction = min(cap / load.gpus[gpu].memory_gib for cap, gpu in zip(caps, chosen))
            placed[demand.component].append(Placement(demand.component, instance, tuple(sorted(chosen)),
                                                      demand.share_per_gpu, min(caps), round(fraction, 4)))
    return [p for name in names for p in placed[name]]


def instance_groups(placements: Sequence[Placement], component: str) -> list[dict[str, object]]:
    """Triton ``instance_group`` entries for one component: one per GPU set, with its instance count.

    Triton creates ``count`` instances on *each* GPU an entry lists, so an instance spanning several GPUs (tensor
    parallel) is a ``KIND_MODEL`` entry, named after its GPUs (``group_name``), whose engine is given those GPUs
    (``visible_gpus``) instead."""
    counts: dict[tuple[int, ...], int] = defaultdict(int)
    for p in placements:
        if p.component == component:
            counts[p.gpus] += 1
    groups: list[dict[str, object]] = []
    for gpus, count in sorted(counts.items()):
        if len(gpus) > 1:
            groups.append({"name": group_name(component, gpus), "count": count, "kind": "KIND_MODEL",
                           "visible_gpus": list(gpus)})
        elif gpus:
            groups.append({"count": count, "kind": "KIND_GPU", "gpus": list(gpus)})
        else:
            groups.append({"count": count, "kind": "KIND_CPU"})
    return groups


def group_name(component: str, gpus: Sequence[int]) -> str:
    """The instance group name of a multi-GPU instance; Triton names its instances ``<group>_<n>``."""
    return f"{component}_gpus_{'_'.join(map(str, gpus))}"


def gpus_used(placements: Sequence[Placement]) -> set[int]:
    return {gpu for p in placements for gpu in p.gpus}
