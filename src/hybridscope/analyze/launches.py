"""The host's kernel and graph launch calls of each rank's steady state, per phase: how many, and
over what span of host time (what overlap.launch_bound sets against the GPU's kernel rate).

A launch's phase is its own, else that of a kernel it launched (same rank and correlation id), else
that of the step window it falls in (the latest window of its rank starting at or before it, while
that window lasts). The steady state starts at the rank's warm-up cut-off (analyze/warmup.py), as
for the interval analyses.

The kernel lookup joins every launch with every kernel. Done as a hash join in SQL, with the
group-by that picks one phase per correlation id, it took 1.6 s of a 15 s report of 10M kernels
(3.1 CPU-s on 2 cores). A process numbers its runtime calls from 1, so a rank's correlation ids are
dense: here the lookup is an array indexed by id (a phase code for each id from the rank's least to
its greatest), filled from the rank's kernels and read by its launches, a rank at a time, both
streamed. A run where some rank's ids spread over more than DENSE slots per kernel (ids from another
numbering) is looked up by the join in SQL instead (`_joined`); both give the same rows.
"""

from __future__ import annotations

import numpy as np

from hybridscope.analyze import warmup
from hybridscope.analyze.shared import STEP_WINDOWS_SQL, tables
from hybridscope.analyze.timeline import on_timeline, rank_windows

LAUNCHES = "source = 'cuda_api' AND (name ILIKE '%LaunchKernel%' OR name ILIKE '%GraphLaunch%')"
DENSE = 8  # the most id slots per kernel (and 2^16 more) a rank's lookup array may have
BATCH_ROWS = 1 << 20


@on_timeline
def launch_spans(con, run_id: int) -> list[tuple[int, str | None, int, int]]:
    """(rank, phase, n launches, host span ns: last launch start - first) per (rank, phase) of the
    run's steady-state launch calls (module doc); phase None where none was found."""
    t = tables(con, run_id)
    ranges = {int(r): (int(lo), int(hi), int(n)) for r, lo, hi, n in con.execute(
        f"""SELECT rank, min(correlation), max(correlation), count(*) FROM {t.kernels}
            WHERE correlation IS NOT NULL AND phase IS NOT NULL GROUP BY rank""").fetchall()}
    if any(hi - lo + 1 > DENSE * n + (1 << 16) for lo, hi, n in ranges.values()):
        return _joined(con, run_id)
    from hybridscope.analyze.sweep import Codes  # pyarrow: imported where a run has kernels

    codes = Codes()
    windows = _windows(con, run_id, codes)
    out = []
    for rank in sorted(rank_windows(con, run_id)):
        lookup = _lookup(con, t.kernels, rank, ranges[rank], codes) if rank in ranges else None
        spans: dict[int, list[int]] = {}  # phase code -> [n, first, last]
        cut = t.cutoffs.get(rank)
        if len(codes.values) >= 2**15:  # beyond the lookup's codes (int16): not a phase vocabulary
            return _joined(con, run_id)
        reader = con.sql(
            f"""SELECT ts_ns, correlation, phase FROM events
                WHERE run_id = $run AND rank = $rank AND {LAUNCHES} AND ($cut IS NULL OR ts_ns >= $cut)""",
            params={"run": run_id, "rank": rank, "cut": cut}).to_arrow_reader(BATCH_ROWS)
        for batch in reader:
            ts = batch.column("ts_ns").to_numpy()
            phase = codes.encode(batch.column("phase"))
            if lookup is not None:
                lo = ranges[rank][0]
                _fill(phase, batch.column("correlation").fill_null(lo - 1).to_numpy() - lo, lookup)
            if rank in windows:
                _in_windows(phase, ts, *windows[rank])
            for code in np.flatnonzero(np.bincount(phase)).tolist():
                got = ts[phase == code]
                n, first, last = spans.get(code, (0, got[0], got[0]))
                spans[code] = [n + got.size, min(first, int(got.min())), max(last, int(got.max()))]
        out += [(rank, codes.value(code), n, int(last - first)) for code, (n, first, last) in sorted(spans.items())]
    return out


