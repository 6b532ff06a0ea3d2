"""MoE experts: tokens per expert, routing imbalance, and how imbalance tracks comm and step time.

From the `routing` table (tokens per expert, per MoE layer and step, per rank). Definitions
(docs/analyses.md, "experts"):
- tokens of an expert at a step are summed over ranks (each rank routes its own tokens);
- a layer has E = max(expert) + 1 experts (seen over the whole run); an expert absent from a
  step's rows received 0 tokens;
- imbalance of (layer, step) = max over experts of tokens / mean tokens per expert
  (= total / E); 1.0 is perfectly balanced, E means all tokens went to one expert;
- a step's imbalance is the max over its MoE layers (the worst layer sets the all-to-all's size);
- capacity factor of an expert at a step = its tokens / (layer total / E): the multiple of an even
  share it needed; `capacity_factor_p99` is its continuous p99 over steps;
- per step, `moe_comm_ns` and `latency_ns` are the max over ranks (the slowest rank sets when the
  collective and the step finish);
- correlations (Pearson on values, Spearman on average ranks) of step imbalance with moe_comm
  time and with step latency, over steps present in both routing and the timeline; None with
  fewer than 3 steps or a constant series.
- warm-up (analyze/warmup.py; `warmup` as there): a step number that is warm-up on some rank is
  left out of every table here (a prefill's first routing, the eager step before a graph capture).
"""

from __future__ import annotations

import numpy as np

from hybridscope.analyze import shared, timeline
from hybridscope.analyze.stats import quantile_cont
from hybridscope.table import Column, Table, plain

_ROUTED = """
    r AS (SELECT step, layer_index, expert, sum(tokens) AS tokens FROM routing
          WHERE run_id = $run AND NOT list_contains($warm, step) GROUP BY step, layer_index, expert),
    ne AS (SELECT layer_index, max(expert) + 1 AS n_experts FROM r GROUP BY layer_index),
    g AS (SELECT step, layer_index, sum(tokens) AS total, max(tokens) AS mx,
                 first(expert ORDER BY tokens DESC, expert) AS hot
          FROM r GROUP BY step, layer_index)"""


def _warm(con, run_id: int, warmup: int | None) -> list[int]:
    """The warm-up step numbers as a typed list parameter (a sentinel first)."""
    from hybridscope.analyze import warmup as warmup_mod

    return [-(2**31)] + warmup_mod.warm_step_numbers(con, run_id, warmup=warmup)


def _warm_notes(warm: list[int]) -> list[str]:
    n = len(warm) - 1
    return [f"{n} warm-up step(s) left out (--warmup 0 keeps them)"] if n else []


def imbalance(con, run_id: int, *, warmup: int | None = None) -> Table:
    """Per (step, layer): tokens routed, mean and max per expert, imbalance, the hottest expert."""
    warm = _warm(con, run_id, warmup)
    rows = con.execute(
        f"""WITH {_ROUTED}
        SELECT g.step, g.layer_index, ne.n_experts::BIGINT, g.total::BIGINT, (g.total / ne.n_experts)::DOUBLE,
               g.mx::BIGINT, (CASE WHEN g.total > 0 THEN g.mx / (g.total / ne.n_experts) END)::DOUBLE, g.hot
        FROM g JOIN ne USING (layer_index) ORDER BY g.step, g.layer_index""",
        {"run": run_id, "warm": warm},
    ).fetchall()
    cols = (Column("step", "int"), Column("layer_index", "int", "", "layer"),
            Column("n_experts", "int", "", "experts"), Column("tokens", "int", "tokens routed (× top-k)"),
            Column("mean_tokens", "float", "tokens / experts", "mean"),
            Column("max_tokens", "int", "tokens of the busiest expert", "max"),
            Column("imbalance", "ratio", "max / mean"), Column("hot_expert", "int", "the busiest expert", "hot"))
    return Table("imbalance", cols, rows,
                 {"title": "Routing imbalance per layer and step", "run_id": run_id, "notes": _warm_notes(warm)})


