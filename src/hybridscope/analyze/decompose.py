"""The per-layer-type decomposition: where GPU time goes, and how long its tail is, per group.

`decompose(con, run_id, by=..., rank=...)` returns a `Table` (table.py) with, first, an
`all` row (the aggregate a dashboard would show) and then one row per group. Definitions (also in
docs/analyses.md, with a worked example):

- GPU events: `events` rows matching `store.db.GPU_EVENTS` (source = 'cuda' AND kind IN ('kernel', 'memcpy', 'memset')).
  A run without any (a `layers`-mode capture) is decomposed over its per-layer timings instead
  (source = 'layer': each module's exclusive device time per call), and meta['measure'] says so.
  A run with neither (an Ingero import) is decomposed over its host API timings (source =
  'host_api'); they carry no layer, so by='layer_type' groups them by operation instead.
  GPU annotations (kind 'gpu_annotation') are ranges over kernels and are not counted again.
- Groups: by='layer_type' -> layer_type (NULL shown as 'unattributed', i.e. attribution has not
  run or found nothing), in `vocab.ORDER`; by='layer' -> (layer_index, layer_type), by layer index
  (NULL last); by='module' -> module (NULL as '(no module)'); by='kernel' -> kernel name. Module and
  kernel groups are listed by GPU time, largest first.
- Percentiles: continuous, DuckDB `quantile_cont` = linear interpolation between order statistics
  (numpy's default 'linear' method): for sorted x_0..x_{n-1} and level q, h = (n-1)q,
  p_q = x_floor(h) + (h - floor(h)) (x_ceil(h) - x_floor(h)). p99.9 is q = 0.999.
- tail_ratio = p99 / p50 (NULL when p50 = 0). gpu_ns = sum of durations.
- gpu_pct = 100 * gpu_ns / gpu_ns of the `all` row (the group rows sum to 100).
- wall_pct = 100 * gpu_ns / wall_ns. wall_ns is the window of the rank asked for, or with no rank
  the sum of every rank's window (rank-time: a 2-rank run of 1 s has 2 s). A rank's window is its
  `run_ranks` [t_start_ns, t_end_ns], else the span of its events. Kernels on concurrent streams
  overlap, so wall_pct of `all` may exceed 100; it is busy time per unit of window, not a duty cycle.
- With no rank, every statistic pools the ranks' events (the `all` row's p99 is over all ranks).
- meta['warnings']: for a kernels run, the line `coverage.coverage_warning` gives when less than
  90 % of the GPU time is attributed (renderers show it first).
- Warm-up (analyze/warmup.py; `warmup` None = the rule, N = first N steps per rank, 0 = none) is
  left out of the `all` row and the groups, and shown as its own last row `warm-up` (count,
  percentiles, max, time; no shares: it is outside the window). A rank's window then starts where
  its warm-up ends. meta['warmup'] says what was left out.
"""

from __future__ import annotations

import concurrent.futures
import queue
from dataclasses import dataclass

import numpy as np

from hybridscope.analyze import shared, stats, timeline
from hybridscope.analyze import warmup as warmup_mod
from hybridscope.analyze.coverage import coverage_warning
from hybridscope.analyze.measures import MEASURES, measure_of
from hybridscope.attribute.vocab import order_key
from hybridscope.errors import NotFound, UsageError
from hybridscope.store.db import GPU_KINDS
from hybridscope.table import TEXT_KINDS, Column, Table, plain

UNATTRIBUTED = "unattributed"
NO_MODULE = "(no module)"
ALL = "all"
WARMUP = "warm-up"  # the label of the warm-up row
LEVELS: tuple[float, ...] = (0.5, 0.9, 0.99, 0.999)
# Levels of the report's latency CDF: every percent, then finer in the tail where the story is
# (LEVELS among them).
CDF_LEVELS: tuple[float, ...] = tuple(np.round(np.r_[np.arange(0, 100) / 100, 0.991 + np.arange(9) / 1000,
                                                     0.9995, 1.0], 6).tolist())

