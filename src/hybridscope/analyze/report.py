"""Everything the report shows, computed once: a `Report` of named Tables, handed to renderers.

`build_report(con, run_id)` runs every analysis of the report on one run; the terminal and HTML
renderers (present/terminal.py, present/html.py) only format these tables. `hybridscope report`
and `hybridscope demo` both call it.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hybridscope.analyze import advice as advice_mod
from hybridscope.analyze import conflicts, dashboard, experts, overlap, steps, timeline
from hybridscope.store.db import GPU_EVENTS
from hybridscope.table import Column, Table, plain

# Levels of the latency CDF: every percent, then finer in the tail where the story is.
CDF_LEVELS: tuple[float, ...] = tuple(np.round(np.r_[np.arange(0, 100) / 100, 0.991 + np.arange(9) / 1000,
                                                     0.9995, 1.0], 6).tolist())


@dataclass(frozen=True)
class Report:
    run_id: int
    run: dict
    tables: dict[str, Table] = field(default_factory=dict)

    def __getitem__(self, name: str) -> Table:
        return self.tables[name]

    def get(self, name: str) -> Table | None:
        return self.tables.get(name)


def latency_cdf(con, run_id: int) -> Table:
    """Per layer type, the continuous quantile of GPU kernel durations at each of CDF_LEVELS."""
    got = con.execute(
        f"""
        SELECT coalesce(layer_type, 'unattributed') AS lt, count(*), quantile_cont(duration_ns, $levels)
        FROM events WHERE run_id = $run AND {GPU_EVENTS}
        GROUP BY lt ORDER BY lt
        """,
        {"run": run_id, "levels": list(CDF_LEVELS)},
    ).fetchall()
    rows = [(lt, int(n), q, float(v)) for lt, n, qs in got for q, v in zip(CDF_LEVELS, qs)]
    cols = (Column("layer_type", "str", "", "layer type"), Column("n", "int", "events of the layer type"),
            Column("level", "float", "cumulative probability"), Column("duration_ns", "ns", "quantile at level"))
    return Table("latency_cdf", cols, rows, {"title": "Latency CDF per layer type", "run_id": run_id})


def run_info(con, run_id: int) -> dict:
    """The run's row (label, source, world size, device, window) as a plain dict."""
    cur = con.execute("SELECT * FROM runs WHERE run_id = ?", [run_id])
    names = [d[0] for d in cur.description]
    row = cur.fetchall()[0]
    info = {n: plain(v) for n, v in zip(names, row) if n not in ("versions", "distributed_info", "notes")}
    info["created_at"] = str(info.get("created_at"))
    info["ranks"] = [r for (r,) in con.execute(
        "SELECT DISTINCT rank FROM events WHERE run_id = ? ORDER BY rank", [run_id]).fetchall()]
    return info


def build_report(con, run_id: int) -> Report:
    """Every table of the report for run `run_id` (which must exist: see store.db.resolve_run)."""
    with timeline.cached():  # the kernels, steps and windows are read once for all analyses
        return _build(con, run_id)


def _build(con, run_id: int) -> Report:
    from hybridscope.analyze.decompose import decompose

    info = run_info(con, run_id)
    t: dict[str, Table] = {}

    def put(table: Table) -> Table:
        t[table.name] = table
        return table

    dec = put(decompose(con, run_id, by="layer_type"))
    put(decompose(con, run_id, by="layer"))
    put(decompose(con, run_id, by="module", top=24))
    dash = put(dashboard.dashboard(con, run_id))
    put(dashboard.contrast(con, run_id, dash=dash, decomposition=dec))
    put(dashboard.duty_cycle(con, run_id))
    if len(info["ranks"]) > 1:
        from hybridscope.analyze import collectives

        put(per_rank(con, run_id, info["ranks"]))
        put(collectives.rank_waits(con, run_id))
        put(collectives.stragglers(con, run_id))
        put(collectives.traffic(con, run_id))
    put(latency_cdf(con, run_id))
    put(steps.steps(con, run_id))
    put(steps.step_stack(con, run_id))
    put(steps.step_stack_bins(con, run_id))
    put(steps.phases(con, run_id))
    put(steps.slow_steps(con, run_id))
    es = put(experts.expert_steps(con, run_id))
    put(experts.expert_correlation(con, run_id, es))
    put(experts.expert_load(con, run_id))
    put(overlap.overlap(con, run_id))
    for table in overlap.gaps(con, run_id).values():
        put(table)
    put(overlap.launch_bound(con, run_id))
    put(conflicts.conflict_pairs(put(conflicts.conflicts(con, run_id))))
    windows = dec.meta.get("windows_ns") or {}
    wall = max((hi - lo for lo, hi in windows.values()), default=None)  # the run's wall clock, not rank-time
    put(advice_mod.advice(t, wall_ns=wall, n_ranks=max(len(windows), 1)))
    return Report(run_id, info, t)


def per_rank(con, run_id: int, ranks: list[int]) -> Table:
    """The per-layer-type decomposition of each rank, stacked: rank first, `all` row per rank."""
    from hybridscope.analyze.decompose import decompose

    parts = [decompose(con, run_id, by="layer_type", rank=r) for r in ranks]
    cols = (Column("rank", "int"),) + parts[0].columns
    rows = [(r, *row) for r, p in zip(ranks, parts) for row in p.rows]
    return Table("per_rank", cols, rows, {"title": "Per rank", "run_id": run_id, "ranks": ranks})
