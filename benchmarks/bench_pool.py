"""The report's shared statistics of a run's events, two ways, side by side in one process: the
numpy pass (`decompose._pool`: one fetch, one sort of packed keys per grouping) against the SQL
queries it replaces (the pooled decompositions' grouping sets, the per-rank decompositions and the
latency CDF: DuckDB's quantile_cont), on one store. Runs alternate; each opens its own report
block (`timeline.materialized`) and times the five tables inside it (the report computes the pool
before the kernel timeline, for its memory; here after it, the same work). Prints wall and CPU
(this process, all threads) per run, and checks that both sides give the same rows.

    python benchmarks/bench_pool.py benchmarks/.cache/scale_10000000.duckdb --runs 3
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "src"))

from hybridscope.analyze import decompose, report, stats, timeline
from hybridscope.store import db


def tables(con, run: int, numpy: bool) -> tuple[float, float, list]:
    """(wall s, CPU s, rows) of the pooled decompositions, the per-rank view and the CDF."""
    rounding = stats.duckdb_rounding
    if not numpy:
        stats.duckdb_rounding = lambda: None  # the SQL queries answer
    try:
        with timeline.materialized(con, run) as block:
            t, c = time.perf_counter(), time.process_time()
            decompose.prepare(con, run)  # the pool (the numpy side) or nothing (the SQL side)
            got = [decompose.decompose(con, run, by=by).rows for by in ("layer_type", "layer", "module")]
            got.append(report.per_rank(con, run).rows)
            got.append(report.latency_cdf(con, run).rows)
            wall, cpu = time.perf_counter() - t, time.process_time() - c
            assert numpy == any(k[0] == "decompose.pool" and v is not None for k, v in block.memo.items()
                                if isinstance(k, tuple))
        return wall, cpu, got
    finally:
        stats.duckdb_rounding = rounding


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("store", type=Path)
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    if stats.duckdb_rounding() is None:
        sys.exit("this DuckDB's quantile interpolation is not reproduced in numpy: nothing to compare")
    con = db.open_readonly(args.store)
    run = db.resolve_run(con, None)
    (n,), = con.execute(f"SELECT count(*) FROM events WHERE run_id = ? AND {timeline.KERNEL_FILTER}", [run]).fetchall()
    print(f"{args.store.name}: {n:,} kernels, run {run}")
    times: dict[bool, list[tuple[float, float]]] = {True: [], False: []}
    rows: dict[bool, list] = {}
    for i in range(args.runs):
        for numpy in (True, False):
            wall, cpu, rows[numpy] = tables(con, run, numpy)
            times[numpy].append((wall, cpu))
            print(f"  run {i + 1} {'numpy' if numpy else 'SQL  '}: {wall:.2f} s wall, {cpu:.2f} CPU s", flush=True)
    for numpy, label in ((True, "numpy pass"), (False, "SQL queries")):
        w = statistics.median(x for x, _ in times[numpy])
        c = statistics.median(x for _, x in times[numpy])
        print(f"{label}: median {w:.2f} s wall, {c:.2f} CPU s")
    print("rows identical" if rows[True] == rows[False] else "ROWS DIFFER")
    if rows[True] != rows[False]:
        sys.exit(1)


if __name__ == "__main__":
    main()