# by -> (key columns of the result, the events columns grouped on, the label of a NULL key).
# Grouping on the raw columns and labelling NULL afterwards saves a string expression per event.
_KEYS: dict[str, tuple[tuple[Column, ...], tuple[str, ...], tuple[str | None, ...]]] = {
    "layer_type": (
        (Column("layer_type", "str", "layer type (vocabulary) or 'unattributed'", "layer type"),),
        ("layer_type",), (UNATTRIBUTED,),
    ),
    "layer": (
        (Column("layer_index", "int", "layer index in the model (NULL: not in a numbered layer)", "layer"),
         Column("layer_type", "str", "layer type (vocabulary) or 'unattributed'", "layer type")),
        ("layer_index", "layer_type"), (None, UNATTRIBUTED),
    ),
    "module": (
        (Column("module", "str", "module path or class, '(no module)' when unknown"),),
        ("module",), (NO_MODULE,),
    ),
    "kernel": (
        (Column("kernel", "kernel", "kernel (or memcpy/memset) name as recorded"),),
        ("name",), (None,),
    ),
}
BY: tuple[str, ...] = tuple(_KEYS)

STAT_COLUMNS: tuple[Column, ...] = (
    Column("n", "int", "number of GPU events"),
    Column("p50_ns", "ns", "median duration (continuous percentile)", "p50"),
    Column("p90_ns", "ns", "90th percentile duration", "p90", optional=2),
    Column("p99_ns", "ns", "99th percentile duration", "p99"),
    Column("p999_ns", "ns", "99.9th percentile duration", "p99.9", optional=4),
    Column("max_ns", "ns", "longest event", "max", optional=3),
    Column("tail_ratio", "ratio", "p99 / p50", "p99/p50"),
    Column("gpu_ns", "ns", "sum of durations", "GPU time"),
    Column("gpu_pct", "pct", "share of the all row's GPU time", "% GPU"),
    Column("wall_pct", "pct", "GPU time / window wall time (rank-time summed over ranks)", "% wall", optional=1),
)


def decompose(con, run_id: int, *, by: str = "layer_type", rank: int | None = None,
              top: int | None = None, warmup: int | None = None) -> Table:
    """The decomposition of run `run_id` (which must exist), optionally for one rank.

    `top` keeps the `top` groups with the most GPU time, for every `by`, listed in the `by`'s order
    (the `all` row still covers everything).
    Raises UsageError for an unknown `by` or a bad `top`, NotFound for a rank the run lacks.
    """
    if by not in _KEYS:
        raise UsageError(f"--by must be one of {', '.join(BY)}, not {by!r}")
    if top is not None and top < 1:
        raise UsageError(f"--top must be at least 1, not {top}")
    windows = timeline.rank_windows(con, run_id)
    if rank is not None and rank not in windows:
        known = ", ".join(str(r) for r in sorted(windows)) or "none"
        raise NotFound(f"run {run_id} has no rank {rank} (ranks: {known})")
    chosen = sorted(windows) if rank is None else [rank]
    wu = warmup_mod.detect(con, run_id, warmup=warmup)
    windows = warmup_mod.after(windows, wu.cutoffs)
    wall_ns = sum(windows[r][1] - windows[r][0] for r in chosen)

    measure = measure_of(con, run_id)
    by_operation = measure == "host_api" and by == "layer_type"
    name = f"decompose_{by}"  # the view asked for, also when host API calls are grouped by operation
    if by_operation:
        by = "kernel"
    key_cols, key_sql, null_labels = _KEYS[by]
    raw = _aggregate(con, run_id, rank, key_sql, MEASURES[measure], wu)
    all_raw = next((r[:1] + r[2:] for r in raw if r[0] == 1 and not r[1]), None)
    if all_raw is None:  # everything is warm-up, or nothing measured
        all_raw = (1, *(None,) * len(key_sql), 0, None, None, 0)
    warm_raw = next((r[:1] + r[2:] for r in raw if r[0] == 1 and r[1]), None)
    k = len(key_cols)
    groups = _order(by, [(0, *(lb if v is None else v for v, lb in zip(r[2:2 + k], null_labels)), *r[2 + k:])
                         for r in raw if r[0] == 0 and not r[1]])
    n_groups = len(groups)
    if top is not None:
        groups = _largest(groups, top)

    total = all_raw[-1]
    all_keys = tuple(ALL if c.kind in TEXT_KINDS else None for c in key_cols)
    rows = [_row(all_keys, all_raw, total, wall_ns)]
    rows += [_row(tuple(g[1:1 + len(key_cols)]), g, total, wall_ns) for g in groups]
    left_out = warmup_mod.summary(wu, warm_raw[-4] if warm_raw else 0, warm_raw[-1] if warm_raw else 0,
                                  all_raw[-4] + (warm_raw[-4] if warm_raw else 0), rank=rank)
    if warm_raw is not None:
        warm_keys = tuple(WARMUP if c.kind in TEXT_KINDS else None for c in key_cols)
        rows.append(_row(warm_keys, warm_raw, 0, 0))

    notes = []
    if all_raw[-4] == 0:
        notes.append("no GPU events (kernel, memcpy, memset) in this selection" + _cpu_only(con, run_id))
    if measure == "layers":
        notes.append("layers-mode capture: per-module time per call (CUDA events on a GPU, the host clock "
                     "on CPU), not kernels")
    if measure == "host_api":
        notes.append("host API timings (Ingero uprobes), not GPU kernels" +
                     (": they carry no layer, grouped by operation" if by_operation else ""))
    notes.append(warmup_mod.describe(left_out))
    if top is not None and n_groups > top:
        notes.append(f"showing the top {top} of {n_groups} groups by GPU time; 'all' covers every group")
    warning = coverage_warning(con, run_id, rank=rank) if measure == "kernels" else None
    scope = f"rank {rank}" if rank is not None else (f"{len(chosen)} ranks pooled" if len(chosen) > 1 else
                                                      f"rank {chosen[0]}" if chosen else "no ranks")
    meta = {
        "title": f"run {run_id} · {scope} · by {by.replace('_', ' ')} · window {_ms(wall_ns)}",
        "notes": notes,
        "summary_rows": 1,
        "run_id": run_id,
        "rank": rank,
        "ranks": chosen,
        "by": by,
        "keys": [c.name for c in key_cols],
        "wall_ns": wall_ns,
        "windows_ns": {str(r): list(windows[r]) for r in chosen},
        "groups": n_groups,
        "gpu_kinds": list(GPU_KINDS),
        "measure": measure,
        "warnings": [warning] if warning else [],
        "warmup": left_out,
        "warmup_rows": 1 if warm_raw is not None else 0,
    }
    return Table(name, key_cols + STAT_COLUMNS, rows, meta)


