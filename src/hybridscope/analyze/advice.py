"""Ranked recommendations, each with the numbers behind it. No advice without data behind it.

Each rule reads the result tables of the other analyses and returns one `Advice` or None; a rule
fires only when its evidence is present and passes its threshold (docs/analyses.md, "advice"):

- routing_penalty: steps with routing and moe_comm time, split in two at the imbalance above which
  moe_comm rises (`best_split`: the cut with the largest Mann-Whitney z, at least `min_group` steps
  per side); t = the lower group's largest imbalance. Fires when p50(moe_comm | upper) /
  p50(moe_comm | lower) >= `jump` and Spearman(imbalance, moe_comm) >= `min_rho`: medians, because
  the lower group's p99 is its one or two noisiest steps (a descheduled host, a late peer), and a
  rule that moves with them comes and goes between two runs of one workload. The evidence adds both groups' p99 and how many
  of the run's slowest 10% of steps (by moe_comm) the upper group holds. At stake: the moe_comm time
  of the upper group's steps beyond the p50 of the lower group's.
- stream_pairing: colliding moe_comm collectives (conflicts). Fires when any pair exists; names the
  pair of modules / streams with the most time at stake.
- capacity_factor: experts whose capacity_factor_p99 >= `cf_threshold` AND whose load moves their
  layer's tail (experts.expert_tail: mean capacity factor over the layer's slowest 10% of steps
  >= 1.1x over its other steps): recommends that factor (rounded up to 0.25) per such expert. At
  stake: per layer with such an expert, its time above its median step over its tail steps.
- cuda_graphs: phases that launch_bound judged launch-bound, decode (or unknown phase) only.
  At stake: the idle time before the phase's kernels, on the rank where it is largest.
- comm_overlap: exposed communication >= `exposed_pct` % of a rank's window. At stake: exposed time.
- host_stall: the gap site (layer type before -> after) with the most idle time, when its idle
  time per rank holds >= `stall_pct` % of the wall-clock window and its mean gap is >= 2x the mean
  gap of all sites (a stall that stands out; idle spread over every gap is launch-bound work, the
  cuda_graphs rule's case). At stake: that idle time per rank.
Every rule states its expected gain, the time at stake (an upper bound: what the change could win
back), and fires only when that gain is material: >= `min_gain_pct` % (1 %) of the wall-clock
window. MoE rules (routing_penalty, stream_pairing, capacity_factor) need MoE layers in the run
(a moe_* layer type in the decomposition, or routing counts); comm_overlap speaks of MoE
communication only then, of collectives otherwise. Lists are capped to the `max_listed` (5) with
the most at stake, "and N more". Advice is ranked by time at stake, largest first.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from hybridscope.table import Column, Table
from hybridscope.units import format_ns

MOE_TYPES = ("moe_router", "moe_experts", "moe_comm")


@dataclass(frozen=True)
class Advice:
    rule: str
    recommendation: str
    evidence: str
    at_stake_ns: float | None
    numbers: dict = field(default_factory=dict)


def advice(tables: dict[str, Table], *, wall_ns: int | None = None, n_ranks: int = 1, jump: float = 1.5, min_rho: float = 0.3,
           min_group: int = 3, cf_threshold: float = 1.5, exposed_pct: float = 5.0,
           stall_pct: float = 5.0, min_gain_pct: float = 1.0, max_listed: int = 5) -> Table:
    """Run every rule on `tables` (keyed by Table.name: decompose_layer_type, expert_steps,
    conflict_pairs, expert_tail, launch_bound, overlap, gap_sites); missing tables skip their rules.
    `wall_ns` is the run's wall-clock window (the longest rank window); `n_ranks` turns the pooled
    idle time of gap_sites into time per rank. Only advice whose gain is >= `min_gain_pct` % of
    `wall_ns` is kept (none without a window: materiality cannot be judged)."""
    moe = has_moe(tables)
    found = [
        routing_penalty(tables.get("expert_steps"), jump=jump, min_rho=min_rho, min_group=min_group) if moe else None,
        stream_pairing(tables.get("conflict_pairs")) if moe else None,
        capacity_factor(tables.get("expert_tail"), threshold=cf_threshold, max_listed=max_listed) if moe else None,
        cuda_graphs(tables.get("launch_bound")),
        comm_overlap(tables.get("overlap"), exposed_pct=exposed_pct, moe=moe),
        host_stall(tables.get("gap_sites"), wall_ns, n_ranks=n_ranks, stall_pct=stall_pct),
    ]
    fired = [a for a in found if a is not None]
    kept = [a for a in fired if a.at_stake_ns is not None and wall_ns and 100.0 * a.at_stake_ns / wall_ns >= min_gain_pct]
    kept.sort(key=lambda a: -a.at_stake_ns)
    rows = [(i + 1, a.rule, a.recommendation, a.evidence, a.at_stake_ns, 100.0 * a.at_stake_ns / wall_ns)
            for i, a in enumerate(kept)]
    cols = (Column("rank", "int", "1 = most time at stake", "#"), Column("rule", "str"),
            Column("recommendation", "str", "what to change"),
            Column("evidence", "str", "the numbers behind it"),
            Column("at_stake_ns", "ns", "expected gain: time the change could win back (upper bound)", "gain"),
            Column("at_stake_pct", "pct", "expected gain / wall time", "% wall"))
    below = [a.rule for a in fired if a not in kept]
    notes = [f"not material (gain < {min_gain_pct:g}% of wall time): {', '.join(below)}"] if below else []
    return Table("advice", cols, rows, {"title": "What to change", "numbers": {a.rule: a.numbers for a in kept},
                                        "moe": moe, "min_gain_pct": min_gain_pct, "not_material": below,
                                        "notes": notes})


def has_moe(tables: dict[str, Table]) -> bool:
    """Whether the run has MoE layers: a moe_* layer type in the decomposition, or routing counts."""
    dec = tables.get("decompose_layer_type")
    if dec is not None and any(v in MOE_TYPES for v in dec.column(dec.columns[0].name)):
        return True
    return any(tables.get(name) is not None and len(tables[name]) for name in ("expert_load", "expert_tail"))


def routing_penalty(t: Table | None, *, jump: float, min_rho: float, min_group: int) -> Advice | None:
    if t is None:
        return None
    pairs = [(x, y) for x, y in zip(t.column("imbalance"), t.column("moe_comm_ns")) if y is not None]
    if len(pairs) < 2 * min_group:
        return None
    from hybridscope.analyze.experts import spearman
    from hybridscope.analyze.stats import quantile

    x = np.array([p[0] for p in pairs], dtype=np.float64)
    y = np.array([p[1] for p in pairs], dtype=np.float64)
    rho = spearman(x, y)
    cut = best_split(x, y, min_group)
    if cut is None or rho is None or rho < min_rho:
        return None
    lo_x, hi_x = cut
    above, below = y[x >= hi_x], y[x <= lo_x]
    p50_a, p50_b = quantile(above, 0.5), quantile(below, 0.5)
    ratio = p50_a / p50_b if p50_b > 0 else math.inf
    if ratio < jump:
        return None
    p99_a, p99_b = quantile(above, 0.99), quantile(below, 0.99)
    slow = y >= quantile(y, 0.9)  # the run's slowest 10% of steps by moe_comm
    n_slow, slow_above = int(slow.sum()), int((slow & (x >= hi_x)).sum())
    stake = float(np.clip(above - p50_b, 0, None).sum())
    return Advice(
        "routing_penalty",
        f"Penalize routing for batches whose expert imbalance (max/mean) exceeds {lo_x:.2f}: "
        "re-route or defer their overflow tokens before the all-to-all.",
        f"{above.size} of {x.size} steps at imbalance ≥ {hi_x:.2f}: moe_comm p50 {format_ns(p50_a)} vs "
        f"{format_ns(p50_b)} at ≤ {lo_x:.2f} ({ratio:.1f}×), p99 {format_ns(p99_a)} vs {format_ns(p99_b)}; "
        f"they hold {slow_above} of the {n_slow} slowest steps; Spearman ρ(imbalance, moe_comm) = {rho:.2f}",
        stake,
        {"threshold": lo_x, "next_level": hi_x, "jump": ratio, "p50_above_ns": p50_a, "p50_below_ns": p50_b,
         "p99_above_ns": p99_a, "p99_below_ns": p99_b, "slowest_above": slow_above, "slowest": n_slow,
         "rho": rho, "n_above": int(above.size), "n_below": int(below.size)})


def best_split(x: np.ndarray, y: np.ndarray, min_group: int) -> tuple[float, float] | None:
    """The imbalance level above which moe_comm rises: of the splits of the steps sorted by x into a
    lower and an upper group (each >= min_group steps, cut between distinct x values), the one whose
    upper group's y stands highest above the lower group's by the Mann-Whitney statistic,
    z = (U - n_lo n_hi / 2) / sqrt(n_lo n_hi (n + 1) / 12), U counting (upper, lower) pairs where the
    upper step is slower (ties half). On ranks, so one extreme step counts as one step and cannot
    pull the cut; z weighs the group sizes, so a few slow steps do not win over a whole regime.
    O(n log n): every cut's rank sum from one cumulative sum. Returns (largest x of the lower group,
    smallest x of the upper group)."""
    from hybridscope.analyze.experts import rankdata

    order = np.argsort(x, kind="stable")
    xs, r = x[order], rankdata(y[order])
    n = xs.size
    i = np.arange(min_group, n - min_group + 1)  # lower group = first i steps
    i = i[xs[i - 1] < xs[i]] if i.size else i
    if i.size == 0:
        return None
    c = np.cumsum(r)
    n_lo, n_hi = i.astype(np.float64), (n - i).astype(np.float64)
    u = (c[-1] - c[i - 1]) - n_hi * (n_hi + 1) / 2  # upper group's rank sum -> U
    z = (u - n_lo * n_hi / 2) / np.sqrt(n_lo * n_hi * (n + 1) / 12)
    k = int(i[int(np.argmax(z))])
    return float(xs[k - 1]), float(xs[k])


def stream_pairing(t: Table | None) -> Advice | None:
    if t is None or not len(t):
        return None
    top = t.to_records()[0]  # conflict_pairs is sorted by time at stake
    n_total = sum(t.column("n"))
    mods = f"{top['module_a'] or '?'} and {top['module_b'] or '?'}"
    if top["kind"] == "overlap":
        rec = (f"Give the all-to-alls of {mods} their own stream / communicator pair, or order them: "
               f"they are in flight together on one {top['scope']}.")
        ev = f"{top['n']} overlapping pairs on streams {top['stream_a']}/{top['stream_b']}, " \
             f"{format_ns(top['total_ns'])} in flight together"
    else:
        rec = f"Run the collectives of {mods} on paired streams: they queue back to back on stream {top['stream_a']}."
        ev = f"{top['n']} back-to-back pairs, up to {format_ns(top['total_ns'])} could overlap"
    if n_total > top["n"]:
        ev += f"; {n_total} conflicting pairs in all"
    return Advice("stream_pairing", rec, ev, float(top["total_ns"]),
                  {"kind": top["kind"], "scope": top["scope"], "n": top["n"], "n_total": n_total,
                   "stream_a": top["stream_a"], "stream_b": top["stream_b"], "total_ns": top["total_ns"]})


def capacity_factor(t: Table | None, *, threshold: float, max_listed: int = 5) -> Advice | None:
    """From experts.expert_tail: experts at >= `threshold` x an even share at p99 whose load moves
    their layer's tail; at stake, the tail time of each such layer once."""
    if t is None:
        return None
    heavy = [r for r in t.to_records() if r["moves_tail"] == "yes" and (r["capacity_factor_p99"] or 0) >= threshold]
    if not heavy:
        return None
    stake_of = {r["layer_index"]: r["layer_gain_ns"] for r in heavy}
    heavy.sort(key=lambda r: (-r["layer_gain_ns"], -(r["load_ratio"] or 0)))
    shown = heavy[:max_listed]
    cf = {f"{r['layer_index']}/{r['expert']}": math.ceil(r["capacity_factor_p99"] * 4) / 4 for r in heavy}
    listing = ", ".join(f"layer {r['layer_index']} expert {r['expert']}: "
                        f"{math.ceil(r['capacity_factor_p99'] * 4) / 4:g}" for r in shown)
    more = f" and {len(heavy) - len(shown)} more" if len(heavy) > len(shown) else ""
    top = shown[0]
    return Advice(
        "capacity_factor",
        f"Raise the capacity factor of the experts whose load drives their layer's slowest steps: {listing}{more}.",
        f"{len(heavy)} experts needed ≥ {threshold:g}× an even share at p99 of steps and carried more of it in "
        f"their layer's slowest 10% of steps; e.g. layer {top['layer_index']} expert {top['expert']}: "
        f"{top['tail_load']:.2f}× an even share there vs {top['other_load']:.2f}× otherwise",
        float(sum(stake_of.values())), {"capacity_factors": cf, "layers": sorted(stake_of)})


