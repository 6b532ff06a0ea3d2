"""Baselines, regression checks and A/B diffs, per layer type (or layer, or kernel).

Definitions (docs/analyses.md, "compare"):
- Samples: the durations of a run's GPU events (decompose's GPU events; for a `layers`-mode
  capture with no kernel events, its per-layer timings), grouped by layer type, by
  (layer index, layer type) as `L<index>:<type>`, or by kernel name.
- A baseline (store/baselines.py) keeps, per group, up to 200k durations plus n and total time,
  so that the distribution itself, not only its summary, is tested against.
- The test: per group and statistic (p50, p99), the ratio new/base of the continuous quantile,
  with a bootstrap percentile confidence interval (stats.py: exact order-statistic bootstrap,
  B = 2000 replicates per side). The interval's level is 1 - alpha / m, Bonferroni-corrected over
  the m (group, statistic) pairs tested, alpha = 0.01 by default. A pair REGRESSED when the point
  ratio exceeds 1 + threshold AND the interval lies wholly above 1: slower by more than the
  allowed margin, and not by chance. IMPROVED symmetrically (ratio < 1 - threshold, interval
  below 1). Why not a rank test: p99 regressions are what users guard, and a rank test on all
  samples is dominated by the bulk; a bootstrap of the quantile tests the tail itself.
- Throughput: tokens per second of the window when the steps table has token counts, else
  steps per second, else none.
"""

from __future__ import annotations

import numpy as np

from hybridscope.analyze.decompose import MEASURES, measure_of
from hybridscope.analyze.stats import quantile_cont, ratio_ci
from hybridscope.analyze.timeline import rank_windows
from hybridscope.attribute.vocab import ORDER
from hybridscope.errors import BadInput, UsageError
from hybridscope.store.baselines import Samples
from hybridscope.table import Column, Table

BOOTSTRAP = 2000
STATS = {"p50": 0.5, "p99": 0.99}
GROUPINGS = ("layer_type", "layer", "kernel")

_GROUP_SQL = {  # our constants, never user input
    "layer_type": "coalesce(layer_type, 'unattributed')",
    "layer": "'L' || coalesce(CAST(layer_index AS VARCHAR), '?') || ':' || coalesce(layer_type, 'unattributed')",
    "kernel": "name",
}


def run_samples(con, run_id: int, *, by: str = "layer_type", rank: int | None = None) -> Samples:
    """The samples of a run, grouped `by` (see the module doc)."""
    if by not in _GROUP_SQL:
        raise UsageError(f"--by must be one of {', '.join(GROUPINGS)}, not {by!r}")
    predicate = MEASURES[measure_of(con, run_id)]
    params: dict = {"run": run_id}
    rank_sql = ""
    if rank is not None:
        rank_sql, params["rank"] = "AND rank = $rank", rank
    rows = con.execute(
        f"""SELECT {_GROUP_SQL[by]} AS g, list(duration_ns ORDER BY duration_ns) AS d
            FROM events WHERE run_id = $run AND {predicate} {rank_sql}
            GROUP BY g""",
        params,
    ).fetchall()
    groups = {g: np.asarray(d, dtype=np.int64) for g, d in rows}
    thr, unit = throughput(con, run_id, rank=rank)
    return Samples(groups, {g: int(d.sum()) for g, d in groups.items()},
                   {g: len(d) for g, d in groups.items()}, thr, unit)


def throughput(con, run_id: int, *, rank: int | None = None) -> tuple[float | None, str | None]:
    """(value, unit): tokens/s over the window when known, else steps/s, else (None, None)."""
    windows = rank_windows(con, run_id)
    chosen = [rank] if rank is not None else sorted(windows)
    if not chosen or any(r not in windows for r in chosen):
        return None, None
    seconds = max(windows[r][1] for r in chosen) - min(windows[r][0] for r in chosen)
    if seconds <= 0:
        return None, None
    seconds /= 1e9
    where, params = "run_id = ?", [run_id]
    if rank is not None:
        where, params = where + " AND rank = ?", params + [rank]
    else:  # one rank speaks for the run: every rank sees the same steps and tokens
        where, params = where + " AND rank = ?", params + [chosen[0]]
    n_steps, tokens = con.execute(f"SELECT count(*), sum(n_tokens) FROM steps WHERE {where}", params).fetchall()[0]
    if tokens:
        return float(tokens) / seconds, "tokens/s"
    if n_steps:
        return float(n_steps) / seconds, "steps/s"
    return None, None


CHECK_COLUMNS = (
    Column("group", "str", "layer type / layer / kernel"),
    Column("stat", "str", "p50 or p99"),
    Column("n_base", "int", "baseline samples"),
    Column("n_new", "int", "samples of the run checked"),
    Column("base_ns", "ns", "baseline quantile", "baseline"),
    Column("new_ns", "ns", "run's quantile", "run"),
    Column("change_pct", "pct", "100 * (new / base - 1)", "change"),
    Column("ci_lo_pct", "pct", "confidence interval of the change, low end", "CI low"),
    Column("ci_hi_pct", "pct", "confidence interval of the change, high end", "CI high"),
    Column("limit_pct", "pct", "allowed regression", "limit"),
    Column("status", "str", "ok | regressed | improved | new | missing | too few"),
)