def _aggregate(con, run_id: int, rank: int | None, key_sql: tuple[str, ...], predicate: str,
               wu: warmup_mod.WarmUp) -> list[tuple]:
    """Rows (is_all, warm, *keys, n, [p50, p90, p99, p999], max, sum) for every group and the total,
    of the steady state (warm false) and of the warm-up (warm true); one scan. Inside a report
    (`timeline.materialized`) one scan serves every rank: the per-rank view asks for each."""
    if rank is None and key_sql in _POOLED_SETS:
        rows = pooled(con, run_id, predicate, wu)
        if rows is not None:
            return _from_pooled(rows, key_sql)
    pool = _pool(con, run_id, predicate, wu) if rank is not None and key_sql == ("layer_type",) else None
    if pool is not None:
        return pool.by_rank.get(rank, [])
    open_ = shared.block(con, run_id) if rank is not None else None
    if open_ is not None and open_.n_kernels <= POOL_MAX_KERNELS:
        key = ("decompose.ranks", key_sql, predicate, *_warm_key(wu))
        if key not in open_.memo:
            by_rank: dict[int, list[tuple]] = {}
            for r, *row in _query(con, run_id, None, key_sql, predicate, wu, by_rank=True):
                by_rank.setdefault(r, []).append(tuple(row))
            open_.memo[key] = by_rank
        return open_.memo[key].get(rank, [])
    return _query(con, run_id, rank, key_sql, predicate, wu)


# The report's pooled decompositions (by layer type, layer, module) come from one scan:
# GROUPING(layer_type, layer_index, module) of each grouping set.
_POOLED_SETS = {("layer_type",): 3, ("layer_index", "layer_type"): 1, ("module",): 6}
_POOLED_ALL = 7
# Above this many kernels, one query per grouping (and per rank) instead: a quantile aggregate
# holds every value of its groups in memory, and four grouping sets of 50M durations pass the cap.
POOL_MAX_KERNELS = 20_000_000
# From this many kernels the report's `Pool` is found in numpy: below, the queries take
# milliseconds, and the pass would cost more (pyarrow's import and stats.duckdb_rounding's probe,
# 0.1 s, on a run of host API timings)
POOL_MIN_KERNELS = 1 << 16