def expert_load(con, run_id: int, *, warmup: int | None = None) -> Table:
    """Per (layer, expert): tokens over the run, share of the layer, mean and p99 per step, and the
    capacity factor it needed at p99 (module doc). The expert heatmap's data."""
    warm = _warm(con, run_id, warmup)
    with shared.quantile_memory(con, run_id):  # a p99 per (layer, expert) over every step
        rows = con.execute(
            f"""WITH {_ROUTED},
            grid AS (SELECT g.step, g.layer_index, g.total, ne.n_experts, unnest(range(ne.n_experts)) AS expert
                     FROM g JOIN ne USING (layer_index)),
            full_ AS (SELECT grid.*, coalesce(r.tokens, 0) AS tokens FROM grid
                      LEFT JOIN r USING (step, layer_index, expert))
            SELECT layer_index, expert, sum(tokens)::BIGINT,
                   100.0 * sum(tokens) / nullif(sum(total), 0),
                   avg(tokens), quantile_cont(tokens, 0.99),
                   quantile_cont(CASE WHEN total > 0 THEN tokens / (total / n_experts) END, 0.99)
            FROM full_ GROUP BY layer_index, expert ORDER BY layer_index, expert""",
            {"run": run_id, "warm": warm},
        ).fetchall()
    cols = (Column("layer_index", "int", "", "layer"), Column("expert", "int"),
            Column("tokens", "int", "tokens over the run"),
            Column("share_pct", "pct", "share of the layer's tokens", "share"),
            Column("mean_per_step", "float", "", "mean/step"), Column("p99_per_step", "float", "", "p99/step"),
            Column("capacity_factor_p99", "ratio", "p99 over steps of tokens / even share", "cf p99"))
    return Table("expert_load", cols, [tuple(plain(v) for v in r) for r in rows],
                 {"title": "Tokens per expert", "run_id": run_id, "notes": _warm_notes(warm)})


def step_imbalance(con, run_id: int, *, warmup: int | None = None) -> dict[int, float]:
    """{step: imbalance of its worst MoE layer} over the steps with routing (module doc)."""
    return _worst_layer(imbalance(con, run_id, warmup=warmup))


def _worst_layer(table: Table) -> dict[int, float]:
    """{step: the largest imbalance of its layers} from `imbalance`'s table."""
    imb: dict[int, float] = {}
    for step, _layer, _ne, _tot, _mean, _mx, ratio, _hot in table.rows:
        if ratio is not None:
            imb[step] = max(imb.get(step, 0.0), ratio)
    return imb


def expert_steps(con, run_id: int, *, warmup: int | None = None) -> Table:
    """Per step with routing: imbalance (max over layers), moe_comm time and latency (max over ranks)."""
    per_layer = imbalance(con, run_id, warmup=warmup)
    imb = _worst_layer(per_layer)
    comm: dict[int, int] = {}
    for rank, step, lt, ns in timeline.step_sums(con, run_id):
        if lt == "moe_comm":
            comm[step] = max(comm.get(step, 0), ns)
    latency: dict[int, int] = {}
    for w in timeline.step_windows(con, run_id):
        latency[w["step"]] = max(latency.get(w["step"], 0), w["end_ns"] - w["ts_ns"])
    rows = [(s, imb[s], comm.get(s, 0) if s in latency else None, latency.get(s)) for s in sorted(imb)]
    cols = (Column("step", "int"), Column("imbalance", "ratio", "max over MoE layers of max/mean"),
            Column("moe_comm_ns", "ns", "moe_comm kernel time in the step (max over ranks)", "moe_comm"),
            Column("latency_ns", "ns", "step latency (max over ranks)", "latency"))
    return Table("expert_steps", cols, rows, {"title": "Imbalance vs moe_comm per step", "run_id": run_id,
                                              "notes": per_layer.meta["notes"]})