def compare_samples(
    base: Samples,
    new: Samples,
    *,
    limits: dict[str, float],
    alpha: float = 0.01,
    seed: int = 0,
    min_n: int = 20,
) -> list[tuple]:
    """Rows of CHECK_COLUMNS for every group of either side and every statistic in `limits`.

    `limits` maps 'p50'/'p99' to the allowed relative regression (0.10 = 10 %).
    """
    unknown = set(limits) - set(STATS)
    if unknown:
        raise UsageError(f"unknown statistic(s) {sorted(unknown)}; known: {sorted(STATS)}")
    names = sorted(set(base.groups) | set(new.groups), key=_group_order)
    tested = [(g, s) for g in names for s in limits if g in base.groups and g in new.groups]
    level = alpha / max(1, len(tested))
    rng = np.random.default_rng(seed)
    rows = []
    for g in names:
        b, n = base.groups.get(g), new.groups.get(g)
        for stat, limit in limits.items():
            rows.append(_compare_one(g, stat, b, n, limit, level, rng, min_n))
    return rows


def _compare_one(g, stat, b, n, limit, level, rng, min_n) -> tuple:
    q = STATS[stat]
    lim = 100.0 * limit
    if b is None or n is None:
        present = n if b is None else b
        val = quantile_cont(present, q) if len(present) else None
        status = "new" if b is None else "missing"
        return (g, stat, 0 if b is None else len(b), 0 if n is None else len(n),
                None if b is None else val, None if n is None else val, None, None, None, lim, status)
    base_q, new_q = quantile_cont(b, q), quantile_cont(n, q)
    if min(len(b), len(n)) < min_n:
        return (g, stat, len(b), len(n), base_q, new_q, _pct(new_q, base_q), None, None, lim, "too few")
    point, lo, hi = ratio_ci(b, n, q, alpha=level, b=BOOTSTRAP, rng=rng)
    if np.isnan(point):
        return (g, stat, len(b), len(n), base_q, new_q, None, None, None, lim, "ok")
    status = "ok"
    if point > 1 + limit and lo > 1:
        status = "regressed"
    elif point < 1 - limit and hi < 1:
        status = "improved"
    return (g, stat, len(b), len(n), base_q, new_q, 100 * (point - 1), 100 * (lo - 1), 100 * (hi - 1), lim, status)


def _pct(new: float, base: float) -> float | None:
    return 100.0 * (new / base - 1) if base else None


_TYPE_RANK = {t: i for i, t in enumerate(ORDER)}


def _group_order(g: str) -> tuple:
    return (_TYPE_RANK.get(g, len(ORDER)), g)


def check_table(base: Samples, new: Samples, *, limits: dict[str, float], meta: dict,
                alpha: float = 0.01, seed: int = 0) -> Table:
    """The `check` result: one row per (group, statistic); meta['regressed'] counts failures."""
    rows = compare_samples(base, new, limits=limits, alpha=alpha, seed=seed)
    regressed = sum(1 for r in rows if r[-1] == "regressed")
    notes = [f"{regressed} regression(s) beyond the allowed margin" if regressed else "no regression"]
    return Table("check", CHECK_COLUMNS, rows, {**meta, "regressed": regressed, "notes": notes,
                                                "alpha": alpha, "bootstrap": BOOTSTRAP})


def require_samples(s: Samples, what: str) -> Samples:
    if not s.groups:
        raise BadInput(f"{what} has no GPU events or layer timings to compare")
    return s


def margin(text: str, flag: str) -> float:
    """An allowed regression as a fraction: '10%' or '0.1' -> 0.1; UsageError naming `flag` otherwise."""
    raw = text.strip().rstrip("%")
    try:
        value = float(raw) / (100.0 if text.strip().endswith("%") else 1.0)
    except ValueError:
        raise UsageError(f"{flag} takes a percentage like 10% or a fraction like 0.1, not {text!r}") from None
    if not 0 <= value < 10:
        raise UsageError(f"{flag} must be between 0% and 1000%, not {text!r}")
    return value


def baseline_of(con, run_id: int, *, rank: int | None = None) -> tuple[dict[str, Samples], str | None]:
    """What a baseline keeps of run `run_id`: its samples in every grouping, and the run's label
    (for `store.baselines.save`, which may write them to another store)."""
    per = {by: run_samples(con, run_id, by=by, rank=rank) for by in GROUPINGS}
    rows = con.execute("SELECT label FROM runs WHERE run_id = ?", [run_id]).fetchall()
    return per, (rows[0][0] if rows else None)