def pooled(con, run_id: int, predicate: str, wu: warmup_mod.WarmUp) -> list[tuple] | None:
    """Inside a report (`timeline.materialized`): rows (grouping, warm, layer_type, layer_index,
    module, n, [quantiles at LEVELS], max, sum) of the grouping sets of _POOLED_SETS and the total,
    found once; None outside a report."""
    pool = _pool(con, run_id, predicate, wu)
    if pool is not None:
        return pool.rows
    open_ = shared.block(con, run_id)
    if open_ is None or open_.n_kernels > POOL_MAX_KERNELS:
        return None
    key = ("decompose.pooled", predicate, *_warm_key(wu))
    if key not in open_.memo:  # no pool: a run below POOL_MIN_KERNELS, keys that do not pack, or
        # quantiles numpy does not reproduce (stats.duckdb_rounding)
        prefix, source, params = _source(run_id, predicate, wu)
        with shared.quantile_memory(con, run_id):
            open_.memo[key] = con.execute(f"""{prefix}
                SELECT GROUPING(layer_type, layer_index, module) AS g, warm, layer_type, layer_index, module, count(*),
                       quantile_cont(duration_ns, $levels), max(duration_ns), coalesce(sum(duration_ns), 0)::BIGINT
                FROM {source}
                GROUP BY GROUPING SETS ((warm, layer_type), (warm, layer_index, layer_type), (warm, module), (warm))""",
                {**params, "levels": list(LEVELS)}).fetchall()
    return open_.memo[key]


def steady_cdf(con, run_id: int, predicate: str, wu: warmup_mod.WarmUp) -> list[tuple[str, int, list[float]]]:
    """(layer type, n, [quantile_cont at CDF_LEVELS]) of the steady state's events of
    `predicate` per layer type (NULL: 'unattributed'), by layer type: the report's latency CDF."""
    pool = _pool(con, run_id, predicate, wu)
    if pool is not None:
        return pool.cdf
    # its own scan, not the pooled one: a quantile aggregate's cost grows with its levels, and only
    # this table needs more than LEVELS
    with shared.quantile_memory(con, run_id):
        return con.execute(
            f"""WITH {warmup_mod.events_cte(predicate, first_calls=wu.first_calls, clusters=False)}
            SELECT coalesce(layer_type, '{UNATTRIBUTED}') AS lt, count(*), quantile_cont(duration_ns, $levels)
            FROM ev WHERE NOT warm
            GROUP BY lt ORDER BY lt""",
            {"run": run_id, "levels": list(CDF_LEVELS), **wu.params()}).fetchall()


@dataclass(frozen=True)
class Pool:
    """A report's statistics of the run's events (of one measure, warm-up split by one rule) that
    several of its tables share, found in one pass: `pooled`'s rows; per rank, `_aggregate`'s rows
    of the per-layer-type view (is_all, warm, layer_type, n, quantiles, max, sum); and
    `steady_cdf`'s rows."""

    rows: list[tuple]
    by_rank: dict[int, list[tuple]]
    cdf: list[tuple[str, int, list[float]]]


def prepare(con, run_id: int, *, warmup: int | None = None) -> None:
    """Inside a report's `timeline.materialized` block, before its kernel timeline is built (its
    `first`): the `Pool` of the run's measure. At 10M kernels it holds 300 MB for 0.8 s; found
    later, beside DuckDB's full memory, that raised the report's peak RSS by 55 MiB."""
    _pool(con, run_id, MEASURES[measure_of(con, run_id)], warmup_mod.detect(con, run_id, warmup=warmup))


