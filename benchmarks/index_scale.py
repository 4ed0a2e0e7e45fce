"""FAISS index types at scale: build time, memory, QPS at batch 1 and 32, and recall@10 vs exact search.

Every index is built with the project's own ``tritonrag.kb.faiss_index.build_index`` (inner product over
L2-normalised vectors) and queried through ``search_parameters`` + ``index.search(q, k, params=...)``, exactly as
the retriever does. IVF and HNSW are built once each; their query-time knob (IVF nprobe, HNSW efSearch) is swept.

Synthetic data (seeded, deterministic; generated in chunks of 65,536 rows into one float32 array):
a two-level Gaussian mixture in a 64-d latent space, projected to ``--dim`` dimensions by a fixed random matrix
W (64 x dim, entries N(0, 1/64)), plus isotropic noise, then L2-normalised::

    topics    T_t ~ N(0, I_64),                         t = 1..60
    centres   C_c = T_topic(c) + 0.5 * N(0, I_64),      c = 1..3000, topic(c) uniform
    weights   w_c ~ lognormal(0, 1), normalised         (uneven cluster sizes, as in real corpora)
    point     x = normalise((C_c + 0.8 * N(0, I_64)) @ W + 0.1 * N(0, I_dim)),  c ~ w

Queries are fresh draws from the same distribution (a separate random stream), never copies of database rows.
Clusters overlap (only ~40% of a query's true top-10 share its cluster), so neither IVF nor HNSW gets a free ride.

Memory is the index's serialized size (``faiss.write_index`` to a temp file): vectors plus lists or graph.
The process RSS growth across the build (and the build's peak RSS growth) is reported alongside it.

Examples::

    .venv/bin/python benchmarks/index_scale.py --n 100000                 # quick check (~1 minute)
    .venv/bin/python benchmarks/index_scale.py                            # 1M vectors, all types
    .venv/bin/python benchmarks/index_scale.py --types ivf --nprobe 4,16,64 --ivf-nlist 2048
    .venv/bin/python benchmarks/index_scale.py --types hnsw --hnsw-m 16 --ef-search 64,128 --out /tmp/hnsw.md
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import datetime as dt
import gc
import os
import platform
import shlex
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from tritonrag.kb.faiss_index import INDEX_TYPES, IndexSpec, build_index, nlist_for, search_parameters

K = 10
CHUNK = 65_536
MIB = 1 << 20
DEFAULT_OUT = Path(__file__).resolve().parent / "results" / "index_scale.md"
SERVICE_NPROBE, SERVICE_EF_SEARCH = 16, 128  # the retriever's defaults (defaults.toml [retriever])


# ----------------------------------------------------------------------------------------------- data


@dataclass(frozen=True)
class ClusteredGenerator:
    """Two-level Gaussian mixture in a latent space, randomly projected to ``dim`` and L2-normalised."""

    dim: int = 384
    seed: int = 0
    latent_dim: int = 64
    topics: int = 60
    centres: int = 3000
    centre_spread: float = 0.5
    cluster_spread: float = 0.8
    noise: float = 0.1

    def describe(self) -> str:
        return (f"{self.topics} topics -> {self.centres} centres (spread {self.centre_spread}, lognormal(0,1) "
                f"weights) in {self.latent_dim}-d latent space; points = centre + {self.cluster_spread}*N(0,I), "
                f"projected by a fixed random {self.latent_dim}x{self.dim} matrix, + {self.noise}*N(0,I) noise, "
                f"L2-normalised; seed {self.seed}")

    def _model(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        rng = np.random.default_rng([self.seed, 0])
        topics = rng.standard_normal((self.topics, self.latent_dim), dtype=np.float32)
        centres = topics[rng.integers(0, self.topics, self.centres)]
        centres += self.centre_spread * rng.standard_normal((self.centres, self.latent_dim), dtype=np.float32)
        weights = rng.lognormal(0.0, 1.0, self.centres)
        projection = rng.standard_normal((self.latent_dim, self.dim), dtype=np.float32) / np.sqrt(self.latent_dim)
        return centres, weights / weights.sum(), projection

    def sample(self, n: int, stream: int, desc: str) -> tuple[np.ndarray, np.ndarray]:
        """``n`` vectors from random stream ``stream`` (1 = database, 2 = queries), and their mixture components."""
        centres, weights, projection = self._model()
        out = np.empty((n, self.dim), dtype=np.float32)
        components = np.empty(n, dtype=np.int32)
        with tqdm(total=n, desc=desc, unit="vec", unit_scale=True, file=sys.stdout, mininterval=2.0) as bar:
            for chunk, start in enumerate(range(0, n, CHUNK)):
                m = min(CHUNK, n - start)
                rng = np.random.default_rng([self.seed, stream, chunk])
                components[start:start + m] = rng.choice(self.centres, m, p=weights)
                latent = centres[components[start:start + m]]
                latent += self.cluster_spread * rng.standard_normal((m, self.latent_dim), dtype=np.float32)
                x = latent @ projection
                x += self.noise * rng.standard_normal((m, self.dim), dtype=np.float32)
                x /= np.linalg.norm(x, axis=1, keepdims=True)
                out[start:start + m] = x
                bar.update(m)
        return out, components


# ----------------------------------------------------------------------------------------------- memory


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def rss_bytes() -> int:
    return _status_kib("VmRSS") * 1024


def peak_rss_bytes() -> int:
    return _status_kib("VmHWM") * 1024


def run_peak_rss_bytes() -> int:
    """Peak RSS of the whole run, across the VmHWM resets done around builds."""
    return max(_peak_before_resets, peak_rss_bytes())


_peak_before_resets = 0


def reset_peak_rss() -> bool:
    """Reset VmHWM to the current RSS (Linux clear_refs 5); False where the kernel does not allow it."""
    global _peak_before_resets
    _peak_before_resets = max(_peak_before_resets, peak_rss_bytes())
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


def release_freed_memory() -> None:
    """Return freed heap memory to the OS (glibc malloc_trim), so RSS growth is not hidden by reused free memory."""
    gc.collect()
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


def serialized_bytes(index) -> int:
    """Size of ``faiss.write_index(index)``, written to a temp file (no in-memory copy)."""
    import faiss

    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "index.faiss")
        faiss.write_index(index, path)
        return os.path.getsize(path)


# ----------------------------------------------------------------------------------------------- timing


@contextlib.contextmanager
def heartbeat(label: str, every: float = 30.0) -> Iterator[None]:
    """Print ``label`` every ``every`` seconds while the block runs (faiss releases the GIL while it builds)."""
    done, start = threading.Event(), time.perf_counter()

    def beat() -> None:
        while not done.wait(every):
            print(f"    ... {label}: {time.perf_counter() - start:.0f} s", flush=True)

    thread = threading.Thread(target=beat, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


def qps(index, queries: np.ndarray, batch: int, params) -> tuple[float, np.ndarray]:
    """Queries per second sending ``queries`` in batches of ``batch``, and the ids found."""
    index.search(queries[: min(batch, 32)], K, params=params)  # warm-up, untimed
    ids = np.empty((len(queries), K), dtype=np.int64)
    start = time.perf_counter()
    for i in range(0, len(queries), batch):
        ids[i:i + batch] = index.search(queries[i:i + batch], K, params=params)[1]
    return len(queries) / (time.perf_counter() - start), ids


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean fraction of each query's exact top-k that the index returned."""
    return float(np.mean([len(np.intersect1d(f, t)) / truth.shape[1] for f, t in zip(found, truth)]))


