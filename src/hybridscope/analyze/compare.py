"""Baselines, regression checks and A/B diffs, per layer type (or layer, or kernel).

Definitions (docs/analyses.md, "compare"):
- Samples: the durations of a run's GPU events (decompose's GPU events; for a `layers`-mode
  capture with no kernel events, its per-layer timings), grouped by layer type, by
  (layer index, layer type) as `L<index>:<type>`, or by kernel name; the run's warm-up left out
  (analyze/warmup.py), each sample tagged with its step.
- A baseline (store/baselines.py) pools one or more runs and keeps, per group, up to 200k
  durations with their step and run, plus n and total time, so that the distribution itself, not
  only its summary, is tested against.
- Like with like (analyze/likeness.py): runs of different measures, devices or models are refused.
- The test, per group and statistic (p50, p99): the exceedance count, how many of the run's
  samples lie above the baseline's quantile, against its distribution if nothing changed
  (beta-binomial: binomial with p = 1 - q, widened by the baseline quantile's uncertainty;
  stats.exceedance_test), one-sided, at level alpha / m (Bonferroni over the m pairs tested,
  alpha = 0.01). For p50 this is a median test. REGRESSED when the count is significantly high,
  the quantile ratio new/base exceeds 1 + limit, and, for a baseline of several runs, the run's
  quantile lies above the run-to-run prediction bound (stats.noise_bound). IMPROVED symmetrically.
  Beside it the effect size, the quantile ratio, with a bootstrap interval that resamples whole
  steps (calls of one step are not independent). Why counts: p99 regressions are what users
  guard; a count above the baseline's p99 is not moved by one 40 ms warm-up call in the baseline,
  which dominates every bootstrap resample of the p99 itself.
- Throughput: tokens per second of the window when the steps table has token counts, else
  steps per second, else none.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from hybridscope.analyze import warmup as warmup_mod
from hybridscope.analyze.decompose import MEASURES, measure_of
from hybridscope.analyze.likeness import identity, require_like
from hybridscope.analyze.stats import exceedance_test, noise_bound, quantile_cont, ratio_ci_blocks
from hybridscope.analyze.timeline import rank_windows
from hybridscope.attribute.vocab import ORDER
from hybridscope.errors import BadInput, UsageError
from hybridscope.store import baselines
from hybridscope.store.baselines import Samples
from hybridscope.table import Column, Table

BOOTSTRAP = 1000
STATS = {"p50": 0.5, "p99": 0.99}
GROUPINGS = ("layer_type", "layer", "kernel")

_GROUP_SQL = {  # our constants, never user input
    "layer_type": "coalesce(layer_type, 'unattributed')",
    "layer": "'L' || coalesce(CAST(layer_index AS VARCHAR), '?') || ':' || coalesce(layer_type, 'unattributed')",
    "kernel": "name",
}


def run_samples(con, run_id: int, *, by: str = "layer_type", rank: int | None = None,
                warmup: int | None = None) -> Samples:
    """The samples of a run, grouped `by` (see the module doc), its warm-up left out
    (analyze/warmup.py: warmup None = the rule, N = the first N steps, 0 = keep everything)."""
    if by not in _GROUP_SQL:
        raise UsageError(f"--by must be one of {', '.join(GROUPINGS)}, not {by!r}")
    measure = measure_of(con, run_id)
    predicate = MEASURES[measure]
    wu = warmup_mod.detect(con, run_id, warmup=warmup)
    params: dict = {"run": run_id, **wu.params()}
    rank_sql = ""
    if rank is not None:
        rank_sql, params["rank"] = "AND rank = $rank", rank
    rows = con.execute(
        f"""WITH {warmup_mod.events_cte(predicate, first_calls=wu.first_calls)}
            SELECT {_GROUP_SQL[by]} AS g, list(duration_ns ORDER BY duration_ns, cluster) AS d,
                   list(cluster ORDER BY duration_ns, cluster) AS c
            FROM ev WHERE NOT warm {rank_sql}
            GROUP BY g""",
        params,
    ).fetchall()
    groups = {g: np.asarray(d, dtype=np.int64) for g, d, _ in rows}
    clusters = {g: np.asarray(c, dtype=np.int64) for g, _, c in rows}
    thr, unit = throughput(con, run_id, rank=rank)
    info = {"run_ids": [run_id], "measure": measure, **identity(con, run_id),
            "warmup": [{"run_id": run_id, **warmup_mod.left_out(con, run_id, predicate, wu, rank=rank)}]}
    return Samples(groups, {g: int(d.sum()) for g, d in groups.items()},
                   {g: len(d) for g, d in groups.items()}, thr, unit, clusters, {}, 1, info)


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
    Column("n_base", "int", "baseline samples", optional=7),
    Column("n_new", "int", "samples of the run checked", optional=7),
    Column("base_ns", "ns", "baseline quantile", "baseline"),
    Column("new_ns", "ns", "run's quantile", "run"),
    Column("change_pct", "pct", "100 * (new / base - 1): the effect size", "change"),
    Column("ci_lo_pct", "pct", "interval of the change, low end (whole steps resampled)", "CI low", optional=6),
    Column("ci_hi_pct", "pct", "interval of the change, high end", "CI high", optional=6),
    Column("above", "int", "run's samples above the baseline's quantile", "above", optional=5),
    Column("expected", "float", "count expected above it if nothing changed", "expected", optional=5),
    Column("p_value", "float", "P(a count this far from expected | no change), the side tested", "p", optional=1),
    Column("noise_pct", "pct", "largest change the baseline's runs reach by chance (none: one run)", "noise", optional=3),
    Column("limit_pct", "pct", "allowed regression", "limit", optional=2),
    Column("status", "str", "ok | regressed | improved | new | missing | too few"),
)
FAILING = ("regressed", "missing")


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

    `limits` maps 'p50'/'p99' to the allowed relative regression (0.10 = 10 %). The decision per
    (group, statistic), at level alpha / m (Bonferroni over the m pairs tested): REGRESSED when the
    exceedance count is significantly high AND the run's quantile exceeds the baseline's by more
    than the limit AND (multi-run baseline) lies above the run-to-run noise bound at the same level
    alpha / m; IMPROVED symmetrically. The interval of the change (whole steps resampled, 1 - alpha) is
    shown beside it, not tested (docs/analyses.md, "compare").
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
        for stat, limit in limits.items():
            rows.append(_compare_one(base, new, g, stat, limit, level, alpha, rng, min_n))
    return rows


def _compare_one(base: Samples, new: Samples, g, stat, limit, level, alpha, rng, min_n) -> tuple:
    q = STATS[stat]
    lim = 100.0 * limit
    b, n = base.groups.get(g), new.groups.get(g)
    if b is None or n is None:
        present = n if b is None else b
        val = quantile_cont(present, q) if len(present) else None
        status = "new" if b is None else "missing"
        return (g, stat, 0 if b is None else len(b), 0 if n is None else len(n),
                None if b is None else val, None if n is None else val, None, None, None,
                None, None, None, None, lim, status)
    base_q, new_q = quantile_cont(b, q), quantile_cont(n, q)
    if min(len(b), len(n)) < min_n:
        return (g, stat, len(b), len(n), base_q, new_q, _pct(new_q, base_q), None, None,
                None, None, None, None, lim, "too few")
    ex = exceedance_test(b, n, q)
    hi_bound, lo_bound = _noise_bounds(base, g, q, level)
    noise = _pct(hi_bound, base_q) if hi_bound is not None else None
    point, lo, hi = ratio_ci_blocks(b, base.cluster(g), n, new.cluster(g), q, alpha=alpha, b=BOOTSTRAP, rng=rng)
    status, p = "ok", min(ex["p_high"], ex["p_low"])
    if ex["p_high"] < level and new_q > base_q * (1 + limit) and (hi_bound is None or new_q > hi_bound):
        status, p = "regressed", ex["p_high"]
    elif ex["p_low"] < level and new_q < base_q * (1 - limit) and (lo_bound is None or new_q < lo_bound):
        status, p = "improved", ex["p_low"]
    ci = (None, None) if np.isnan(point) else (100 * (lo - 1), 100 * (hi - 1))
    return (g, stat, len(b), len(n), base_q, new_q, _pct(new_q, base_q), *ci,
            ex["k"], ex["expected"], p, noise, lim, status)


def _noise_bounds(base: Samples, g: str, q: float, alpha: float) -> tuple[float | None, float | None]:
    """(upper, lower) run-to-run bounds of group g's q-quantile from the baseline's runs
    (stats.noise_bound; the lower one mirrors it); (None, None) with one run."""
    if base.n_runs < 2:
        return None, None
    x, part = base.groups[g], base.part(g)
    # every run's own quantile, however few its samples: a new run of that size varies as much
    per_run = [quantile_cont(x[part == j], q) for j in range(base.n_runs) if (part == j).any()]
    hi = noise_bound(per_run, alpha)
    lo = noise_bound([1.0 / v for v in per_run if v > 0], alpha) if hi is not None else None
    return hi, (1.0 / lo if lo else None)


def _pct(new: float, base: float) -> float | None:
    return 100.0 * (new / base - 1) if base else None


_TYPE_RANK = {t: i for i, t in enumerate(ORDER)}


def _group_order(g: str) -> tuple:
    return (_TYPE_RANK.get(g, len(ORDER)), g)


def check_table(base: Samples, new: Samples, *, limits: dict[str, float], meta: dict,
                alpha: float = 0.01, seed: int = 0, allow_missing: bool = False,
                notes: list[str] | None = None) -> Table:
    """The `check` result: one row per (group, statistic). meta['regressed'] counts regressions,
    meta['missing'] groups of the baseline absent from the run, meta['failed'] what fails the check
    (regressions, and missing groups unless `allow_missing`)."""
    rows = compare_samples(base, new, limits=limits, alpha=alpha, seed=seed)
    regressed = sum(1 for r in rows if r[-1] == "regressed")
    missing = sorted({r[0] for r in rows if r[-1] == "missing"})
    failed = regressed + (0 if allow_missing else len(missing))
    verdict = [f"{regressed} regression(s) beyond the allowed margin" if regressed else "no regression"]
    if missing:
        verdict.append(f"{len(missing)} group(s) of the baseline missing from the run: {', '.join(missing[:5])}"
                       + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
                       + (" (allowed)" if allow_missing else " (fails the check; --allow-missing lets it pass)"))
    runs_note = (f"run-to-run noise from the baseline's {base.n_runs} runs: a regression must also exceed the "
                 "noise column (wide with few runs or a noisy machine: pool more runs)" if base.n_runs > 1 else
                 "run-to-run noise unknown: a one-run baseline (save it from several runs: "
                 "baseline save --run A --run B --run C)")
    wu = [f"run: {warmup_mod.describe(w)}" for w in (new.info.get("warmup") or [])]
    base_wu = base.info.get("warmup") or []
    if len(base_wu) == 1:
        wu.append(f"baseline: {warmup_mod.describe(base_wu[0])}")
    elif base_wu:
        wu.append(f"baseline: warm-up left out of its {len(base_wu)} runs: "
                  f"{sum(w['events'] for w in base_wu):,} of {sum(w['events_total'] for w in base_wu):,} events, "
                  f"{sum(w['time_ns'] for w in base_wu) / 1e6:,.3f} ms of their time")
    return Table("check", CHECK_COLUMNS, rows, {
        **meta, "regressed": regressed, "missing": missing, "failed": failed, "alpha": alpha,
        "bootstrap": BOOTSTRAP, "baseline_runs": base.n_runs, "warmup": new.info.get("warmup"),
        "baseline_warmup": base_wu, "notes": [*verdict, runs_note, *wu, *(notes or [])]})


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


def baseline_of(con, run_ids: int | list[int], *, rank: int | None = None, warmup: int | None = None,
                force: bool = False) -> tuple[dict[str, Samples], str | None]:
    """What a baseline keeps of runs `run_ids` (one, or several of one config, pooled): their
    samples in every grouping, warm-up left out, and the first run's label (for
    `store.baselines.save`, which may write them to another store). Runs that measured different
    things are refused (likeness.require_like) unless `force`."""
    ids = [run_ids] if isinstance(run_ids, int) else list(run_ids)
    if len(set(ids)) < len(ids):
        raise UsageError(f"--run names a run twice: {ids}")
    per_run = [{by: run_samples(con, i, by=by, rank=rank, warmup=warmup) for by in GROUPINGS} for i in ids]
    for i, p in zip(ids[1:], per_run[1:]):
        require_like(per_run[0]["layer_type"].info, p["layer_type"].info, what_a=f"run {ids[0]}",
                     what_b=f"run {i}", force=force)
    per = {by: baselines.pool([p[by] for p in per_run]) for by in GROUPINGS}
    rows = con.execute("SELECT label FROM runs WHERE run_id = ?", [ids[0]]).fetchall()
    return per, (rows[0][0] if rows else None)


def check_run(con, run_id: int, base: Samples, *, limits: dict[str, float], meta: dict,
              by: str = "layer_type", rank: int | None = None, warmup: int | None = None,
              force: bool = False, allow_missing: bool = False, baseline: str = "the baseline") -> Table:
    """The `check` table of run `run_id` against the baseline samples `base` (`baselines.load`):
    the run's warm-up left out, refused when it measured something else than the baseline
    (unless `force`)."""
    new = require_samples(run_samples(con, run_id, by=by, rank=rank, warmup=warmup), f"run {run_id}")
    notes = require_like(base.info, new.info, what_a=baseline, what_b=f"run {run_id}", force=force)
    return kernel_groups(check_table(base, new, limits=limits, meta={**meta, "by": by},
                                     allow_missing=allow_missing, notes=notes))


def kernel_groups(table: Table) -> Table:
    """With meta['by'] == 'kernel' the groups are kernel names: the `group` column's kind is 'kernel'
    (the terminal shortens them, JSON/CSV keep them whole)."""
    if table.meta.get("by") != "kernel":
        return table
    cols = tuple(dataclasses.replace(c, kind="kernel") if c.name == "group" else c for c in table.columns)
    return Table(table.name, cols, table.rows, table.meta)



DIFF_COLUMNS = (
    Column("group", "str", "layer type / layer / kernel"),
    Column("n_a", "int", "events in run A", optional=6),
    Column("n_b", "int", "events in run B", optional=6),
    Column("p50_a_ns", "ns", "p50 of run A", "p50 A", optional=3),
    Column("p50_b_ns", "ns", "p50 of run B", "p50 B", optional=3),
    Column("p50_change_pct", "pct", "100 * (p50 B / p50 A - 1)", "Δp50", optional=2),
    Column("p99_a_ns", "ns", "p99 of run A", "p99 A"),
    Column("p99_b_ns", "ns", "p99 of run B", "p99 B"),
    Column("p99_change_pct", "pct", "100 * (p99 B / p99 A - 1)", "Δp99"),
    Column("p99_ci_lo_pct", "pct", "confidence interval of Δp99, low end", "Δp99 CI low", optional=5),
    Column("p99_ci_hi_pct", "pct", "confidence interval of Δp99, high end", "Δp99 CI high", optional=5),
    Column("share_a_pct", "pct", "share of run A's GPU time", "share A", optional=4),
    Column("share_b_pct", "pct", "share of run B's GPU time", "share B", optional=4),
    Column("share_change_pp", "pct", "share B - share A, in percentage points", "Δshare (pp)", optional=1),
    Column("significant", "str", "which changes are significant (CI excludes 0): p50, p99"),
)


def diff_table(a: Samples, b: Samples, *, meta: dict, alpha: float = 0.05, seed: int = 0,
               notes: list[str] | None = None) -> Table:
    """Run A vs run B per group, with bootstrap CIs of whole steps (level 1 - alpha, Bonferroni over groups).

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
                _point, rlo, rhi = ratio_ci_blocks(da, a.cluster(g), db_, b.cluster(g), STATS[stat], alpha=level,
                                                   b=BOOTSTRAP, rng=rng)
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
    wu = [f"run {w['run_id']}: {warmup_mod.describe(w)}" for s in (a, b) for w in (s.info.get("warmup") or [])]
    noise = ("one run a side: the intervals resample steps within each run, so two identical runs can "
             "differ beyond them; repeat the A/B beside an unchanged re-run of A, or `check` against a "
             "baseline saved from several runs")
    return kernel_groups(table).with_rows(table.rows, verdict=verdict, throughput_a=a.throughput, throughput_b=b.throughput,
                           throughput_unit=a.throughput_unit, throughput_change_pct=thr, alpha=alpha,
                           warmup_a=a.info.get("warmup"), warmup_b=b.info.get("warmup"),
                           notes=[*wu, *(notes or []), noise, verdict])


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
