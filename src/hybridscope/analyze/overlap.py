"""Comm/compute overlap, exposed communication, GPU idle gaps and launch-bound detection.

Per (rank, device), on GPU kernels only (timeline.KERNEL_FILTER), of the steady state: each rank's
kernels from its warm-up cut-off on (analyze/warmup.py; `--warmup 0` keeps everything), measured
against its window from that cut-off (timeline.steady_rank_windows). Definitions (docs/analyses.md,
"overlap and gaps"):
- comm = kernels of layer type moe_comm or comm; compute = every other kernel. `comm_ns` and
  `compute_ns` are the lengths of the unions of their intervals;
- `overlapped_ns` = time covered by both unions; `exposed_ns` = comm_ns - overlapped_ns: time when
  communication runs and no compute kernel does (kernels of one stream run one after another, so
  the compute overlapping a collective runs on other streams);
- an idle gap is the time between two consecutive segments of the union of all kernels of the
  device (time before the first and after the last kernel is not a gap). A gap falls between the
  kernel that ended last before it and the kernel that starts it; its step is that kernel's step;
- launch-bound: per (rank, phase), over kernels in time order on their device, the gap before a
  kernel is its start minus the latest end among earlier kernels (0 when it overlaps). A phase is
  launch-bound when its median kernel is shorter than `short_ns`, its median gap is at least its
  median kernel, and (when launches are recorded) the CPU's launch rate is below the rate at which
  the GPU retires kernels. launch rate = launches / span of the launches on the host; GPU rate =
  kernels / their busy time.
"""

from __future__ import annotations

from hybridscope.analyze import launches, shared, timeline
from hybridscope.table import Column, Table
from hybridscope.units import format_ns

# a gap ends at a kernel that starts past every earlier kernel's end (timeline.materialized)
_GAPS = ("SELECT *, ts_ns - prev_max AS gap, list_extract($types, holder_code) AS holder_type FROM {k}"
         " WHERE NOT warm AND ts_ns > prev_max")


def _busy_by(k: str, partition: str, group: str) -> str:
    """Union length of steady-state kernel intervals per `group`, the running maximum taken per
    `partition` (timeline.BUSY_SQL), as (group columns..., busy)."""
    return f"""
        SELECT {group}, {timeline.BUSY_SQL} AS busy FROM (
            SELECT {group}, ts_ns, end_ns, max(end_ns) OVER (PARTITION BY {partition} ORDER BY ts_ns, end_ns, ev
                                                            ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING) AS prev_max
            FROM {k} WHERE NOT warm) GROUP BY {group}"""


@timeline.on_timeline
def overlap(con, run_id: int) -> Table:
    """Per (rank, device): comm, compute, overlapped and exposed communication time."""
    windows = timeline.steady_rank_windows(con, run_id)
    got = con.execute(f"""
        SELECT rank, device, sum(busy)::BIGINT, sum(busy_comm)::BIGINT, sum(busy_compute)::BIGINT
        FROM {timeline.tables(con, run_id).busy} WHERE NOT warm GROUP BY rank, device ORDER BY rank, device""").fetchall()
    rows = []
    for rank, device, union_ns, comm_ns, comp_ns in got:
        both = comm_ns + comp_ns - union_ns  # |A ∩ B| = |A| + |B| - |A ∪ B|
        lo, hi = windows[rank]
        exposed = comm_ns - both
        busy = comp_ns + exposed
        rows.append((rank, None if device < 0 else device, hi - lo, busy, hi - lo - busy, comp_ns - both,
                     comp_ns, comm_ns, both, exposed,
                     100.0 * exposed / comm_ns if comm_ns else None, 100.0 * exposed / (hi - lo) if hi > lo else None))
    cols = (Column("rank", "int"), Column("device", "int"), Column("window_ns", "ns", "", "window"),
            Column("busy_ns", "ns", "time with any kernel running", "busy"),
            Column("idle_ns", "ns", "window - busy", "idle"),
            Column("compute_only_ns", "ns", "compute with no comm running", "compute only"),
            Column("compute_ns", "ns", "union of compute kernels", "compute"),
            Column("comm_ns", "ns", "union of moe_comm + comm kernels", "comm"),
            Column("overlapped_ns", "ns", "comm time hidden under compute", "overlapped"),
            Column("exposed_ns", "ns", "comm time with no compute running", "exposed"),
            Column("exposed_comm_pct", "pct", "exposed / comm", "exposed/comm"),
            Column("exposed_wall_pct", "pct", "exposed / window", "exposed/wall"))
    return Table("overlap", cols, rows, {"title": "Communication overlap", "run_id": run_id,
                                         "notes": _warm_note(con, run_id)})