# ----------------------------------------------------------------------------------------------- benchmark


@dataclass
class Built:
    type: str
    params: str
    build_s: float
    bytes: int
    rss_delta: int
    peak_delta: int | None


@dataclass
class Row:
    built: Built
    params: str
    qps1: float
    n1: int
    qps32: float
    recall: float

    def cells(self) -> list[str]:
        b = self.built
        return [b.type, self.params, f"{b.build_s:.1f}", f"{b.bytes / MIB:,.0f}", f"{self.qps1:,.0f}",
                f"{self.qps32:,.0f}", f"{self.recall:.4f}"]


def build(vectors: np.ndarray, spec: IndexSpec, params: str):
    """Build one index, timing it and measuring its memory; returns (index, Built)."""
    print(f"[{spec.type}] building ({params}) on {len(vectors):,} vectors", flush=True)
    release_freed_memory()
    before, can_peak = rss_bytes(), reset_peak_rss()
    start = time.perf_counter()
    with heartbeat(f"building {spec.type}"):
        index = build_index(vectors, spec)
    seconds = time.perf_counter() - start
    after, peak = rss_bytes(), peak_rss_bytes() if can_peak else None
    built = Built(spec.type, params, seconds, serialized_bytes(index), after - before,
                  peak - before if peak is not None else None)
    print(f"[{spec.type}] built in {seconds:.1f} s; serialized {built.bytes / MIB:,.0f} MiB, "
          f"RSS +{built.rss_delta / MIB:,.0f} MiB", flush=True)
    return index, built


