"""Engine steps: prefill vs decode, per-step GPU time stacked by layer type, the slowest steps.

Steps and the step of each kernel come from `timeline` (recorded steps, or step ranges of an
imported trace). Definitions (docs/analyses.md, "steps"):
- a step's latency is `end_ns - ts_ns` of its window; its GPU time is the sum of its kernels'
  durations (kernels may overlap, so GPU time can exceed latency on several streams);
- `step_stack`: per step and layer type, the summed kernel time;
- `phases`: per phase ('prefill', 'decode', 'mixed', or 'unknown'), count and continuous
  percentiles of step latency;
- `slow_steps`: the slowest steps are those with latency >= the continuous `quantile` of all step
  latencies (at least the single slowest step). For each layer type: its mean time per slow step and
  per other step, its share of the slow steps' GPU time, and the growth `slow - typical`.
  meta['dominant'] is the layer type with the largest share of the slow steps' GPU time,
  meta['grew_most'] the one whose time per step grew the most.
"""

from __future__ import annotations

import numpy as np

from hybridscope.analyze import timeline
from hybridscope.analyze.stats import quantile, quantile_cont
from hybridscope.attribute.vocab import order_key
from hybridscope.table import Column, Table

STEP_COLUMNS = (
    Column("rank", "int"),
    Column("step", "int"),
    Column("phase", "str"),
    Column("ts_ns", "ns", "step start on the run's clock", "start"),
    Column("latency_ns", "ns", "end - start of the step window", "latency"),
    Column("gpu_ns", "ns", "sum of the step's kernel durations", "GPU time"),
    Column("n_kernels", "int", "kernels launched in the step", "kernels"),
    Column("top_layer_type", "str", "layer type with the most GPU time in the step", "top"),
    Column("top_share_pct", "pct", "its share of the step's GPU time", "top share"),
    Column("n_tokens", "int", "tokens processed, when recorded", "tokens"),
)


def steps(con, run_id: int) -> Table:
    """One row per (rank, step), in time order per rank."""
    windows = timeline.step_windows(con, run_id)
    stack = _stack(con, run_id)
    rows = []
    for w in windows:
        per_type = stack.get((w["rank"], w["step"]), {})
        top = max(per_type, key=per_type.get) if per_type else None
        share = 100.0 * per_type[top] / w["gpu_ns"] if top and w["gpu_ns"] else None
        rows.append((w["rank"], w["step"], w["phase"] or "unknown", w["ts_ns"], w["end_ns"] - w["ts_ns"],
                     w["gpu_ns"], w["n_kernels"], top, share, w["n_tokens"]))
    source = "recorded" if windows and windows[0]["recorded"] else "derived from step ranges"
    return Table("steps", STEP_COLUMNS, rows, {"title": "Steps", "run_id": run_id, "steps_from": source})


def step_stack(con, run_id: int) -> Table:
    """Per (rank, step, layer type): summed kernel time. Layer types in vocabulary order."""
    stack = _stack(con, run_id)
    rows = [(rank, step, lt, ns) for (rank, step), per in sorted(stack.items())
            for lt, ns in sorted(per.items(), key=lambda kv: order_key(kv[0]))]
    cols = (Column("rank", "int"), Column("step", "int"), Column("layer_type", "str", "", "layer type"),
            Column("gpu_ns", "ns", "summed kernel time of the layer type in the step", "GPU time"))
    return Table("step_stack", cols, rows, {"title": "GPU time per step by layer type", "run_id": run_id})


def step_stack_bins(con, run_id: int, *, max_bars: int = 300) -> Table:
    """The step stack of the first rank for plotting: steps in time order, consecutive steps
    averaged in at most `max_bars` equal-count bins (bin k holds steps [k*n/B, (k+1)*n/B)); with
    fewer steps than `max_bars` each bin is one step. Per (bin, layer type) the mean GPU time."""
    windows = [w for w in timeline.step_windows(con, run_id) if w["sampled"]]
    cols = (Column("bin", "int"), Column("first_step", "int", "", "from"), Column("last_step", "int", "", "to"),
            Column("layer_type", "str", "", "layer type"),
            Column("gpu_ns", "ns", "mean GPU time per step of the bin", "GPU time"))
    if not windows:
        return Table("step_stack_bins", cols, (), {"title": "GPU time per step", "run_id": run_id})
    rank = min(w["rank"] for w in windows)
    order = [w["step"] for w in sorted((w for w in windows if w["rank"] == rank), key=lambda w: w["ts_ns"])]
    stack = _stack(con, run_id)
    n_bins = min(max_bars, len(order))
    edges = (np.arange(n_bins + 1) * len(order)) // n_bins
    rows = []
    for b in range(n_bins):
        members = order[edges[b]:edges[b + 1]]
        totals: dict[str, int] = {}
        for step in members:
            for lt, ns in stack.get((rank, step), {}).items():
                totals[lt] = totals.get(lt, 0) + ns
        rows += [(b, members[0], members[-1], lt, totals[lt] / len(members))
                 for lt in sorted(totals, key=order_key)]
    return Table("step_stack_bins", cols, rows, {"title": "GPU time per step", "run_id": run_id, "rank": rank,
                                                 "n_steps": len(order), "n_bins": n_bins})


