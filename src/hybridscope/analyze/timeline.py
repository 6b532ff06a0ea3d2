"""Where every GPU kernel sits in time: per-rank windows, step windows, kernels with their step.

Shared by the step, expert, overlap, conflict and dashboard analyses and by the Perfetto export.

Steps come from the `steps` table when the run has one (capture). Otherwise they are derived from
step ranges of the CPU timeline: scopes of kind 'step', or scopes / annotation events named
`step#N` or `ProfilerStep#N` (a user's `step#N` ranges win over the profiler's own when both are
present). A derived step spans its CPU range, extended to the end of the last kernel launched
inside it, so that its duration is the GPU-side latency of the step and not only its CPU launch time.

A kernel's step is `events.step` when attribution or capture filled it; otherwise the step whose CPU
range contains the kernel's launch (the `cuda_api` event with the same correlation id; the kernel's
own start when no launch is recorded), found with an ASOF join.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable

import numpy as np

from hybridscope.analyze import warmup
from hybridscope.analyze.shared import (
    _OPEN,
    ANALYSIS_MEMORY_LIMIT,
    QUANTILE_BYTES,
    STEP_WINDOWS_SQL,
    Tables,
    enum_sql,
    once,
    tables,
)

# Kernel statistics use GPU kernels only (not memcpy/memset): what NVML's utilization counts.
KERNEL_FILTER = "source = 'cuda' AND kind = 'kernel'"
COMM_TYPES = ("moe_comm", "comm")


@contextlib.contextmanager
def materialized(con, run_id: int, *, warmup: int | None = None, first: Callable[[], object] | None = None):
    """Within this block the run's kernel timeline lives in the connection as temp tables, computed
    once for every analysis that reads it (the report runs a dozen); they are dropped at the end, so
    that a later write to the store is never hidden behind a stale copy. Nested blocks reuse the
    outer one (and its `warmup`: analyze/warmup.py's setting, which tells the interval analyses
    where each rank's steady state starts). Yields the `Tables`. `first` runs once the block is
    open and before its tables are built: what needs much memory for a moment (the report's
    decompose.prepare) runs while DuckDB's memory is still empty, and the memory it frees serves
    the kernel pass after it.

    `Tables.kernels`: one row per GPU kernel, in the order (rank, device, ts_ns, end_ns, ev): pos
    (that order), ev (the event's rowid in `events`, for its text columns), rank, device (-1 when
    NULL), stream (-1 when NULL), ts_ns, end_ns, layer_type ('other' when unattributed),
    layer_index, step, phase (the module doc's rules; it and layer_type ENUMs of the run's values,
    a byte each: at 10M kernels the block's tables take 1,094 MiB instead of 1,286, 77 of them
    spilled past the block's memory instead of 130), correlation, and the columns of
    analyze/sweep.py (warm, prev_max, holder, holder_code, next_start). `Tables.busy`: the sweep's
    interval unions per (rank, device, phase, warm). `Tables.steps`: step_windows' rows;
    `Tables.sums`: step_sums' (rank, step, layer_type, ns), with each group's kernel count n and
    latest end k_end.
    """
    key = (id(con), int(run_id))
    opened = _OPEN.get() or {}
    if key in opened:
        yield opened[key]
        return
    tables = Tables(run_id, warmup)
    (limit,) = con.execute("SELECT current_setting('memory_limit')").fetchall()[0]
    (n,) = con.execute(f"SELECT count(*) FROM events WHERE run_id = $run AND {KERNEL_FILTER}",
                       {"run": run_id}).fetchall()[0]
    tables.n_kernels = int(n)
    tables.quantile_cap = max(ANALYSIS_MEMORY_LIMIT, QUANTILE_BYTES * int(n))
    # beyond it DuckDB spills to its temp files; exact quantiles raise it (shared.quantile_memory)
    con.execute(f"SET memory_limit = '{ANALYSIS_MEMORY_LIMIT // 2**20}MiB'")
    token = _OPEN.set({**opened, key: tables})  # open first: the warm-up found for the sweep is kept
    try:
        if first is not None:
            first()
        _create(con, run_id, tables)
        yield tables
    finally:
        _OPEN.reset(token)
        tables.drop(con)
        con.execute(f"SET memory_limit = '{limit}'")


def on_timeline(fn):
    """Run `fn(con, run_id, ...)` inside `materialized(con, run_id)` (a no-op when one is open)."""

    @functools.wraps(fn)
    def wrapper(con, run_id: int, *args, **options):
        with materialized(con, run_id):
            return fn(con, run_id, *args, **options)

    return wrapper


_KERNELS = f"""
    k AS (
        SELECT rowid AS ev, rank, device, stream, ts_ns, ts_ns + duration_ns AS end_ns,
               coalesce(layer_type, 'other') AS layer_type, layer_index, step, phase, correlation
        FROM events WHERE run_id = $run AND {KERNEL_FILTER}
    ),
    launches AS (
        SELECT rank, correlation, min(ts_ns) AS launch_ns FROM events
        WHERE run_id = $run AND source = 'cuda_api' AND correlation IS NOT NULL
        GROUP BY rank, correlation
    ),
    kl AS (
        SELECT k.*, coalesce(l.launch_ns, k.ts_ns) AS launch_ns
        FROM k LEFT JOIN launches l ON k.rank = l.rank AND k.correlation = l.correlation
    ),
    ks AS (
        SELECT kl.ev, kl.rank, coalesce(kl.device, -1) AS device, coalesce(kl.stream, -1) AS stream, kl.ts_ns,
               kl.end_ns, kl.layer_type, kl.layer_index, kl.correlation, kl.launch_ns,
               coalesce(kl.step, CASE WHEN kl.launch_ns < w.end_ns THEN w.step END) AS step,
               coalesce(kl.phase, CASE WHEN kl.launch_ns < w.end_ns THEN w.phase END) AS phase
        FROM kl ASOF LEFT JOIN windows w ON kl.rank = w.rank AND kl.launch_ns >= w.ts_ns
    )"""

# The kernels of `_KERNELS` for the report's tables: a kernel whose step is known, and whose phase
# is known or could not be found (no step window has one), keeps them without the launch lookup
# (capture and attribution fill them: the join with every launch is then skipped). `_STORED`: the
# same when no kernel of the run needs the lookup (the plain scan).
_STORED = f"""
        SELECT rowid AS ev, rank, coalesce(device, -1) AS device, coalesce(stream, -1) AS stream, ts_ns,
               ts_ns + duration_ns AS end_ns, coalesce(layer_type, 'other') AS layer_type, layer_index, step,
               phase, correlation
        FROM events WHERE run_id = $run AND {KERNEL_FILTER}"""
_KERNELS_FAST = f"""
    k0 AS (
        SELECT rowid AS ev, rank, coalesce(device, -1) AS device, coalesce(stream, -1) AS stream, ts_ns,
               ts_ns + duration_ns AS end_ns, coalesce(layer_type, 'other') AS layer_type, layer_index, step,
               phase, correlation,
               step IS NULL OR (phase IS NULL AND EXISTS (SELECT 1 FROM windows WHERE phase IS NOT NULL)) AS look_up
        FROM events WHERE run_id = $run AND {KERNEL_FILTER}
    ),
    need AS (SELECT * FROM k0 WHERE look_up),
    launches AS (
        SELECT rank, correlation, min(ts_ns) AS launch_ns FROM events
        WHERE run_id = $run AND source = 'cuda_api' AND correlation IS NOT NULL
          AND EXISTS (SELECT 1 FROM need) GROUP BY rank, correlation
    ),
    kl AS (
        SELECT need.*, coalesce(l.launch_ns, need.ts_ns) AS launch_ns
        FROM need LEFT JOIN launches l ON need.rank = l.rank AND need.correlation = l.correlation
    ),
    ks AS (
        SELECT kl.ev, kl.rank, kl.device, kl.stream, kl.ts_ns, kl.end_ns, kl.layer_type, kl.layer_index,
               coalesce(kl.step, CASE WHEN kl.launch_ns < w.end_ns THEN w.step END) AS step,
               coalesce(kl.phase, CASE WHEN kl.launch_ns < w.end_ns THEN w.phase END) AS phase, kl.correlation
        FROM kl ASOF LEFT JOIN windows w ON kl.rank = w.rank AND kl.launch_ns >= w.ts_ns
        UNION ALL
        SELECT ev, rank, device, stream, ts_ns, end_ns, layer_type, layer_index, step, phase, correlation
        FROM k0 WHERE NOT look_up
    )"""


# The length of the union of a group's kernel intervals, summed over its rows: each kernel adds the
# part of [ts, end) past the latest end before it (prev_max: every point between its start and that
# end is covered by the kernel holding it), as analyze/sweep.py sums it into `Tables.busy`.
BUSY_SQL = "coalesce(sum(greatest(end_ns - greatest(ts_ns, coalesce(prev_max, ts_ns)), 0)), 0)::BIGINT"


def steady_rank_windows(con, run_id: int) -> dict[int, tuple[int, int]]:
    """Each rank's window after its warm-up (from its cut-off, analyze/warmup.py, to its end): what
    the interval analyses of a `materialized` block measure against. The whole window where the
    rank has no warm-up (or the block's setting is --warmup 0)."""
    return warmup.after(rank_windows(con, run_id), tables(con, run_id).cutoffs)


def _create(con, run_id: int, t: Tables) -> None:
    """The temp tables of `materialized` (its doc says what they hold)."""
    from hybridscope.analyze import sweep

    params = {"run": run_id}
    t.cutoffs = dict(warmup.detect(con, run_id, warmup=t.warmup).cutoffs)
    # the launch lookup (_KERNELS_FAST) only when a kernel needs it: else the kernels as stored
    (look_up,) = con.execute(f"""WITH {STEP_WINDOWS_SQL}
        SELECT EXISTS (SELECT 1 FROM events WHERE run_id = $run AND {KERNEL_FILTER} AND (step IS NULL OR
                       (phase IS NULL AND EXISTS (SELECT 1 FROM windows WHERE phase IS NOT NULL))))""",
                             params).fetchall()[0]
    source = f"WITH {STEP_WINDOWS_SQL}, {_KERNELS_FAST} SELECT * FROM ks" if look_up else f"SELECT * FROM ({_STORED})"
    # the text columns as ENUMs of the values they can take: they reach the sweep as dictionary codes
    (types, phases) = con.execute(f"""WITH {STEP_WINDOWS_SQL}
        SELECT (SELECT list(DISTINCT coalesce(layer_type, 'other')) FROM events WHERE run_id = $run AND {KERNEL_FILTER}),
               (SELECT list(DISTINCT p) FROM (SELECT phase AS p FROM events WHERE run_id = $run AND {KERNEL_FILTER}
                                              UNION ALL SELECT phase FROM windows) WHERE p IS NOT NULL)""",
                                  params).fetchall()[0]
    text = {"layer_type": types, "phase": phases}
    columns = ", ".join(f"{name}::{enum_sql(text[name])} AS {name}" if text.get(name) else name
                        for name, _ in sweep.KERNEL_COLUMNS)
    t.types = sweep.sweep(con, f"SELECT {columns} FROM ({source}) ORDER BY {', '.join(sweep.SORT_KEYS)}",
                          params, t.kernels, t.busy, COMM_TYPES, t.cutoffs,
                          {name: enum_sql(v) for name, v in text.items() if v})
    # one pass over the kernels: the sums per (rank, step, layer type), and the steps' from them
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE {t.sums} AS
        SELECT rank, step, layer_type, sum(end_ns - ts_ns)::BIGINT AS ns, count(*) AS n, max(end_ns) AS k_end
        FROM {t.kernels} WHERE step IS NOT NULL GROUP BY rank, step, layer_type""")
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE {t.steps} AS
        WITH {STEP_WINDOWS_SQL},
        agg AS (SELECT rank, step, max(k_end) AS k_end, sum(ns) AS gpu_ns, sum(n) AS n_kernels
                FROM {t.sums} GROUP BY rank, step)
        SELECT w.rank, w.step, w.ts_ns,
               CASE WHEN w.recorded THEN w.end_ns ELSE greatest(w.end_ns, coalesce(a.k_end, w.end_ns)) END
                   AS end_ns,
               w.phase, w.n_tokens, w.n_requests, w.recorded,
               coalesce(a.gpu_ns, 0)::BIGINT AS gpu_ns, coalesce(a.n_kernels, 0)::BIGINT AS n_kernels, w.sampled
        FROM windows w LEFT JOIN agg a ON w.rank = a.rank AND w.step = a.step""", {"run": run_id})


def kernels(con, run_id: int, *, rank: int | None = None) -> dict[str, np.ndarray]:
    """All GPU kernels of a run as numpy columns, sorted by (rank, device, ts_ns): what the Perfetto
    export writes, one trace event per kernel (the report's analyses never read this: they work on
    the `materialized` tables in SQL).

    Columns: rank, device, stream, name, ts_ns, end_ns, duration_ns, layer_type ('other' when
    unattributed), layer_index, module, pg (process group of a collective), launch_ns, step, phase.
    Integer columns hold -1 where the store has NULL (device, stream, layer_index, step); text
    columns hold None.
    """
    sql = f"""WITH {STEP_WINDOWS_SQL}, {_KERNELS}
        SELECT ks.rank, ks.device, ks.stream, e.name, ks.ts_ns, ks.end_ns, e.duration_ns, ks.layer_type,
               ks.layer_index, e.module, json_extract_string(e.args, '$."Process Group Name"') AS pg,
               ks.launch_ns, ks.correlation, ks.step, ks.phase
        FROM ks JOIN events e ON e.rowid = ks.ev"""
    params: dict = {"run": run_id}
    if rank is not None:
        sql += " WHERE ks.rank = $rank"
        params["rank"] = rank
    sql += " ORDER BY ks.rank, ks.device, ks.ts_ns, ks.end_ns"
    return {k: _plain(v) for k, v in con.execute(sql, params).fetchnumpy().items()}


def layer_timings(con, run_id: int) -> dict[str, np.ndarray]:
    """A capture's layer timings (events source 'layer') as numpy columns, sorted by (rank, ts_ns):
    what the Perfetto export draws on its layer tracks. Columns: rank, name, ts_ns, end_ns (start plus
    the call's inclusive span, `args.inclusive_ns`, else its duration), duration_ns (exclusive time),
    layer_type, layer_index, module, step; NULL ints as -1, NULL text as None. Empty for imports."""
    sql = """
        SELECT rank, name, ts_ns,
               ts_ns + coalesce(TRY_CAST(json_extract(args, '$.inclusive_ns') AS BIGINT), duration_ns) AS end_ns,
               duration_ns, coalesce(layer_type, 'other') AS layer_type, layer_index, module, step
        FROM events WHERE run_id = $run AND source = 'layer' AND kind = 'layer'
        ORDER BY rank, ts_ns, end_ns DESC"""
    return {k: _plain(v) for k, v in con.execute(sql, {"run": run_id}).fetchnumpy().items()}


@once
@on_timeline
def step_windows(con, run_id: int) -> list[dict]:
    """One dict per (rank, step): rank, step, ts_ns, end_ns, phase, n_tokens, n_requests, recorded,
    gpu_ns (sum of the step's kernel durations; of its layer timings in a layers-mode capture,
    see step_sums), n_kernels and sampled (False for a capture's step recorded without its layers
    or kernels: capture samples k steps of every n; such a step has a latency but no breakdown). Derived steps are extended to
    their last kernel's end (module doc); recorded steps keep their recorded duration.
    """
    keys = ("rank", "step", "ts_ns", "end_ns", "phase", "n_tokens", "n_requests", "recorded", "gpu_ns",
            "n_kernels", "sampled")
    got = con.execute(f"SELECT {', '.join(keys)} FROM {tables(con, run_id).steps} ORDER BY rank, step").fetchall()
    out = [dict(zip(keys, r)) for r in got]
    if out and not any(w["n_kernels"] for w in out):  # layers-mode capture: GPU time from layer timings
        gpu: dict[tuple[int, int], int] = {}
        for rank, step, _lt, ns in step_sums(con, run_id):
            gpu[(rank, step)] = gpu.get((rank, step), 0) + ns
        for w in out:
            w["gpu_ns"] = gpu.get((w["rank"], w["step"]), 0)
    return out


@once
@on_timeline
def step_sums(con, run_id: int) -> list[tuple[int, int, str, int]]:
    """(rank, step, layer_type, summed ns) for kernels with a known step, grouped in SQL.

    A run without kernels but with capture's `layers`-mode timings (source 'layer': each layer's
    exclusive device time, tagged with its step) is summed from those instead.
    """
    got = con.execute(f"SELECT rank, step, layer_type, ns FROM {tables(con, run_id).sums}"
                      " ORDER BY rank, step, layer_type").fetchnumpy()
    if not len(got["rank"]) and not _has_kernels(con, run_id):
        got = con.execute(
            """SELECT rank, step, coalesce(layer_type, 'other') AS layer_type, sum(duration_ns)::BIGINT AS ns
               FROM events WHERE run_id = $run AND source = 'layer' AND step IS NOT NULL
               GROUP BY ALL ORDER BY ALL""", {"run": run_id}).fetchnumpy()
    # one row per (rank, step, layer type): 500k at 10M kernels, converted column-wise
    return list(zip(*(np.asarray(got[c]).tolist() for c in ("rank", "step", "layer_type", "ns"))))


def _has_kernels(con, run_id: int) -> bool:
    return bool(con.execute(f"SELECT count(*) FROM (SELECT 1 FROM events WHERE run_id = $run AND {KERNEL_FILTER}"
                            " LIMIT 1)", {"run": run_id}).fetchall()[0][0])


@once
def rank_windows(con, run_id: int) -> dict[int, tuple[int, int]]:
    """Each rank's wall-time window (start_ns, end_ns), for every rank the run stored (`run_ranks`)
    or has events of: the `run_ranks` window where it is known, else the span of the rank's
    events. A rank with neither has no window and is left out."""
    rows = con.execute(
        """
        WITH ev AS (SELECT rank, min(ts_ns) AS lo, max(ts_ns + duration_ns) AS hi
                    FROM events WHERE run_id = $run GROUP BY rank),
             rr AS (SELECT rank, t_start_ns, t_end_ns FROM run_ranks WHERE run_id = $run)
        SELECT coalesce(rr.rank, ev.rank) AS r, coalesce(rr.t_start_ns, ev.lo), coalesce(rr.t_end_ns, ev.hi)
        FROM rr FULL OUTER JOIN ev ON rr.rank = ev.rank
        ORDER BY r
        """,
        {"run": run_id},
    ).fetchall()
    return {int(r): (int(lo), int(hi)) for r, lo, hi in rows if lo is not None and hi is not None}


def groups(cols: dict[str, np.ndarray], *keys: str):
    """Yield (key tuple, index array) per distinct combination of `keys` in `cols`, keys ascending.

    Each key column is factorized to integer codes and the codes combined, so grouping sorts
    integers only. The loop runs once per group (ranks, devices, phases), never per event.
    """
    n = len(cols[keys[0]]) if keys and keys[0] in cols else 0
    if n == 0:
        return
    combined = np.zeros(n, dtype=np.int64)
    uniques = []
    for k in keys:
        u, inv = np.unique(_filled(cols[k]), return_inverse=True)
        uniques.append(u)
        combined = combined * len(u) + inv.reshape(-1)
    codes, first, inverse = np.unique(combined, return_index=True, return_inverse=True)
    order = np.argsort(inverse.reshape(-1), kind="stable")
    bounds = np.searchsorted(inverse.reshape(-1)[order], np.arange(len(codes) + 1))
    values = [cols[k] for k in keys]
    for g in range(len(codes)):
        i = first[g]
        key = tuple(v[i].item() if hasattr(v[i], "item") else v[i] for v in values)
        yield key, order[bounds[g]:bounds[g + 1]]


def _plain(a):
    """A fetched column without a mask: NULL ints as -1, NULL text as None."""
    if isinstance(a, np.ma.MaskedArray):
        if a.dtype.kind in "iu":
            return a.filled(-1).astype(np.int64)
        if a.dtype == object:
            out = np.asarray(a.data, dtype=object)
            out[np.ma.getmaskarray(a)] = None
            return out
        return a.filled(np.nan)
    return a


def _filled(a: np.ndarray) -> np.ndarray:
    """Masked / object columns with NULLs as plain arrays (-1 for ints, '' for text)."""
    if isinstance(a, np.ma.MaskedArray):
        fill = -1 if a.dtype.kind in "iu" else ("" if a.dtype.kind in "OU" else np.nan)
        a = a.filled(fill)
    if a.dtype == object:
        a = a.astype(str)  # None reads 'None': only equality between values matters here
    return a