def measure(index, built: Built, params_text: str, params, queries: np.ndarray, truth: np.ndarray,
            batch1_queries: int) -> Row:
    q1, _ = qps(index, queries[:batch1_queries], 1, params)
    q32, ids = qps(index, queries, 32, params)
    row = Row(built, params_text, q1, batch1_queries, q32, recall_at_k(ids, truth))
    print(f"[{built.type}] {params_text}: QPS batch 1 {q1:,.0f} (over {batch1_queries}), batch 32 {q32:,.0f}, "
          f"recall@{K} {row.recall:.4f}", flush=True)
    return row


def int_list(text: str) -> list[int]:
    return [int(v) for v in text.split(",") if v.strip()]


def type_list(text: str) -> list[str]:
    types = [t.strip() for t in text.split(",") if t.strip()]
    unknown = [t for t in types if t not in INDEX_TYPES]
    if unknown or not types:
        raise argparse.ArgumentTypeError(f"index types must be among {', '.join(INDEX_TYPES)}, got {text!r}")
    return types


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    defaults = IndexSpec()
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=__doc__.split("Examples::")[1],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=1_000_000, help="database vectors (default 1,000,000)")
    p.add_argument("--dim", type=int, default=384, help="vector dimension (default 384)")
    p.add_argument("--queries", type=int, default=1000, help="query vectors (default 1000)")
    p.add_argument("--types", type=type_list, default=list(INDEX_TYPES),
                   help="comma-separated index types (default flat,ivf,hnsw)")
    p.add_argument("--seed", type=int, default=0, help="data seed (default 0)")
    p.add_argument("--out", type=Path, default=DEFAULT_OUT, help="Markdown results file")
    p.add_argument("--ivf-nlist", type=int, default=defaults.ivf_nlist, help="IVF lists (0 = 4*sqrt(n))")
    p.add_argument("--hnsw-m", type=int, default=defaults.hnsw_m, help=f"HNSW links (default {defaults.hnsw_m})")
    p.add_argument("--hnsw-ef-construction", type=int, default=defaults.hnsw_ef_construction,
                   help=f"HNSW efConstruction (default {defaults.hnsw_ef_construction})")
    p.add_argument("--nprobe", type=int_list, default=[8, 16, 32, 64], help="IVF nprobe sweep (default 8,16,32,64)")
    p.add_argument("--ef-search", type=int_list, default=[32, 64, 128, 256],
                   help="HNSW efSearch sweep (default 32,64,128,256)")
    p.add_argument("--flat-batch1-queries", type=int, default=200,
                   help="queries sent one at a time to the (slow) flat index; ivf/hnsw use all (default 200)")
    p.add_argument("--threads", type=int, default=0, help="faiss OpenMP threads (default 0 = faiss's default)")
    return p.parse_args(argv)