def cuda_graphs(t: Table | None) -> Advice | None:
    if t is None:
        return None
    bound = [r for r in t.to_records() if r["launch_bound"] == "yes" and r["phase"] in ("decode", "unknown")]
    if not bound:
        return None
    r = max(bound, key=lambda r: r["idle_ns"])
    idle = r["idle_ns"]  # per rank (ranks run side by side: their idle times do not add up in wall time)
    phase = "decode" if r["phase"] == "decode" else "the steps (phase unknown)"
    return Advice(
        "cuda_graphs",
        f"Capture {phase} in CUDA graphs: the GPU waits on kernel launches.",
        f"rank {r['rank']}: median kernel {format_ns(r['median_kernel_ns'])}, median gap before a kernel "
        f"{format_ns(r['median_gap_ns'])}, {r['gap_ge_kernel_pct']:.0f}% of kernels wait at least their own "
        f"duration; {format_ns(idle)} idle between launches",
        float(idle), {"ranks": [b["rank"] for b in bound], "idle_ns": idle,
                      "median_kernel_ns": r["median_kernel_ns"], "median_gap_ns": r["median_gap_ns"]})


def comm_overlap(t: Table | None, *, exposed_pct: float, moe: bool = True) -> Advice | None:
    if t is None:
        return None
    hit = [r for r in t.to_records() if (r["exposed_wall_pct"] or 0) >= exposed_pct]
    if not hit:
        return None
    r = max(hit, key=lambda r: r["exposed_ns"])
    rec = ("Overlap MoE communication with compute (e.g. split each batch in two micro-batches so one's "
           "all-to-all runs under the other's experts, or a dedicated comm stream)." if moe else
           "Overlap communication with compute (e.g. bucket gradients / tensors so collectives start while "
           "compute continues, on a dedicated comm stream).")
    return Advice(
        "comm_overlap",
        rec,
        f"rank {r['rank']}: {format_ns(r['exposed_ns'])} of {format_ns(r['comm_ns'])} communication exposed "
        f"({r['exposed_comm_pct']:.0f}% of comm, {r['exposed_wall_pct']:.1f}% of wall time)",
        float(r["exposed_ns"]), {"rank": r["rank"], "exposed_ns": r["exposed_ns"],
                                 "exposed_wall_pct": r["exposed_wall_pct"]})