def _pool(con, run_id: int, predicate: str, wu: warmup_mod.WarmUp) -> Pool | None:
    """The block's `Pool` (found on first use); None outside a report, outside [POOL_MIN_KERNELS,
    POOL_MAX_KERNELS], or where numpy cannot reproduce this DuckDB's quantiles: the SQL queries
    answer then."""
    open_ = shared.block(con, run_id)
    if (open_ is None or not POOL_MIN_KERNELS <= open_.n_kernels <= POOL_MAX_KERNELS
            or stats.duckdb_rounding() is None):
        return None
    key = ("decompose.pool", predicate, *_warm_key(wu))
    if key not in open_.memo:
        open_.memo[key] = _pool_of(con, run_id, predicate, wu)
    return open_.memo[key]


def _pool_of(con, run_id: int, predicate: str, wu: warmup_mod.WarmUp) -> Pool | None:
    """`Pool` from one pass over the run's events (of `predicate`): warm, rank, layer type, layer
    index, module (each as a code: text as its position among the sorted values) and duration
    streamed into numpy columns; then per grouping, the codes and durations packed into one int64
    key, sorted (stats.sorted_groups). None where a grouping does not pack (the SQL queries answer
    then). At 10M kernels the five tables it serves take 0.8-1.1 s, against 2.0-2.6 s from the
    queries, with half the CPU (benchmarks/bench_pool.py, docs/benchmarks.md)."""
    (types, modules, n, d_lo, d_hi, r_lo, r_hi, li_lo, li_hi), = con.execute(
        f"""SELECT list(DISTINCT layer_type), list(DISTINCT module), count(*), min(duration_ns), max(duration_ns),
                   min(rank), max(rank), min(layer_index), max(layer_index)
            FROM events WHERE run_id = $run AND {predicate}""", {"run": run_id}).fetchall()
    if not n:
        return Pool([], {}, [])
    types, modules = (sorted(v for v in (values or []) if v is not None) for values in (types, modules))
    nt, nm, nr = len(types) + 1, len(modules) + 1, r_hi - r_lo + 1
    nli = li_hi - li_lo + 2 if li_lo is not None else 1
    enum = {c: f"coalesce(enum_code({c}::{shared.enum_sql(v)}), {len(v)})" if v else "0"
            for c, v in (("layer_type", types), ("module", modules))}
    # column -> (its code in SQL, how many codes); a NULL layer type, index or module has a code
    keys = {"warm": ("warm::INTEGER", 2), "rank": (f"rank - {r_lo}", nr), "layer_type": (enum["layer_type"], nt),
            "layer_index": (f"coalesce(layer_index - {li_lo} + 1, 0)" if li_lo is not None else "0", nli),
            "module": (enum["module"], nm)}
    # what is grouped: pooled()'s grouping sets, and the per-rank view's (key columns, outer first)
    sets = {3: ("warm", "layer_type"), 1: ("warm", "layer_index", "layer_type"), 6: ("warm", "module"),
            7: ("warm",), "rank": ("rank", "warm", "layer_type"), "rank_all": ("rank", "warm")}
    radices = {g: [keys[c][1] for c in cs] for g, cs in sets.items()}
    sizes = {g: int(np.prod(radix, dtype=object)) for g, radix in radices.items()}  # codes of each grouping
    shifts = {g: stats.packing(size, d_hi - d_lo) for g, size in sizes.items()}
    if None in shifts.values():
        return None
    got = {c: np.empty(n, _UINT[_uint(k)]) for c, (_, k) in keys.items()}
    got["dur"] = np.empty(n, np.int64)
    prefix, source, params = _source(run_id, predicate, wu)
    select = ", ".join(f"({sql})::{_uint(k)} AS {c}" for c, (sql, k) in keys.items())
    at = 0
    for batch in con.sql(f"{prefix} SELECT {select}, duration_ns - {d_lo} AS dur FROM {source}",
                         params=params).to_arrow_reader(1 << 20):
        if at + batch.num_rows > n:
            return None
        for c, column in got.items():
            column[at:at + batch.num_rows] = batch.column(c).to_numpy()
        at += batch.num_rows
    if at != n:
        return None

    # two groupings at once (numpy's sort and arithmetic leave the GIL), each in a key buffer of its own
    buffers: queue.SimpleQueue = queue.SimpleQueue()
    for _ in range(_THREADS):
        buffers.put(np.empty(n, np.int64))

    def groups(g, *levels) -> list[tuple]:
        """(codes of the grouping's keys, n, [quantiles at each set of levels], max, sum) per group."""
        cs, radix, shift = sets[g], radices[g], shifts[g]
        buf = buffers.get()
        try:
            np.copyto(buf, got[cs[0]], casting="unsafe")
            for c, k in zip(cs[1:], radix[1:]):
                np.multiply(buf, k, out=buf)
                np.add(buf, got[c], out=buf, casting="unsafe")
            np.left_shift(buf, shift, out=buf)
            np.bitwise_or(buf, got["dur"], out=buf)
            buf.sort()
            out = stats.sorted_groups(buf, shift, d_lo, sizes[g], *levels)
        finally:
            buffers.put(buf)
        digits = [np.asarray(out.codes)]
        for k in reversed(radix[1:]):  # the code's digits, innermost key last
            digits[0], inner = np.divmod(digits[0], k)
            digits.insert(1, inner)
        return [(*(int(d) for d in ds), int(k), *(q.tolist() for q in qs), int(mx), int(sm))
                for ds, k, *qs, mx, sm in zip(zip(*digits), out.n, *out.quantiles, out.max, out.sum)]

    def type_of(c):
        return types[c] if c < len(types) else None

    with concurrent.futures.ThreadPoolExecutor(_THREADS, thread_name_prefix="hybridscope-pool") as pool:
        done = {g: pool.submit(groups, g, LEVELS, CDF_LEVELS) if g == 3 else pool.submit(groups, g, LEVELS)
                for g in sets}
        found = {g: f.result() for g, f in done.items()}
    rows, cdf = [], []
    for warm, t, k, q, cdf_q, mx, sm in found[3]:
        rows.append((3, bool(warm), type_of(t), None, None, k, q, mx, sm))
        if not warm:
            cdf.append((type_of(t) or UNATTRIBUTED, k, cdf_q))
    rows += [(1, bool(warm), type_of(t), i + li_lo - 1 if i else None, None, k, q, mx, sm)
             for warm, i, t, k, q, mx, sm in found[1]]
    rows += [(6, bool(warm), None, None, modules[m] if m < len(modules) else None, k, q, mx, sm)
             for warm, m, k, q, mx, sm in found[6]]
    rows += [(7, bool(warm), None, None, None, k, q, mx, sm) for warm, k, q, mx, sm in found[7]]
    by_rank: dict[int, list[tuple]] = {}
    for r, warm, t, *stat in found["rank"]:
        by_rank.setdefault(r + r_lo, []).append((0, bool(warm), type_of(t), *stat))
    for r, warm, *stat in found["rank_all"]:
        by_rank.setdefault(r + r_lo, []).append((1, bool(warm), None, *stat))
    if UNATTRIBUTED in types:  # NULL and a stored 'unattributed' are one label of the CDF
        steady = got["warm"] == 0
        label = got["layer_type"][steady].astype(np.int64)
        label[label == len(types)] = types.index(UNATTRIBUTED)
        merged = stats.by_group(label, nt, got["dur"][steady] + d_lo, CDF_LEVELS)
        cdf = [(types[int(c)], int(k), q.tolist()) for c, k, q in zip(merged.codes, merged.n, merged.quantiles[0])]
    return Pool(rows, by_rank, sorted(cdf, key=lambda r: r[0]))