@timeline.once
def _warm_note(con, run_id: int) -> list[str]:
    """What the steady state leaves out, in one line (none when nothing is); found once per report
    for its three tables."""
    t = timeline.tables(con, run_id)
    n, ns = con.execute(f"SELECT coalesce(sum(n), 0)::BIGINT, coalesce(sum(busy), 0)::BIGINT FROM {t.busy}"
                        " WHERE warm").fetchall()[0]
    if not n:
        return []
    return [f"steady state: each rank from its warm-up cut-off on; {n:,} warm-up kernel{'s' if n != 1 else ''} "
            + f"({format_ns(ns)} busy) left out (--warmup 0 keeps them)"]


@timeline.on_timeline
def gaps(con, run_id: int, *, top: int = 10) -> dict[str, Table]:
    """GPU idle gaps: {'gap_summary': per device, 'top_gaps': the longest, 'gap_sites': per
    (layer type before, layer type after), 'gap_histogram': counts per log2 bin}."""
    t = timeline.tables(con, run_id)
    k, types = t.kernels, {"types": t.types}
    gaps_sql = _GAPS.format(k=k)
    windows = timeline.steady_rank_windows(con, run_id)
    # per device and per site (layer type before, after) from one pass over the gaps
    with shared.quantile_memory(con, run_id):
        got = con.execute(f"""
            SELECT GROUPING(rank, device) = 0 AS per_device, rank, device, holder_type, layer_type, count(*),
                   sum(gap)::BIGINT, quantile_cont(gap, [0.5, 0.9, 0.99]), max(gap)
            FROM ({gaps_sql}) GROUP BY GROUPING SETS ((rank, device), (holder_type, layer_type))""",
                          types).fetchall()
    devices = {(r, d): row for per_device, r, d, *row in got if per_device}
    sites = [row[2:] for per_device, *row in got if not per_device]
    summary = []
    for rank, device in con.execute(f"SELECT DISTINCT rank, device FROM {t.busy} WHERE NOT warm ORDER BY ALL").fetchall():
        _b, _a, n, idle, qs, longest = devices.get((rank, device), (None, None, 0, 0, None, None))
        lo, hi = windows[rank]
        p50, p90, p99 = qs if qs is not None else (None, None, None)
        summary.append((rank, None if device < 0 else device, int(n), int(idle), p50, p90, p99,
                        None if longest is None else int(longest), 100.0 * idle / (hi - lo) if hi > lo else None))
    return {"gap_summary": _summary_table(summary, run_id, _warm_note(con, run_id)),
            "top_gaps": _top_table(con, gaps_sql, t, timeline.rank_windows(con, run_id), top, run_id),
            "gap_sites": _sites_table(sites, run_id),
            "gap_histogram": _histogram(con, gaps_sql, types, run_id)}


def _summary_table(rows, run_id, notes: list[str]) -> Table:
    cols = (Column("rank", "int"), Column("device", "int"), Column("n_gaps", "int", "", "gaps"),
            Column("idle_ns", "ns", "sum of gaps", "idle"), Column("p50_ns", "ns", "", "p50"),
            Column("p90_ns", "ns", "", "p90"), Column("p99_ns", "ns", "", "p99"), Column("max_ns", "ns", "", "max"),
            Column("idle_pct", "pct", "gaps / window", "idle/wall"))
    return Table("gap_summary", cols, rows, {"title": "GPU idle gaps", "run_id": run_id, "notes": notes})


def _top_table(con, gaps_sql: str, t, windows, top: int, run_id: int) -> Table:
    got = con.execute(f"""
        SELECT g.rank, g.device, g.prev_max, g.gap, g.step, g.holder_type, g.layer_type, b.name, a.name
        FROM (SELECT * FROM ({gaps_sql}) ORDER BY gap DESC, pos LIMIT $top) g
        JOIN {t.kernels} h ON h.pos = g.holder
        JOIN events a ON a.rowid = g.ev JOIN events b ON b.rowid = h.ev
        ORDER BY g.gap DESC, g.pos""", {"top": top, "types": t.types}).fetchall()
    rows = [(rank, None if dev < 0 else dev, int(start - windows[rank][0]), int(gap), step, before, after, bk, ak)
            for rank, dev, start, gap, step, before, after, bk, ak in got]
    cols = (Column("rank", "int"), Column("device", "int"),
            Column("at_ns", "ns", "gap start from the rank's window start", "at"), Column("gap_ns", "ns", "", "gap"),
            Column("step", "int"), Column("before", "str", "layer type of the kernel before"),
            Column("after", "str", "layer type of the kernel after"),
            Column("before_kernel", "kernel"), Column("after_kernel", "kernel"))
    return Table("top_gaps", cols, rows, {"title": f"Longest {top} GPU idle gaps", "run_id": run_id})


def _sites_table(got: list[tuple], run_id: int) -> Table:
    """`got`: (before, after, n, idle, [p50, p90, p99], max) per site; by idle time, largest first."""
    rows = [(b, a, int(n), int(idle), qs[0], qs[2]) for b, a, n, idle, qs, _max in got]
    rows.sort(key=lambda r: (-r[3], r[0] is None, r[0] or "", r[1] is None, r[1] or ""))
    cols = (Column("before", "str", "layer type before the gap"), Column("after", "str", "layer type after"),
            Column("n_gaps", "int", "", "gaps"), Column("idle_ns", "ns", "", "idle"),
            Column("p50_ns", "ns", "", "p50"), Column("p99_ns", "ns", "", "p99"))
    return Table("gap_sites", cols, rows, {"title": "Where the idle time falls", "run_id": run_id})