def expert_correlation(con, run_id: int, steps_table: Table | None = None) -> Table:
    """Pearson and Spearman correlation of step imbalance with moe_comm time and with latency."""
    t = steps_table if steps_table is not None else expert_steps(con, run_id)
    rows = []
    for y in ("moe_comm_ns", "latency_ns") if len(t) else ():  # no routing recorded: no rows
        pairs = [(x, v) for x, v in zip(t.column("imbalance"), t.column(y)) if v is not None]
        xs = np.array([p[0] for p in pairs], dtype=np.float64)
        ys = np.array([p[1] for p in pairs], dtype=np.float64)
        rows.append(("imbalance", y, len(pairs), pearson(xs, ys), spearman(xs, ys)))
    cols = (Column("x", "str"), Column("y", "str"), Column("n", "int", "steps"),
            Column("pearson", "float", "Pearson r"), Column("spearman", "float", "Spearman rho"))
    return Table("expert_correlation", cols, rows, {"title": "Does imbalance cost time?", "run_id": run_id})


def pearson(x: np.ndarray, y: np.ndarray) -> float | None:
    """Pearson r, None with fewer than 3 points or a constant series."""
    if x.size < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None
    return float(np.corrcoef(x, y)[0, 1])


def spearman(x: np.ndarray, y: np.ndarray) -> float | None:
    """Spearman rho: Pearson r of the average ranks (ties share the mean of their ranks)."""
    if x.size < 3:
        return None
    return pearson(rankdata(x), rankdata(y))


def rankdata(a: np.ndarray) -> np.ndarray:
    """1-based ranks, ties averaged (scipy.stats.rankdata's 'average'), vectorized."""
    a = np.asarray(a)
    order = np.argsort(a, kind="stable")
    sorted_a = a[order]
    new = np.r_[True, sorted_a[1:] != sorted_a[:-1]]
    group = np.cumsum(new) - 1
    starts = np.flatnonzero(new)
    ends = np.r_[starts[1:], a.size]
    avg = (starts + ends + 1) / 2.0  # mean of 1-based ranks starts+1 .. ends
    ranks = np.empty(a.size, dtype=np.float64)
    ranks[order] = avg[group]
    return ranks


@timeline.on_timeline
def layer_step_times(con, run_id: int) -> str:
    """A temp table of the block (dropped with it) with (step, layer_index, ns): each MoE layer's
    time in each step, its moe_experts and moe_comm kernels (with their step from the timeline) or,
    in a layers-mode capture, its layer timings, summed per rank, max over ranks (the slowest rank
    sets the pace). Returns its name."""
    t = timeline.tables(con, run_id)
    name = f"_hs_layer_step_times_{int(run_id)}"
    if name not in t.extra:
        con.execute(
            f"""CREATE OR REPLACE TEMP TABLE {name} AS
            WITH k AS (SELECT rank, step, layer_index, end_ns - ts_ns AS ns FROM {t.kernels}
                       WHERE layer_type IN ('moe_experts', 'moe_comm') AND step >= 0 AND layer_index >= 0),
                 l AS (SELECT rank, step, layer_index, duration_ns AS ns FROM events
                       WHERE run_id = $run AND source = 'layer' AND kind = 'layer'
                         AND layer_type IN ('moe_experts', 'moe_comm') AND step IS NOT NULL
                         AND layer_index IS NOT NULL AND NOT EXISTS (SELECT 1 FROM k)),
                 per AS (SELECT rank, step, layer_index, sum(ns) AS ns FROM (SELECT * FROM k UNION ALL SELECT * FROM l)
                         GROUP BY ALL)
            SELECT step::BIGINT AS step, layer_index::BIGINT AS layer_index, max(ns)::BIGINT AS ns
            FROM per GROUP BY ALL""", {"run": run_id})
        t.extra.append(name)
    return name


