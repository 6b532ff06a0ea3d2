"""Benchmark: `decompose` over a store of N GPU kernel events (default 10 million).

The store is generated in DuckDB from `range()` and `random()` (no Python loop): kernels of every
layer type with log-normal durations, spread over 2 ranks, 48 layers and ~40 kernel names, with
memcpy/memset and 20 % host-side runtime events beside them so the GPU filter has work to do.
It is cached under benchmarks/.cache/ (keyed by N) and reused by later runs.

    python benchmarks/bench_decompose.py                 # 10M events, all --by modes, 5 repeats
    python benchmarks/bench_decompose.py --events 1e6 --repeat 3

Prints one line per mode: cold (first call on a fresh connection) and warm median/min wall seconds,
and the warm median CPU seconds of all threads (what the work costs when the cores are shared).
The target (issue 2): < 2 s for 10M kernel events on the 2-core development machine.
"""

from __future__ import annotations

import argparse
import os
import platform
import resource
import statistics
import time
from pathlib import Path

CACHE = Path(__file__).resolve().parent / ".cache"

# layer type -> (share of kernels, median duration in ns, log-normal sigma): a decode-heavy hybrid mix.
MIX = {
    "mamba": (0.30, 9_000, 0.25), "attention": (0.10, 14_000, 0.6), "moe_router": (0.06, 4_000, 0.2),
    "moe_experts": (0.18, 22_000, 0.4), "moe_comm": (0.06, 30_000, 1.4), "mlp": (0.04, 12_000, 0.3),
    "norm": (0.12, 2_500, 0.15), "embedding": (0.01, 3_000, 0.2), "lm_head": (0.01, 60_000, 0.2),
    "sampling": (0.01, 5_000, 0.3), "comm": (0.02, 18_000, 0.9), "other": (0.04, 3_500, 0.5),
    None: (0.05, 6_000, 0.8),
}


def build(path: Path, n: int) -> float:
    """Create the synthetic store at `path`; return the seconds it took."""
    from hybridscope.store import db

    t0 = time.perf_counter()
    con = db.open_store(path)
    types = list(MIX)
    cum, acc = [], 0.0
    for t in types:
        acc += MIX[t][0]
        cum.append(acc)
    # CASE ladder on one uniform draw: layer type by share, then its median and sigma.
    pick = " ".join(f"WHEN u < {c / acc!r} THEN {i}" for i, c in enumerate(cum))
    type_names = "[" + ", ".join("NULL" if t is None else f"'{t}'" for t in types) + "]"
    medians = "[" + ", ".join(str(MIX[t][1]) for t in types) + "]"
    sigmas = "[" + ", ".join(repr(MIX[t][2]) for t in types) + "]"
    n_host = n // 5
    with db.transaction(con):
        con.execute("INSERT INTO runs (run_id, label, source, world_size, device_name, t_start_ns, t_end_ns)"
                    " VALUES (1, 'bench', 'kineto', 2, 'synthetic', 0, ?)", [n * 24_000 // 2])
        con.execute("INSERT INTO run_ranks (run_id, rank, n_events, t_start_ns, t_end_ns)"
                    " SELECT 1, r, ?, 0, ? FROM range(2) t(r)", [n // 2, n * 24_000 // 2])
        con.execute(f"""
            INSERT INTO events (run_id, rank, event_id, source, kind, name, device, stream, ts_ns,
                                duration_ns, duration_us, layer_type, layer_index, module, attr_method)
            SELECT 1, rank, i, 'cuda', kind, coalesce(name0, 'triton_poi_fused_' || (i % 5)), rank, 7, ts, d,
                   d / 1000.0, lt, li,
                   CASE WHEN lt IS NULL THEN NULL ELSE 'model.layers.' || li || '.' || lt END, 'name'
            FROM (
                SELECT i, i % 2 AS rank, (i // 2) * 24000 AS ts,
                       CASE WHEN u2 < 0.02 THEN 'memcpy' WHEN u2 < 0.03 THEN 'memset' ELSE 'kernel' END AS kind,
                       {type_names}[ti] AS lt, (i // 7) % 48 AS li,
                       {type_names}[ti] || '_kernel_' || (i % 3) AS name0,
                       greatest(1, ({medians}[ti] * exp({sigmas}[ti]
                           * sqrt(-2 * ln(greatest(u3, 1e-12))) * cos(2 * pi() * u4)))::BIGINT) AS d
                FROM (SELECT i, u2, u3, u4, CASE {pick} ELSE {len(types) - 1} END + 1 AS ti
                      FROM (SELECT i, random() AS u, random() AS u2, random() AS u3, random() AS u4
                            FROM range(?) t(i)))
            )
        """, [n])
        con.execute("""
            INSERT INTO events (run_id, rank, event_id, source, kind, name, tid, ts_ns, duration_ns, duration_us)
            SELECT 1, i % 2, ? + i, 'cuda_api', 'runtime', 'cudaLaunchKernel', 1, (i // 2) * 60000, 3000, 3.0
            FROM range(?) t(i)
        """, [n, n_host])
    con.execute("CHECKPOINT")
    con.close()
    return time.perf_counter() - t0


def time_decompose(path: Path, by: str, repeat: int, rank: int | None = None) -> dict:
    """Wall and CPU seconds (all threads) of decompose(by=..., rank=...) on a read-only connection:
    the first call on a fresh connection ('cold') and `repeat` more ('warm')."""
    from hybridscope.analyze.decompose import decompose
    from hybridscope.store import db

    con = db.open_readonly(path)
    walls, cpus, rows = [], [], 0
    for _ in range(repeat + 1):
        t0, c0 = time.perf_counter(), time.process_time()
        rows = len(decompose(con, 1, by=by, rank=rank))
        walls.append(time.perf_counter() - t0)
        cpus.append(time.process_time() - c0)
    con.close()
    return {"rows": rows, "cold": walls[0], "warm": walls[1:], "cpu": statistics.median(cpus[1:])}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=float, default=10e6, help="GPU events in the store (default 1e7)")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--by", nargs="*", default=["layer_type", "layer", "module", "kernel"])
    ap.add_argument("--rebuild", action="store_true", help="regenerate the cached store")
    args = ap.parse_args()
    n = int(args.events)
    CACHE.mkdir(exist_ok=True)
    path = CACHE / f"decompose_{n}.duckdb"
    if args.rebuild and path.exists():
        path.unlink()
    if not path.exists():
        print(f"building {path.name}: {n:,} GPU events ...", flush=True)
        print(f"  built in {build(path, n):.1f} s ({path.stat().st_size / 2**20:.0f} MiB)")

    import duckdb
    import numpy

    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, {platform.processor() or platform.platform()}")
    print(f"python {platform.python_version()}, duckdb {duckdb.__version__}, numpy {numpy.__version__}")
    print(f"{'by':<16}{'rows':>6}{'cold s':>9}{'warm median s':>15}{'warm min s':>12}{'warm CPU s':>12}")
    for by, rank in [*((b, None) for b in args.by), ("layer_type", 0)]:
        r = time_decompose(path, by, args.repeat, rank)
        label = by if rank is None else f"{by} r{rank}"
        print(f"{label:<16}{r['rows']:>6}{r['cold']:>9.3f}{statistics.median(r['warm']):>15.3f}"
              f"{min(r['warm']):>12.3f}{r['cpu']:>12.3f}", flush=True)
    print("load average (1, 5, 15 min) after the run: " + ", ".join(f"{x:.1f}" for x in os.getloadavg()))
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"peak RSS of this process: {peak:.0f} MiB")


if __name__ == "__main__":
    main()
