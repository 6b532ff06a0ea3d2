"""Comm/compute overlap, exposed communication, GPU idle gaps and launch-bound detection.

Per (rank, device), on GPU kernels only (timeline.KERNEL_FILTER). Definitions (docs/analyses.md,
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

import numpy as np

from hybridscope.analyze import intervals, timeline
from hybridscope.analyze.stats import quantile
from hybridscope.table import Column, Table


def overlap(con, run_id: int) -> Table:
    """Per (rank, device): comm, compute, overlapped and exposed communication time."""
    k = timeline.kernels(con, run_id)
    windows = timeline.rank_windows(con, run_id)
    rows = []
    for (rank, device), idx in timeline.groups(k, "rank", "device"):
        is_comm = np.isin(k["layer_type"][idx], timeline.COMM_TYPES)
        s, e = k["ts_ns"][idx], k["end_ns"][idx]
        comm = intervals.union(s[is_comm], e[is_comm])
        comp = intervals.union(s[~is_comm], e[~is_comm])
        comm_ns, comp_ns = intervals.length(comm), intervals.length(comp)
        both = intervals.intersection_length(comm, comp)
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
    return Table("overlap", cols, rows, {"title": "Communication overlap", "run_id": run_id})


def _device_gaps(k: dict, idx: np.ndarray) -> dict:
    """Gaps of one device's kernels (indices `idx` into timeline columns), with their neighbours."""
    s, e = k["ts_ns"][idx], k["end_ns"][idx]
    order = np.argsort(s, kind="stable")
    s, e, idx = s[order], e[order], idx[order]
    run_max = np.maximum.accumulate(e)
    # the kernel holding the running max end: the latest index whose end reaches it
    holder = np.maximum.accumulate(np.where(e >= run_max, np.arange(s.size), 0))
    starts_gap = np.flatnonzero(s[1:] > run_max[:-1]) + 1  # kernel that ends an idle gap
    before = idx[holder[starts_gap - 1]]
    return {"start": run_max[starts_gap - 1], "end": s[starts_gap], "before": before, "after": idx[starts_gap]}


def gaps(con, run_id: int, *, top: int = 10) -> dict[str, Table]:
    """GPU idle gaps: {'gap_summary': per device, 'top_gaps': the longest, 'gap_sites': per
    (layer type before, layer type after), 'gap_histogram': counts per log2 bin}."""
    k = timeline.kernels(con, run_id)
    windows = timeline.rank_windows(con, run_id)
    summary, everything = [], []
    for (rank, device), idx in timeline.groups(k, "rank", "device"):
        g = _device_gaps(k, idx)
        d = g["end"] - g["start"]
        lo, hi = windows[rank]
        dev = None if device < 0 else device
        summary.append((rank, dev, int(d.size), int(d.sum()), quantile(d, 0.5), quantile(d, 0.9), quantile(d, 0.99),
                        int(d.max()) if d.size else None, 100.0 * d.sum() / (hi - lo) if hi > lo else None))
        everything.append((rank, dev, lo, g, d))
    return {"gap_summary": _summary_table(summary, run_id), "top_gaps": _top_table(k, everything, top, run_id),
            "gap_sites": _sites_table(k, everything, run_id), "gap_histogram": _histogram(everything, run_id)}


def _summary_table(rows, run_id) -> Table:
    cols = (Column("rank", "int"), Column("device", "int"), Column("n_gaps", "int", "", "gaps"),
            Column("idle_ns", "ns", "sum of gaps", "idle"), Column("p50_ns", "ns", "", "p50"),
            Column("p90_ns", "ns", "", "p90"), Column("p99_ns", "ns", "", "p99"), Column("max_ns", "ns", "", "max"),
            Column("idle_pct", "pct", "gaps / window", "idle/wall"))
    return Table("gap_summary", cols, rows, {"title": "GPU idle gaps", "run_id": run_id})


def _top_table(k, everything, top, run_id) -> Table:
    parts = [(rank, dev, lo, g, d) for rank, dev, lo, g, d in everything if d.size]
    rows = []
    if parts:
        d = np.concatenate([p[4] for p in parts])
        which = np.concatenate([np.full(p[4].size, i) for i, p in enumerate(parts)])
        pos = np.concatenate([np.arange(p[4].size) for p in parts])
        for j in np.argsort(-d, kind="stable")[:top]:
            rank, dev, lo, g, _ = parts[which[j]]
            b, a = g["before"][pos[j]], g["after"][pos[j]]
            rows.append((rank, dev, int(g["start"][pos[j]] - lo), int(d[j]), _int(k["step"][a]),
                         k["layer_type"][b], k["layer_type"][a], k["name"][b], k["name"][a]))
    cols = (Column("rank", "int"), Column("device", "int"),
            Column("at_ns", "ns", "gap start from the rank's window start", "at"), Column("gap_ns", "ns", "", "gap"),
            Column("step", "int"), Column("before", "str", "layer type of the kernel before"),
            Column("after", "str", "layer type of the kernel after"),
            Column("before_kernel", "kernel"), Column("after_kernel", "kernel"))
    return Table("top_gaps", cols, rows, {"title": f"Longest {top} GPU idle gaps", "run_id": run_id})