_THREADS = 2
_UINT = {"UTINYINT": np.uint8, "USMALLINT": np.uint16, "UINTEGER": np.uint32, "UBIGINT": np.uint64}


def _uint(n_codes: int) -> str:
    """The narrowest unsigned SQL type holding codes below `n_codes`."""
    return next(t for t, d in _UINT.items() if n_codes - 1 <= np.iinfo(d).max)


def _warm_key(wu: warmup_mod.WarmUp) -> tuple:
    return wu.setting, tuple(sorted(wu.cutoffs.items())), wu.first_calls, wu.first


def _source(run_id: int, predicate: str, wu: warmup_mod.WarmUp) -> tuple[str, str, dict]:
    """(WITH prefix, FROM source, parameters): the run's events of `predicate` with `warm`."""
    if wu.setting == "none":
        return "", f"(SELECT *, false AS warm FROM events WHERE run_id = $run AND {predicate}) AS ev", {"run": run_id}
    return (f"WITH {warmup_mod.events_cte(predicate, first_calls=wu.first_calls, clusters=False)}", "ev",
            {"run": run_id, **wu.params()})


def _from_pooled(rows: list[tuple], key_sql: tuple[str, ...]) -> list[tuple]:
    """_aggregate's rows for `key_sql` out of `pooled`'s."""
    cols = {"layer_type": 2, "layer_index": 3, "module": 4}
    out = []
    for r in rows:
        if r[0] in (_POOLED_SETS[key_sql], _POOLED_ALL):
            out.append((int(r[0] == _POOLED_ALL), r[1], *(r[cols[k]] for k in key_sql), r[5], r[6], r[7], r[8]))
    return out