def check_run(con, run_id: int, base: Samples, *, limits: dict[str, float], meta: dict,
              by: str = "layer_type", rank: int | None = None) -> Table:
    """The `check` table of run `run_id` against the baseline samples `base` (`baselines.load`)."""
    new = require_samples(run_samples(con, run_id, by=by, rank=rank), f"run {run_id}")
    return check_table(base, new, limits=limits, meta=meta)



DIFF_COLUMNS = (
    Column("group", "str", "layer type / layer / kernel"),
    Column("n_a", "int", "events in run A"),
    Column("n_b", "int", "events in run B"),
    Column("p50_a_ns", "ns", "p50 of run A", "p50 A"),
    Column("p50_b_ns", "ns", "p50 of run B", "p50 B"),
    Column("p50_change_pct", "pct", "100 * (p50 B / p50 A - 1)", "Δp50"),
    Column("p99_a_ns", "ns", "p99 of run A", "p99 A"),
    Column("p99_b_ns", "ns", "p99 of run B", "p99 B"),
    Column("p99_change_pct", "pct", "100 * (p99 B / p99 A - 1)", "Δp99"),
    Column("p99_ci_lo_pct", "pct", "confidence interval of Δp99, low end", "Δp99 CI low"),
    Column("p99_ci_hi_pct", "pct", "confidence interval of Δp99, high end", "Δp99 CI high"),
    Column("share_a_pct", "pct", "share of run A's GPU time", "share A"),
    Column("share_b_pct", "pct", "share of run B's GPU time", "share B"),
    Column("share_change_pp", "pct", "share B - share A, in percentage points", "Δshare (pp)"),
    Column("significant", "str", "which changes are significant (CI excludes 0): p50, p99"),
)


def diff_table(a: Samples, b: Samples, *, meta: dict, alpha: float = 0.05, seed: int = 0) -> Table:
    """Run A vs run B per group, with bootstrap CIs (level 1 - alpha, Bonferroni over groups).

    meta['verdict'] is the one line a user wants: the p99 change of moe_comm (or, without MoE
    communication, of the group with the largest share), its CI, and the throughput change.
    """
    names = sorted(set(a.groups) | set(b.groups), key=_group_order)
    both = [g for g in names if g in a.groups and g in b.groups]
    level = alpha / max(1, len(both))
    rng = np.random.default_rng(seed)
    tot_a, tot_b = sum(a.totals.values()) or 1, sum(b.totals.values()) or 1
    rows = []
    for g in names:
        da, db_ = a.groups.get(g), b.groups.get(g)
        share_a = 100.0 * a.totals.get(g, 0) / tot_a
        share_b = 100.0 * b.totals.get(g, 0) / tot_b
        stats, sig = [], []
        for stat in ("p50", "p99"):
            qa = quantile_cont(da, STATS[stat]) if da is not None and len(da) else None
            qb = quantile_cont(db_, STATS[stat]) if db_ is not None and len(db_) else None
            lo = hi = None
            change = _pct(qb, qa) if qa is not None and qb is not None else None
            if qa and qb is not None:
                _point, rlo, rhi = ratio_ci(da, db_, STATS[stat], alpha=level, b=BOOTSTRAP, rng=rng)
                lo, hi = 100 * (rlo - 1), 100 * (rhi - 1)
                if lo > 0 or hi < 0:
                    sig.append(stat)
            stats.append((qa, qb, change, lo, hi))
        (p50a, p50b, c50, _, _), (p99a, p99b, c99, lo99, hi99) = stats
        rows.append((g, a.counts.get(g, 0), b.counts.get(g, 0), p50a, p50b, c50, p99a, p99b, c99, lo99, hi99,
                     share_a, share_b, share_b - share_a, "+".join(sig)))
    table = Table("diff", DIFF_COLUMNS, rows, meta)
    thr = _pct(b.throughput, a.throughput) if a.throughput and b.throughput is not None and \
        a.throughput_unit == b.throughput_unit else None
    verdict = _verdict(table, thr, a.throughput_unit)
    return table.with_rows(table.rows, verdict=verdict, throughput_a=a.throughput, throughput_b=b.throughput,
                           throughput_unit=a.throughput_unit, throughput_change_pct=thr, alpha=alpha,
                           notes=[verdict])


def _verdict(table: Table, thr_change: float | None, unit: str | None) -> str:
    recs = [r for r in table.to_records() if r["p99_change_pct"] is not None]
    if not recs:
        return "no group is present in both runs: nothing to compare"
    pick = next((r for r in recs if r["group"] == "moe_comm"), None) or max(recs, key=lambda r: r["share_a_pct"])
    sig = "p99" in pick["significant"].split("+")
    ci = f"CI {pick['p99_ci_lo_pct']:+.1f}%…{pick['p99_ci_hi_pct']:+.1f}%" if pick["p99_ci_lo_pct"] is not None else "no CI"
    line = f"p99 of {pick['group']} {pick['p99_change_pct']:+.1f}% ({ci}{'' if sig else ', not significant'})"
    line += f", throughput Δ {thr_change:+.1f}% ({unit})" if thr_change is not None else ", throughput not known"
    return line
