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
import contextvars
import functools

import numpy as np

# Kernel statistics use GPU kernels only (not memcpy/memset): what NVML's utilization counts.
KERNEL_FILTER = "source = 'cuda' AND kind = 'kernel'"
COMM_TYPES = ("moe_comm", "comm")

_CACHE: contextvars.ContextVar[dict | None] = contextvars.ContextVar("hybridscope_timeline_cache", default=None)


@contextlib.contextmanager
def cached():
    """Within this block the timeline functions below compute once per (connection, run, options):
    the report runs a dozen analyses over the same kernels. Callers must not modify the results."""
    token = _CACHE.set({})
    try:
        yield
    finally:
        _CACHE.reset(token)


def _memo(fn):
    @functools.wraps(fn)
    def wrapper(con, run_id: int, **options):
        cache = _CACHE.get()
        if cache is None:
            return fn(con, run_id, **options)
        key = (fn.__name__, id(con), run_id, tuple(sorted(options.items())))
        if key not in cache:
            cache[key] = fn(con, run_id, **options)
        return cache[key]

    return wrapper


_STEP_SCOPES = r"""
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
STEP_WINDOWS_SQL = _STEP_SCOPES  # CTEs ending in `windows` (rank, step, ts_ns, end_ns, phase, ...); $run

_KERNELS = f"""
    k AS (
        SELECT rank, device, stream, name, ts_ns, ts_ns + duration_ns AS end_ns, duration_ns,
               coalesce(layer_type, 'other') AS layer_type, layer_index, module, step, phase,
               correlation, json_extract_string(args, '$."Process Group Name"') AS pg
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
        SELECT kl.rank, kl.device, kl.stream, kl.name, kl.ts_ns, kl.end_ns, kl.duration_ns, kl.layer_type,
               kl.layer_index, kl.module, kl.pg, kl.launch_ns, kl.correlation,
               coalesce(kl.step, CASE WHEN kl.launch_ns < w.end_ns THEN w.step END) AS step,
               coalesce(kl.phase, CASE WHEN kl.launch_ns < w.end_ns THEN w.phase END) AS phase
        FROM kl ASOF LEFT JOIN windows w ON kl.rank = w.rank AND kl.launch_ns >= w.ts_ns
    )"""


@_memo
def kernels(con, run_id: int, *, rank: int | None = None) -> dict[str, np.ndarray]:
    """All GPU kernels of a run as numpy columns, sorted by (rank, device, ts_ns).

    Columns: rank, device, stream, name, ts_ns, end_ns, duration_ns, layer_type ('other' when
    unattributed), layer_index, module, pg (process group of a collective), launch_ns, step, phase.
    Integer columns hold -1 where the store has NULL (device, stream, layer_index, step); text
    columns hold None.
    """
    sql = f"WITH {_STEP_SCOPES}, {_KERNELS} SELECT * FROM ks"
    params: dict = {"run": run_id}
    if rank is not None:
        sql += " WHERE rank = $rank"
        params["rank"] = rank
    sql += " ORDER BY rank, coalesce(device, -1), ts_ns, end_ns"
    return {k: _plain(v) for k, v in con.execute(sql, params).fetchnumpy().items()}


@_memo
def step_windows(con, run_id: int) -> list[dict]:
    """One dict per (rank, step): rank, step, ts_ns, end_ns, phase, n_tokens, n_requests, recorded,
    gpu_ns (sum of the step's kernel durations; of its layer timings in a layers-mode capture,
    see step_sums), n_kernels and sampled (False for a capture's step recorded without its layers
    or kernels: capture samples k steps of every n; such a step has a latency but no breakdown). Derived steps are extended to
    their last kernel's end (module doc); recorded steps keep their recorded duration.
    """
    sql = f"""
        WITH {_STEP_SCOPES}, {_KERNELS},
        agg AS (SELECT rank, step, max(end_ns) AS k_end, sum(duration_ns) AS gpu_ns, count(*) AS n_kernels
                FROM ks WHERE step IS NOT NULL GROUP BY rank, step)
        SELECT w.rank, w.step, w.ts_ns,
               CASE WHEN w.recorded THEN w.end_ns ELSE greatest(w.end_ns, coalesce(a.k_end, w.end_ns)) END,
               w.phase, w.n_tokens, w.n_requests, w.recorded,
               coalesce(a.gpu_ns, 0), coalesce(a.n_kernels, 0), w.sampled
        FROM windows w LEFT JOIN agg a ON w.rank = a.rank AND w.step = a.step
        ORDER BY w.rank, w.step
    """
    keys = ("rank", "step", "ts_ns", "end_ns", "phase", "n_tokens", "n_requests", "recorded", "gpu_ns",
            "n_kernels", "sampled")
    out = [dict(zip(keys, r)) for r in con.execute(sql, {"run": run_id}).fetchall()]
    if out and not any(w["n_kernels"] for w in out):  # layers-mode capture: GPU time from layer timings
        gpu: dict[tuple[int, int], int] = {}
        for rank, step, _lt, ns in step_sums(con, run_id):
            gpu[(rank, step)] = gpu.get((rank, step), 0) + ns
        for w in out:
            w["gpu_ns"] = gpu.get((w["rank"], w["step"]), 0)
    return out


@_memo
def step_sums(con, run_id: int) -> list[tuple[int, int, str, int]]:
    """(rank, step, layer_type, summed ns) for kernels with a known step, grouped in SQL.

    A run without kernels but with capture's `layers`-mode timings (source 'layer': each layer's
    exclusive device time, tagged with its step) is summed from those instead.
    """
    sql = f"""
        WITH {_STEP_SCOPES}, {_KERNELS}
        SELECT rank, step, layer_type, sum(duration_ns)::BIGINT FROM ks WHERE step IS NOT NULL
        GROUP BY rank, step, layer_type ORDER BY rank, step, layer_type
    """
    rows = con.execute(sql, {"run": run_id}).fetchall()
    if not rows and not _has_kernels(con, run_id):
        rows = con.execute(
            """SELECT rank, step, coalesce(layer_type, 'other'), sum(duration_ns)::BIGINT FROM events
               WHERE run_id = $run AND source = 'layer' AND step IS NOT NULL
               GROUP BY ALL ORDER BY ALL""", {"run": run_id}).fetchall()
    return [(int(r), int(s), lt, int(ns)) for r, s, lt, ns in rows]


def _has_kernels(con, run_id: int) -> bool:
    return bool(con.execute(f"SELECT count(*) FROM (SELECT 1 FROM events WHERE run_id = $run AND {KERNEL_FILTER}"
                            " LIMIT 1)", {"run": run_id}).fetchall()[0][0])


@_memo
def launch_spans(con, run_id: int) -> list[tuple[int, str | None, int, int]]:
    """(rank, phase, n launches, host span ns) of kernel / graph launch calls; a launch's phase is
    its own, else that of the kernel it launched, else that of the step window it falls in."""
    sql = f"""
        WITH {_STEP_SCOPES}, {_KERNELS},
        kp AS (SELECT rank, correlation, any_value(phase) AS phase FROM ks
               WHERE correlation IS NOT NULL GROUP BY rank, correlation),
        l AS (SELECT e.rank, e.ts_ns, coalesce(e.phase, kp.phase) AS phase FROM events e
              LEFT JOIN kp ON e.rank = kp.rank AND e.correlation = kp.correlation
              WHERE e.run_id = $run AND e.source = 'cuda_api'
                AND (e.name ILIKE '%LaunchKernel%' OR e.name ILIKE '%GraphLaunch%')),
        lp AS (SELECT l.rank, l.ts_ns, coalesce(l.phase, CASE WHEN l.ts_ns < w.end_ns THEN w.phase END) AS phase
               FROM l ASOF LEFT JOIN windows w ON l.rank = w.rank AND l.ts_ns >= w.ts_ns)
        SELECT rank, phase, count(*), max(ts_ns) - min(ts_ns) FROM lp GROUP BY rank, phase
    """
    return con.execute(sql, {"run": run_id}).fetchall()


@_memo
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