def _lookup(con, kernels: str, rank: int, id_range: tuple[int, int, int], codes) -> np.ndarray:
    """The rank's phase code per correlation id (index: id - least id; 0: no kernel with a phase)."""
    lo, hi, _n = id_range
    lookup = np.zeros(hi - lo + 1, np.int16)
    reader = con.sql(f"SELECT correlation, phase FROM {kernels} WHERE rank = $rank AND correlation IS NOT NULL"
                     " AND phase IS NOT NULL", params={"rank": rank}).to_arrow_reader(BATCH_ROWS)
    for batch in reader:
        lookup[batch.column("correlation").to_numpy() - lo] = codes.encode(batch.column("phase"))
    return lookup


def _fill(phase: np.ndarray, slot: np.ndarray, lookup: np.ndarray) -> None:
    """Launches without a phase take that of their slot in `lookup` (none outside it)."""
    rows = np.flatnonzero(phase == 0)
    s = slot[rows]
    inside = (s >= 0) & (s < lookup.size)
    phase[rows[inside]] = lookup[s[inside]]


def _windows(con, run_id: int, codes) -> dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """Per rank, its step windows' (start, end, phase code), by start (then end)."""
    got = con.execute(f"WITH {STEP_WINDOWS_SQL} SELECT rank, ts_ns, end_ns, phase FROM windows"
                      " ORDER BY rank, ts_ns, end_ns", {"run": run_id}).fetchall()  # a row per step: few
    if not got:
        return {}
    rank, start, end, names = zip(*got)
    rank, start, end = (np.array(v, np.int64) for v in (rank, start, end))
    phase = codes.encode_values(names)
    bounds = np.flatnonzero(np.diff(rank)) + 1
    return {int(rank[a]): (start[a:b], end[a:b], phase[a:b])
            for a, b in zip(np.r_[0, bounds].tolist(), np.r_[bounds, rank.size].tolist()) if b > a}


def _in_windows(phase: np.ndarray, ts: np.ndarray, start: np.ndarray, end: np.ndarray, code: np.ndarray) -> None:
    """Launches still without a phase take that of the latest window starting at or before them,
    if they fall before its end."""
    rows = np.flatnonzero(phase == 0)
    j = np.searchsorted(start, ts[rows], "right") - 1
    inside = j >= 0
    inside[inside] = ts[rows[inside]] < end[j[inside]]
    phase[rows[inside]] = code[j[inside]]


def _joined(con, run_id: int) -> list[tuple[int, str | None, int, int]]:
    """launch_spans' rows by a hash join in SQL (any correlation ids)."""
    t = tables(con, run_id)
    sql = f"""
        WITH {STEP_WINDOWS_SQL}, {warmup.cut_sql(LAUNCHES)},
        kp AS (SELECT rank, correlation, any_value(phase) AS phase FROM {t.kernels}
               WHERE correlation IS NOT NULL AND phase IS NOT NULL GROUP BY rank, correlation),
        l AS (SELECT e0.rank, e0.ts_ns, coalesce(e0.phase, kp.phase) AS phase FROM e0
              LEFT JOIN kp ON e0.rank = kp.rank AND e0.correlation = kp.correlation
              WHERE NOT e0.in_warm_steps),
        lp AS (SELECT l.rank, l.ts_ns, CASE WHEN l.ts_ns < w.end_ns THEN w.phase END AS phase
               FROM (SELECT * FROM l WHERE phase IS NULL) l
               ASOF LEFT JOIN windows w ON l.rank = w.rank AND l.ts_ns >= w.ts_ns
               UNION ALL
               SELECT rank, ts_ns, phase FROM l WHERE phase IS NOT NULL)
        SELECT rank, phase, count(*), max(ts_ns) - min(ts_ns) FROM lp GROUP BY rank, phase ORDER BY rank, phase
    """
    rows = con.execute(sql, {"run": run_id, **warmup.WarmUp("auto", cutoffs=t.cutoffs).params()}).fetchall()
    return [(int(r), p, int(n), int(span)) for r, p, n, span in rows]