def _histogram(con, gaps_sql: str, types: dict, run_id: int) -> Table:
    """Gap counts per power-of-two bin [2^i, 2^(i+1)) ns, over all devices."""
    rows = [(int(2 ** e), int(2 ** (e + 1)), int(n), int(idle)) for e, n, idle in con.execute(f"""
        SELECT floor(log2(gap))::BIGINT AS e, count(*), sum(gap)::BIGINT FROM ({gaps_sql})
        GROUP BY e ORDER BY e""", types).fetchall()]
    cols = (Column("lo_ns", "ns", "bin start (inclusive)", "from"), Column("hi_ns", "ns", "bin end", "to"),
            Column("n_gaps", "int", "", "gaps"), Column("idle_ns", "ns", "", "idle"))
    return Table("gap_histogram", cols, rows, {"title": "Idle gap lengths", "run_id": run_id})


@timeline.on_timeline
def launch_bound(con, run_id: int, *, short_ns: int = 20_000) -> Table:
    """Per (rank, phase): kernel and gap medians, launch vs GPU rates, and the launch-bound verdict."""
    t = timeline.tables(con, run_id)
    by_phase = {(int(r), p or "unknown"): (int(n), int(span)) for r, p, n, span in launches.launch_spans(con, run_id)}
    # the union of a (rank, phase)'s kernels across its devices: the sweep's per-device union when
    # each rank has one device (the rule), else with a window over the rank
    one_device = con.execute(f"SELECT count(DISTINCT (rank, device)) = count(DISTINCT rank) FROM {t.busy}"
                             " WHERE NOT warm").fetchall()[0][0]
    busy = (f"SELECT rank, coalesce(phase, 'unknown') AS ph, sum(busy_phase)::BIGINT AS busy FROM {t.busy}"
            " WHERE NOT warm GROUP BY ALL") if one_device else _busy_by(
        f"(SELECT *, coalesce(phase, 'unknown') AS ph FROM {t.kernels})", "rank, ph", "rank, ph")
    with shared.quantile_memory(con, run_id):
        got = con.execute(f"""
            WITH kp AS (SELECT rank, coalesce(phase, 'unknown') AS ph, end_ns - ts_ns AS dur,
                               greatest(ts_ns - coalesce(prev_max, ts_ns), 0) AS gap FROM {t.kernels} WHERE NOT warm),
            stats AS (SELECT rank, ph, count(*) AS n, quantile_cont(dur, 0.5) AS med_k, quantile_cont(gap, 0.5) AS med_g,
                             sum(gap)::BIGINT AS idle, avg((gap >= dur)::INTEGER) AS ge
                      FROM kp GROUP BY rank, ph),
            busy AS ({busy})
            SELECT s.rank, s.ph, s.n, s.med_k, s.med_g, s.idle, s.ge, b.busy
            FROM stats s JOIN busy b ON b.rank = s.rank AND b.ph = s.ph ORDER BY s.rank, s.ph""").fetchall()
    rows = []
    for rank, ph, n, med_k, med_g, idle, ge, busy in got:
        gpu_rate = n / (busy / 1e6) if busy else None
        n_l, span = by_phase.get((rank, ph), (0, 0))
        cpu_rate = n_l / (span / 1e6) if n_l > 1 and span else None
        verdict = med_k < short_ns and med_g >= med_k and (cpu_rate is None or gpu_rate is None or cpu_rate < gpu_rate)
        rows.append((rank, ph, int(n), float(med_k), float(med_g), int(idle), 100.0 * ge,
                     cpu_rate, gpu_rate, "yes" if verdict else "no"))
    cols = (Column("rank", "int"), Column("phase", "str"), Column("n_kernels", "int", "", "kernels"),
            Column("median_kernel_ns", "ns", "", "median kernel"),
            Column("median_gap_ns", "ns", "idle time before a kernel, median", "median gap"),
            Column("idle_ns", "ns", "sum of the gaps before the phase's kernels", "idle"),
            Column("gap_ge_kernel_pct", "pct", "kernels whose preceding gap is at least their duration", "gap≥kernel"),
            Column("cpu_launches_per_ms", "float", "launch calls per ms of host launch span", "CPU launches/ms"),
            Column("gpu_kernels_per_ms", "float", "kernels per ms of GPU busy time", "GPU kernels/ms"),
            Column("launch_bound", "str", "verdict (module doc)", "launch-bound"))
    return Table("launch_bound", cols, rows,
                 {"title": "Launch-bound detection", "run_id": run_id, "short_ns": short_ns,
                  "notes": _warm_note(con, run_id)})