def host_stall(t: Table | None, wall_ns: int | None, *, stall_pct: float, n_ranks: int = 1,
               stand_out: float = 2.0) -> Advice | None:
    if t is None or not len(t) or not wall_ns:
        return None
    r = t.to_records()[0]  # gap_sites is sorted by idle time, pooled over ranks
    per_rank = r["idle_ns"] / max(n_ranks, 1)
    share = 100.0 * per_rank / wall_ns
    typical = sum(t.column("idle_ns")) / sum(t.column("n_gaps"))
    stands_out = r["idle_ns"] / r["n_gaps"] / typical if typical else 0.0
    if share < stall_pct or stands_out < stand_out:  # idle spread evenly over every gap is no one stall
        return None
    return Advice(
        "host_stall",
        f"Remove the host stall between {r['before']} and {r['after']} kernels (a .item()/.tolist() sync, "
        "a host-side shape computation or an allocation): the GPU idles there.",
        f"{r['n_gaps']} gaps, {format_ns(per_rank)} idle per rank ({share:.1f}% of wall time), "
        f"mean gap {stands_out:.1f}× the mean of all gaps, p50 {format_ns(r['p50_ns'])}, p99 {format_ns(r['p99_ns'])}",
        float(per_rank), {"before": r["before"], "after": r["after"], "idle_ns": r["idle_ns"], "share": share,
                          "stands_out": stands_out})