def _query(con, run_id: int, rank: int | None, key_sql: tuple[str, ...], predicate: str, wu: warmup_mod.WarmUp,
           *, by_rank: bool = False) -> list[tuple]:
    """_aggregate's rows, of one rank or pooled; with `by_rank`, each of every rank, rank first."""
    keys = ", ".join(key_sql)
    levels = ", ".join(repr(q) for q in LEVELS)
    rank_filter = "AND rank = $rank" if rank is not None else ""
    prefix, source, params = _source(run_id, predicate, wu)
    by = "rank, " if by_rank else ""
    sql = f"""{prefix}
        SELECT {by}grouping({key_sql[0]}) AS is_all, warm, {keys}, count(*) AS n,
               quantile_cont(duration_ns, [{levels}]) AS q, max(duration_ns) AS mx,
               coalesce(sum(duration_ns), 0)::BIGINT AS gpu
        FROM {source}
        WHERE true {rank_filter}
        GROUP BY GROUPING SETS (({by}warm, {keys}), ({by}warm))
    """
    if rank is not None:
        params["rank"] = rank
    with shared.quantile_memory(con, run_id):
        return con.execute(sql, params).fetchall()


def _order(by: str, groups: list[tuple]) -> list[tuple]:
    """Groups in the documented order (see the module doc)."""
    # a stored layer type 'unattributed' and NULL are two groups of one label: the larger first
    if by == "layer_type":
        return sorted(groups, key=lambda g: (*order_key(g[1]), -g[-1]))
    if by == "layer":
        return sorted(groups, key=lambda g: (g[1] is None, g[1] if g[1] is not None else 0, *order_key(g[2]), -g[-1]))
    return sorted(groups, key=lambda g: (-g[-1], g[1]))  # module, kernel: GPU time, largest first


def _cpu_only(con, run_id: int) -> str:
    """What a run without GPU events holds instead, when it is CPU operators (kernels mode on a CPU)."""
    n = con.execute("SELECT count(*) FROM events WHERE run_id = ? AND source = 'cpu' AND kind = 'cpu_op'",
                    [run_id]).fetchall()[0][0]
    return (f": the run holds {n:,} CPU operators, which are not GPU kernels (a CPU-only profile); on a CPU, "
            "`hybridscope trace --mode layers` records layer timings to decompose" if n else "")


def _largest(groups: list[tuple], top: int) -> list[tuple]:
    """The `top` groups with the most GPU time (ties: the earlier in order), kept in their order."""
    chosen = sorted(range(len(groups)), key=lambda i: (-groups[i][-1], i))[:top]
    return [groups[i] for i in sorted(chosen)]


def _row(keys: tuple, raw: tuple, total: int, wall_ns: int) -> tuple:
    n, q, mx, gpu = raw[-4], raw[-3], raw[-2], int(raw[-1])
    p50, p90, p99, p999 = (plain(v) for v in q) if q is not None else (None,) * 4
    tail = p99 / p50 if p50 else None
    gpu_pct = 100.0 * gpu / total if total else None  # the warm-up row (total 0): no share
    wall_pct = 100.0 * gpu / wall_ns if wall_ns else None
    return (*keys, int(n), p50, p90, p99, p999, plain(mx), tail, gpu, gpu_pct, wall_pct)


def _ms(ns: int) -> str:
    """A window length for the title: ms with three decimals, or µs below 1 ms."""
    return f"{ns / 1e6:,.3f} ms" if ns >= 1_000_000 else f"{ns / 1e3:,.3f} µs"