def machine() -> dict[str, str]:
    import faiss

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor() or "unknown")
    ram = _meminfo_kib("MemTotal") * 1024
    return {"cpu": cpu, "cores": str(os.cpu_count()), "ram": f"{ram / (1 << 30):.1f} GiB",
            "faiss": f"{faiss.__version__} ({faiss.get_compile_options().strip()})",
            "omp": str(faiss.omp_get_max_threads()), "numpy": np.__version__, "platform": platform.platform()}


def _meminfo_kib(field: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return 0


def render(args: argparse.Namespace, info: dict[str, str], gen: ClusteredGenerator, rows: list[Row],
           builts: list[Built], stats: dict[str, float], started: dt.datetime) -> str:
    command = ".venv/bin/python " + " ".join(shlex.quote(a) for a in sys.argv)
    header = ["type", "params", "build s", "memory MiB", "QPS batch 1", "QPS batch 32", f"recall@{K}"]
    lines = [
        f"# FAISS index types at scale ({started:%Y-%m-%d %H:%M} UTC)", "",
        f"Command: `{command}`", "",
        f"Machine: {info['cpu']}, {info['cores']} cores, {info['ram']} RAM, no GPU; faiss {info['faiss']}, "
        f"`faiss.omp_get_max_threads()` = {info['omp']}; numpy {info['numpy']}; {info['platform']}. "
        f"Load average at start / end: {stats['load_start']:.2f} / {stats['load_end']:.2f}.", "",
        f"Data: {args.n:,} database vectors and {args.queries:,} queries, {args.dim}-d float32, generated in "
        f"{stats['gen_s']:.0f} s. Generator: {gen.describe()}. Queries are fresh draws from the same mixture "
        f"(separate random stream). Exact neighbours: mean inner product of the 1st / 10th true neighbour "
        f"{stats['nn1']:.3f} / {stats['nn10']:.3f}; {stats['same_cluster']:.0%} of true top-10 neighbours share "
        f"the query's cluster.", "",
        f"Method: ground truth = exact top-{K} by inner product (IndexFlatIP, which is also the flat row). Indexes "
        "built once each with `tritonrag.kb.faiss_index.build_index`; query-time knobs passed as "
        "`index.search(q, k, params=search_parameters(index, nprobe, ef_search))`. QPS batch 1 sends queries one at "
        f"a time (flat: first {min(args.flat_batch1_queries, args.queries)} queries; ivf/hnsw: all); QPS batch 32 "
        f"sends all queries in batches of 32; recall@{K} is over all queries (batch-32 results). One untimed "
        "warm-up search precedes each measurement. Memory = serialized index size (`faiss.write_index` to a temp "
        "file: vectors + lists/graph); RSS growth is in the build table below.", "",
        "| " + " | ".join(header) + " |", "|" + "---|" * len(header),
        *("| " + " | ".join(r.cells()) + " |" for r in rows), "",
        "Build details (RSS = process resident memory: growth from before to after the build, and the peak growth "
        "during it, which includes IVF training buffers; freed heap memory is returned to the OS with "
        "`malloc_trim` before each build):", "",
        "| type | params | build s | serialized MiB | RSS growth MiB | peak RSS growth MiB |",
        "|---|---|---|---|---|---|",
        *(f"| {b.type} | {b.params} | {b.build_s:.1f} | {b.bytes / MIB:,.0f} | {b.rss_delta / MIB:,.0f} | "
          f"{'n/a' if b.peak_delta is None else f'{b.peak_delta / MIB:,.0f}'} |" for b in builts), "",
        "Notes:", "",
        f"- The service's defaults are nprobe={SERVICE_NPROBE} and efSearch={SERVICE_EF_SEARCH} "
        "(`defaults.toml` [retriever]); IndexSpec defaults were used for the builds unless the command overrides "
        "them.",
        f"- faiss runs OpenMP with {info['omp']} threads, but flat, IVF (default parallel_mode) and HNSW searches "
        "parallelise across the queries of one call, so a batch-1 search runs on one core and also pays the "
        "per-call overhead (OpenMP fork/join, result heaps) each time; batch-1 QPS is measured as is, without "
        "tuning threads. With 2 cores, batch 32 can be at most ~2x batch 1 for IVF/HNSW (flat also gains from BLAS).",
        "- The machine is shared with other work, so timings are noisy (see the load averages above); treat "
        "differences under ~20% as noise.",
        f"- Total wall time {stats['total_s'] / 60:.1f} min; peak process RSS {stats['peak_rss'] / (1 << 30):.2f} GiB.",
        "",
    ]
    return "\n".join(lines)


def print_table(rows: list[Row]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"FAISS index types, recall@{K} vs exact")
    for col in ["type", "params", "build s", "memory MiB", "QPS batch 1", "QPS batch 32", f"recall@{K}"]:
        table.add_column(col, justify="left" if col in ("type", "params") else "right")
    for r in rows:
        table.add_row(*r.cells())
    Console(width=140).print(table)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    import faiss

    if args.threads:
        faiss.omp_set_num_threads(args.threads)
    t0, started = time.perf_counter(), dt.datetime.now(dt.UTC)
    load_start = os.getloadavg()[0]
    info = machine()
    print(f"machine: {info['cpu']}, {info['cores']} cores, {info['ram']}; faiss {info['faiss']}, "
          f"omp_get_max_threads() = {info['omp']}", flush=True)

    gen = ClusteredGenerator(dim=args.dim, seed=args.seed)
    print(f"[data] {gen.describe()}", flush=True)
    start = time.perf_counter()
    vectors, db_clusters = gen.sample(args.n, stream=1, desc="database")
    queries, query_clusters = gen.sample(args.queries, stream=2, desc="queries")
    gen_s = time.perf_counter() - start
    print(f"[data] {args.n:,} + {args.queries:,} vectors in {gen_s:.1f} s ({vectors.nbytes / MIB:,.0f} MiB)",
          flush=True)

    rows: list[Row] = []
    builts: list[Built] = []
    flat, built = build(vectors, IndexSpec("flat"), "exact")
    print("[flat] exact top-10 for all queries (ground truth)", flush=True)
    truth_scores, truth = flat.search(queries, K)
    stats = {"gen_s": gen_s, "nn1": float(truth_scores[:, 0].mean()), "nn10": float(truth_scores[:, -1].mean()),
             "same_cluster": float((db_clusters[truth] == query_clusters[:, None]).mean()), "load_start": load_start}
    if "flat" in args.types:
        builts.append(built)
        rows.append(measure(flat, built, "exact", None, queries, truth, min(args.flat_batch1_queries, args.queries)))
    del flat

    for kind in [t for t in args.types if t != "flat"]:
        spec = IndexSpec(kind, args.ivf_nlist, args.hnsw_m, args.hnsw_ef_construction)
        if kind == "ivf":
            base = f"nlist={nlist_for(args.n, args.ivf_nlist)}"
            sweep = [(f"{base} nprobe={p}", p, SERVICE_EF_SEARCH) for p in args.nprobe]
        else:
            base = f"M={args.hnsw_m} efC={args.hnsw_ef_construction}"
            sweep = [(f"{base} efSearch={e}", SERVICE_NPROBE, e) for e in args.ef_search]
        index, built = build(vectors, spec, base)
        builts.append(built)
        for text, nprobe, ef in sweep:
            params = search_parameters(index, nprobe, ef)
            rows.append(measure(index, built, text, params, queries, truth, args.queries))
        del index

    stats |= {"total_s": time.perf_counter() - t0, "peak_rss": run_peak_rss_bytes(), "load_end": os.getloadavg()[0]}
    print_table(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(args, info, gen, rows, builts, stats, started))
    print(f"total {stats['total_s'] / 60:.1f} min, peak RSS {stats['peak_rss'] / (1 << 30):.2f} GiB; "
          f"wrote {args.out}", flush=True)


if __name__ == "__main__":
    main()