def _sites_table(k, everything, run_id) -> Table:
    acc: dict[tuple[str, str], list[np.ndarray]] = {}
    for _rank, _dev, _lo, g, d in everything:
        if not d.size:
            continue
        pair = np.char.add(np.char.add(k["layer_type"][g["before"]].astype(str), "\t"),
                           k["layer_type"][g["after"]].astype(str))
        for key in np.unique(pair):
            b, a = key.split("\t")
            acc.setdefault((b, a), []).append(d[pair == key])
    rows = []
    for (b, a), chunks in acc.items():
        d = np.concatenate(chunks)
        rows.append((b, a, int(d.size), int(d.sum()), quantile(d, 0.5), quantile(d, 0.99)))
    rows.sort(key=lambda r: -r[3])
    cols = (Column("before", "str", "layer type before the gap"), Column("after", "str", "layer type after"),
            Column("n_gaps", "int", "", "gaps"), Column("idle_ns", "ns", "", "idle"),
            Column("p50_ns", "ns", "", "p50"), Column("p99_ns", "ns", "", "p99"))
    return Table("gap_sites", cols, rows, {"title": "Where the idle time falls", "run_id": run_id})


def _histogram(everything, run_id) -> Table:
    """Gap counts per power-of-two bin [2^i, 2^(i+1)) ns, over all devices."""
    d = np.concatenate([x[4] for x in everything]) if everything else np.zeros(0, dtype=np.int64)
    d = d[d > 0]
    rows = []
    if d.size:
        b = np.floor(np.log2(d)).astype(np.int64)
        for exp, n in zip(*np.unique(b, return_counts=True)):
            sel = d[b == exp]
            rows.append((int(2 ** exp), int(2 ** (exp + 1)), int(n), int(sel.sum())))
    cols = (Column("lo_ns", "ns", "bin start (inclusive)", "from"), Column("hi_ns", "ns", "bin end", "to"),
            Column("n_gaps", "int", "", "gaps"), Column("idle_ns", "ns", "", "idle"))
    return Table("gap_histogram", cols, rows, {"title": "Idle gap lengths", "run_id": run_id})


def launch_bound(con, run_id: int, *, short_ns: int = 20_000) -> Table:
    """Per (rank, phase): kernel and gap medians, launch vs GPU rates, and the launch-bound verdict."""
    k = timeline.kernels(con, run_id)
    launches = {(int(r), p or "unknown"): (int(n), int(span)) for r, p, n, span in timeline.launch_spans(con, run_id)}
    phase = np.array(["unknown" if p is None else p for p in k["phase"].tolist()], dtype=object) \
        if len(k["phase"]) else k["phase"]
    gap_before = np.zeros(len(k["ts_ns"]), dtype=np.int64)
    for _key, idx in timeline.groups(k, "rank", "device"):
        s, e = k["ts_ns"][idx], k["end_ns"][idx]
        prev_max = np.maximum.accumulate(e)
        gap_before[idx[1:]] = np.maximum(s[1:] - prev_max[:-1], 0)
        gap_before[idx[0]] = 0
    rows = []
    for (rank, ph), idx in timeline.groups({"rank": k["rank"], "phase": phase}, "rank", "phase"):
        dur, gp = k["duration_ns"][idx], gap_before[idx]
        med_k, med_g = float(np.median(dur)), float(np.median(gp))
        busy = intervals.length(intervals.union(k["ts_ns"][idx], k["end_ns"][idx]))
        gpu_rate = idx.size / (busy / 1e6) if busy else None
        n_l, span = launches.get((rank, ph), (0, 0))
        cpu_rate = n_l / (span / 1e6) if n_l > 1 and span else None
        verdict = med_k < short_ns and med_g >= med_k and (cpu_rate is None or gpu_rate is None or cpu_rate < gpu_rate)
        rows.append((rank, ph, int(idx.size), med_k, med_g, int(gp.sum()), 100.0 * float(np.mean(gp >= dur)),
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
                 {"title": "Launch-bound detection", "run_id": run_id, "short_ns": short_ns})


def _int(v) -> int | None:
    v = int(v)
    return None if v < 0 else v
