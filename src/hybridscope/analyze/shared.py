"""What a run's analyses share, beneath the kernel timeline (analyze/timeline.py): the definition of
its step windows (SQL), and the block a `timeline.materialized` call opens: the names of its temp
tables and the answers found once for every analysis inside it (`once`). Kept apart from the
timeline so that what the timeline itself needs (the warm-up, analyze/warmup.py; the run's measure,
analyze/measures.py) can use them without importing it.

Steps come from the `steps` table when the run has one (capture). Otherwise they are derived from
step ranges of the CPU timeline: scopes of kind 'step', or scopes / annotation events named
`step#N` or `ProfilerStep#N` (a user's `step#N` ranges win over the profiler's own when both are
present).
"""

from __future__ import annotations

import contextlib
import contextvars
import functools

import duckdb

# DuckDB's memory while a block's temp tables live (a 10M-kernel report's sorts and tables spill
# past it: its temp tables took 1.3 GiB at 10M kernels, 1.1 since layer type and phase are ENUMs;
# the report took 11.4 s at 1 GiB, 10.9 s at 1.25 GiB with a peak RSS of 1.77 GiB, 10.5 s at
# 1.5 GiB with 2.0 GiB, the 2 GiB the report may have), and, around each query of exact quantiles over the run's events (`quantile_memory`),
# what those hold: a quantile aggregate keeps its groups' values in memory and cannot spill. A query
# of one grouping holds every duration once (8 bytes, doubled while its vector grows, the groups'
# state beside it); the pooled decompositions, four grouping sets in one query (up to 20M kernels,
# decompose.POOL_MAX_KERNELS), four times: 48 bytes an event (24 failed for memory at 50M).
ANALYSIS_MEMORY_LIMIT = 5 << 28  # 1.25 GiB
QUANTILE_BYTES = 48

# {(id(connection), run_id): Tables} of the `materialized` blocks open in this context
_OPEN: contextvars.ContextVar[dict | None] = contextvars.ContextVar("hybridscope_timeline_tables", default=None)


class Tables:
    """Names of the temp tables a `materialized` block holds for one run (its doc says what they
    hold), and the run's distinct layer types (`types`: holder_code is a 1-based position in it)."""

    def __init__(self, run_id: int, warmup: int | None = None):
        self.kernels = f"_hs_kernels_{int(run_id)}"
        self.busy = f"_hs_busy_{int(run_id)}"
        self.steps = f"_hs_steps_{int(run_id)}"
        self.sums = f"_hs_step_sums_{int(run_id)}"
        self.warmup = warmup  # the block's --warmup setting (analyze/warmup.py)
        self.cutoffs: dict[int, int] = {}  # each rank's warm-up cut-off, where it has one
        self.types: list[str] = []
        self.memo: dict = {}  # `once` results of this block
        self.extra: list[str] = []  # other temp tables an analysis shares within the block
        self.n_kernels = 0
        self.quantile_cap = ANALYSIS_MEMORY_LIMIT  # DuckDB's memory within `quantile_memory`

    def drop(self, con) -> None:
        for name in (self.kernels, self.busy, self.steps, self.sums, *self.extra):
            with contextlib.suppress(duckdb.Error):  # an aborted transaction drops them itself
                con.execute(f"DROP TABLE IF EXISTS {name}")


def block(con, run_id: int) -> Tables | None:
    """The open `materialized` block of (con, run_id), None outside one."""
    return (_OPEN.get() or {}).get((id(con), int(run_id)))


def once(fn):
    """Within a `materialized` block, `fn(con, run_id, **options)` is computed once per set of
    options and its result handed to every later caller: what a report's analyses all ask (the rank
    windows, the warm-up, the step windows) is found once, not a dozen times. Outside a block it
    runs every time. Callers treat the result as read-only."""

    @functools.wraps(fn)
    def wrapper(con, run_id: int, **options):
        open_ = block(con, run_id)
        if open_ is None:
            return fn(con, run_id, **options)
        key = (fn.__module__, fn.__qualname__, tuple(sorted(options.items())))
        if key not in open_.memo:
            open_.memo[key] = fn(con, run_id, **options)
        return open_.memo[key]

    return wrapper


def tables(con, run_id: int) -> Tables:
    """The open `materialized` block's tables (call inside one, e.g. from an `on_timeline` function)."""
    return _OPEN.get()[(id(con), int(run_id))]


def enum_sql(values) -> str:
    """The SQL type ENUM of `values`, sorted (enum_code(x) is then a value's position in sorted order)."""
    return "ENUM(" + ", ".join("'" + v.replace("'", "''") + "'" for v in sorted(values)) + ")"


STEP_WINDOWS_SQL = r"""
    cand AS (
        SELECT rank, name, ts_ns, end_ns, step, phase, kind = 'step' AS is_step_kind
        FROM scopes WHERE run_id = $run
        UNION ALL
        SELECT rank, name, ts_ns, ts_ns + duration_ns, step, phase, false
        FROM events WHERE run_id = $run AND source = 'annotation'
    ),
    named AS (
        SELECT rank, ts_ns, end_ns, phase,
               coalesce(step, try_cast(regexp_extract(name, '#(\d+)$', 1) AS INTEGER)) AS step,
               CASE WHEN is_step_kind THEN 0 WHEN name LIKE 'ProfilerStep#%' THEN 2 ELSE 1 END AS family
        FROM cand
        WHERE is_step_kind OR regexp_matches(name, '^(ProfilerStep|step)#\d+$')
    ),
    derived AS (
        SELECT rank, step, min(ts_ns) AS ts_ns, max(end_ns) AS end_ns, any_value(phase) AS phase,
               NULL::INTEGER AS n_tokens, NULL::INTEGER AS n_requests, true AS sampled
        FROM named WHERE family = (SELECT min(family) FROM named) AND step IS NOT NULL
        GROUP BY rank, step
    ),
    recorded AS (
        SELECT rank, step, ts_ns, ts_ns + duration_ns AS end_ns, phase, n_tokens, n_requests,
               coalesce(sampled, true) AS sampled
        FROM steps WHERE run_id = $run
    ),
    windows AS (
        SELECT *, true AS recorded FROM recorded
        UNION ALL
        SELECT *, false FROM derived WHERE NOT EXISTS (SELECT 1 FROM recorded)
    )"""
# STEP_WINDOWS_SQL: CTEs ending in `windows` (rank, step, ts_ns, end_ns, phase, ...); $run


@contextlib.contextmanager
def quantile_memory(con, run_id: int):
    """Within an open block of a large run, DuckDB's memory raised to the block's quantile cap for
    the exact quantiles computed inside, and set back to the block's limit after: the rest of the
    report (sorts, joins, its temp tables) spills at the lower limit instead of filling the higher
    one. A no-op outside a block (a verb's own limit holds) and where the two are equal."""
    t = block(con, run_id)
    if t is None or t.quantile_cap <= ANALYSIS_MEMORY_LIMIT:
        yield
        return
    con.execute(f"SET memory_limit = '{t.quantile_cap // 2**20}MiB'")
    try:
        yield
    finally:
        con.execute(f"SET memory_limit = '{ANALYSIS_MEMORY_LIMIT // 2**20}MiB'")