def steady_windows(con, run_id: int, warmup: int | None = None) -> tuple[list[dict], int]:
    """The step windows after the run's warm-up (analyze/warmup.py: its steps, and the steps that
    captured a CUDA graph), and how many were left out."""
    from hybridscope.analyze import warmup as warmup_mod

    ws = timeline.step_windows(con, run_id)
    wu = warmup_mod.detect(con, run_id, warmup=warmup)
    graphs = set(wu.graph_steps)
    kept = [w for w in ws if w["ts_ns"] >= wu.cutoffs.get(w["rank"], w["ts_ns"]) and (w["rank"], w["step"]) not in graphs]
    return kept, len(ws) - len(kept)


def _warm_note(n: int) -> list[str]:
    return [f"{n} warm-up step(s) left out (--warmup 0 keeps them)"] if n else []


def phases(con, run_id: int, *, warmup: int | None = None) -> Table:
    """Per phase: steps, latency p50/p99/max, mean GPU time per step; warm-up steps left out."""
    by_phase: dict[str, list[tuple[int, int | None]]] = {}
    kept, n_warm = steady_windows(con, run_id, warmup)
    for w in kept:  # every step has a latency; only sampled ones a GPU time
        by_phase.setdefault(w["phase"] or "unknown", []).append(
            (w["end_ns"] - w["ts_ns"], w["gpu_ns"] if w["sampled"] else None))
    rows = []
    for phase in sorted(by_phase, key=_phase_order):
        lat = [x for x, _ in by_phase[phase]]
        gpu = [g for _, g in by_phase[phase] if g is not None]
        rows.append((phase, len(lat), quantile(lat, 0.5), quantile(lat, 0.99), max(lat),
                     float(np.mean(gpu)) if gpu else None))
    cols = (Column("phase", "str"), Column("n_steps", "int", "", "steps"),
            Column("p50_ns", "ns", "step latency p50", "p50"), Column("p99_ns", "ns", "step latency p99", "p99"),
            Column("max_ns", "ns", "slowest step", "max"),
            Column("gpu_mean_ns", "ns", "mean GPU time per step", "GPU/step"))
    return Table("phases", cols, rows, {"title": "Prefill vs decode", "run_id": run_id, "warmup_steps": n_warm,
                                        "notes": _warm_note(n_warm)})


def slow_steps(con, run_id: int, *, quantile: float = 0.99, warmup: int | None = None) -> Table:
    """Which layer type dominates (and which grew in) the slowest steps (module doc). Only steps
    with a breakdown count (a capture's sampled steps), warm-up steps left out."""
    kept, n_warm = steady_windows(con, run_id, warmup)
    windows = [w for w in kept if w["sampled"]]
    cols = (Column("layer_type", "str", "", "layer type"),
            Column("slow_mean_ns", "ns", "mean time per slow step", "slow steps"),
            Column("typical_mean_ns", "ns", "mean time per other step", "other steps"),
            Column("growth_ns", "ns", "slow - typical", "growth"),
            Column("slow_share_pct", "pct", "share of the slow steps' GPU time", "slow share"),
            Column("typical_share_pct", "pct", "share of the other steps' GPU time", "other share"))
    meta = {"title": f"Slowest {100 * (1 - quantile):g}% of steps", "run_id": run_id, "quantile": quantile,
            "warmup_steps": n_warm}
    if not windows:
        return Table("slow_steps", cols, (), {**meta, "n_slow": 0, "notes": ["no steps in this run"]})
    lat = np.array([w["end_ns"] - w["ts_ns"] for w in windows], dtype=np.float64)
    threshold = quantile_cont(np.sort(lat), quantile)
    slow = lat >= min(threshold, lat.max())
    keys = [(w["rank"], w["step"]) for w in windows]
    stack = _stack(con, run_id)
    types = sorted({lt for per in stack.values() for lt in per}, key=order_key)
    mat = np.array([[stack.get(k, {}).get(lt, 0) for lt in types] for k in keys], dtype=np.float64)
    mat = mat.reshape(len(keys), len(types))
    slow_tot, typ_tot = mat[slow].sum(axis=0), mat[~slow].sum(axis=0)
    n_slow, n_typ = int(slow.sum()), int((~slow).sum())
    rows = []
    for j, lt in enumerate(types):
        if not slow_tot[j] and not typ_tot[j]:  # a type timed only in the left-out steps
            continue
        s_mean = slow_tot[j] / n_slow
        t_mean = typ_tot[j] / n_typ if n_typ else None
        rows.append((lt, s_mean, t_mean, s_mean - t_mean if t_mean is not None else None,
                     _share(slow_tot[j], slow_tot.sum()), _share(typ_tot[j], typ_tot.sum()) if n_typ else None))
    rows.sort(key=lambda r: -r[1])
    grew = max((r for r in rows if r[3] is not None), key=lambda r: r[3], default=None)
    meta.update(n_slow=n_slow, n_steps=len(keys), threshold_ns=threshold,
                slow_steps=[[int(k[0]), int(k[1])] for k, s in zip(keys, slow) if s],
                dominant=rows[0][0] if rows else None, grew_most=grew[0] if grew else None)
    return Table("slow_steps", cols, rows, meta)


@timeline.once
def _stack(con, run_id: int) -> dict[tuple[int, int], dict[str, int]]:
    """{(rank, step): {layer_type: summed kernel ns}} for kernels with a known step."""
    out: dict[tuple[int, int], dict[str, int]] = {}
    for rank, step, lt, ns in timeline.step_sums(con, run_id):
        out.setdefault((rank, step), {})[lt] = ns
    return out


def _share(part: float, whole: float) -> float | None:
    return 100.0 * float(part) / float(whole) if whole else None


def _phase_order(phase: str) -> int:
    return {"prefill": 0, "mixed": 1, "decode": 2}.get(phase, 3)