@timeline.on_timeline
def expert_tail(con, run_id: int, *, threshold: float = 1.5, tail: float = 0.9, moves: float = 1.1,
                min_steps: int = 5, load: Table | None = None, warmup: int | None = None) -> Table:
    """Per (layer, expert) whose capacity factor reached `threshold` at p99 of steps: does its load
    move its layer's tail? The layer's tail steps are those whose MoE time (layer_step_times) is
    >= its continuous `tail` quantile over steps; the expert's mean capacity factor over the tail
    steps vs over the others; it `moves` the tail when the first is >= `moves` x the second.
    layer_gain_ns = sum over the tail steps of the layer's time above its median step: what evening
    the load could win back in that layer at most (docs/analyses.md, "experts"). Layers with fewer
    than `min_steps` timed steps are left out. `load`: expert_load's table when already computed.
    One layer at a time, as numpy columns: memory holds one layer's steps and routing."""
    times = layer_step_times(con, run_id)
    load = load if load is not None else expert_load(con, run_id, warmup=warmup)
    warm = _warm(con, run_id, warmup)
    cf = {(r["layer_index"], r["expert"]): r["capacity_factor_p99"] for r in load.to_records()}
    out = []
    for (li,) in con.execute(f"SELECT DISTINCT layer_index FROM {times} ORDER BY 1").fetchall():
        got = con.execute(f"SELECT step, ns FROM {times} WHERE layer_index = $li ORDER BY step", {"li": li}).fetchnumpy()
        steps, t = np.asarray(got["step"]), np.asarray(got["ns"]).astype(np.float64)
        steady = ~np.isin(steps, warm)
        steps, t = steps[steady], t[steady]
        hot = sorted(e for (layer, e), v in cf.items() if layer == li and (v or 0) >= threshold)
        if steps.size < min_steps or not hot:
            continue
        st = np.sort(t)
        is_tail = t >= quantile_cont(st, tail)
        gain = float((t[is_tail] - quantile_cont(st, 0.5)).clip(0).sum())
        for e, f in _factors(con, run_id, li, hot, steps).items():
            in_tail, other = float(f[is_tail].mean()), float(f[~is_tail].mean()) if (~is_tail).any() else None
            ratio = in_tail / other if other else None
            out.append((li, e, cf[(li, e)], in_tail, other, ratio, gain,
                        "yes" if ratio is not None and ratio >= moves else "no"))
    out.sort(key=lambda r: (r[7] != "yes", -r[6], -(r[5] or 0)))
    cols = (Column("layer_index", "int", "", "layer"), Column("expert", "int"),
            Column("capacity_factor_p99", "ratio", "p99 over steps of tokens / even share", "cf p99"),
            Column("tail_load", "ratio", "mean capacity factor in the layer's tail steps", "load, tail"),
            Column("other_load", "ratio", "mean capacity factor in its other steps", "load, other"),
            Column("load_ratio", "ratio", "tail / other", "tail/other"),
            Column("layer_gain_ns", "ns", "the layer's time above its median step, over its tail steps",
                   "layer gain"),
            Column("moves_tail", "str", f"tail/other >= {moves:g}", "moves tail"))
    return Table("expert_tail", cols, out, {"title": "Do hot experts move their layer's tail?", "run_id": run_id,
                                            "threshold": threshold, "tail": tail, "notes": _warm_notes(warm)})


def _factors(con, run_id: int, li: int, experts: list[int], steps: np.ndarray) -> dict[int, np.ndarray]:
    """{expert: its capacity factor at each of `steps` (sorted)} for one layer: tokens / (the
    layer's total / its experts), summed over ranks; 0 at a step without the expert's row."""
    got = con.execute(
        """WITH r AS (SELECT step, expert, sum(tokens) AS tokens FROM routing WHERE run_id = $run AND layer_index = $li
                      GROUP BY ALL),
                ne AS (SELECT max(expert) + 1 AS n FROM r),
                tot AS (SELECT step, sum(tokens) AS total FROM r GROUP BY ALL)
           SELECT r.expert, r.step, (r.tokens / (tot.total / ne.n))::DOUBLE AS f
           FROM r JOIN tot USING (step), ne WHERE tot.total > 0 AND list_contains($experts, r.expert)""",
        {"run": run_id, "li": li, "experts": experts}).fetchnumpy()
    expert, step, f = (np.asarray(got[k]) for k in ("expert", "step", "f"))
    out = {}
    for e in experts:
        mine = expert == e
        at = np.searchsorted(steps, step[mine])
        ok = (at < steps.size) & (steps[np.minimum(at, steps.size - 1)] == step[mine])
        x = np.zeros(steps.size)
        x[at[ok]] = f[mine][ok]
        out[e] = x
    return out
