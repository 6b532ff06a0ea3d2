"""Warm-up: the first steps of a run, and the first calls of each kernel, that are no part of its
steady state (NCCL's first all-to-all, Triton compiling on first use, allocator growth).

The rule (docs/analyses.md, "warm-up"), per rank:
- Steps (recorded, or step ranges of an import, as recorded: the CPU range of an imported step),
  in time order; a layer type's time in a step sums the measured events that carry that step
  (`events.step`, filled by capture and attribution). A step is *settled* when its
  latency is at most FACTOR x the reference latency of its phase, and every layer type's time in it
  at most FACTOR x that layer type's reference time per step of the phase; a reference is the
  median (quantile_cont 0.5) over the phase's steps in the second half of the rank's steps (over
  all of the phase's steps when none is there). The warm-up is the steps before the first RUN
  consecutive settled steps, when such a run starts within the first half of the rank's steps
  (else the rule cannot tell, and there is none); it ends where the first kept step starts, and
  everything of the rank before that is warm-up.
- First calls: after the warm-up steps, the first call of each (rank, event name) when it takes
  more than FIRST_CALL_FACTOR x the median of that name's calls on the rank (a first NCCL call of
  40 ms beside 200 us ones; a prefill kernel a few times a decode one is not warm-up).
`--warmup N` replaces the rule by exactly the first N steps of each rank (no first-call rule);
`--warmup 0` keeps everything.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from hybridscope.analyze import timeline
from hybridscope.analyze.measures import MEASURES, measure_of
from hybridscope.analyze.stats import quantile_cont
from hybridscope.errors import UsageError

FACTOR = 1.5
RUN = 3
FIRST_CALL_FACTOR = 10.0
_NO_CUT = -(2**62)


@dataclass(frozen=True)
class WarmUp:
    """What a run's warm-up is: `setting` 'auto', 'N steps' or 'none'; per rank the warm-up steps
    and the first kept timestamp; whether the first-call rule applies."""

    setting: str
    steps: dict[int, int] = field(default_factory=dict)
    cutoffs: dict[int, int] = field(default_factory=dict)
    first_calls: bool = False

    def params(self) -> dict:
        """The SQL parameters of `events_cte(first_calls=self.first_calls)` (ranks with a cut-off; a
        sentinel keeps the lists typed)."""
        ranks = sorted(self.cutoffs)
        out = {"wu_ranks": [-1] + ranks, "wu_cuts": [_NO_CUT] + [self.cutoffs[r] for r in ranks]}
        if self.first_calls:  # events_cte(first_calls=self.first_calls) names these only then
            out.update(wu_first=True, wu_factor=FIRST_CALL_FACTOR)
        return out


def parse(text: str | None) -> int | None:
    """`--warmup` as given: None/'auto' -> None (the rule), else a number of steps >= 0."""
    if text is None or text.strip().lower() == "auto":
        return None
    try:
        n = int(text)
    except ValueError:
        raise UsageError(f"--warmup takes auto or a number of steps, not {text!r}") from None
    if n < 0:
        raise UsageError(f"--warmup must be auto or >= 0 steps, not {n}")
    return n


def detect(con, run_id: int, *, warmup: int | None = None) -> WarmUp:
    """The warm-up of run `run_id`: the module's rule (warmup=None), the first `warmup` steps of
    each rank, or nothing (warmup=0). UsageError when `warmup` steps leave a rank nothing."""
    if warmup == 0:
        return WarmUp("none")
    by_rank: dict[int, list[dict]] = {}
    for w in _windows(con, run_id):
        by_rank.setdefault(w["rank"], []).append(w)
    for ws in by_rank.values():
        ws.sort(key=lambda w: w["ts_ns"])
    if warmup is not None:
        if not by_rank:
            raise UsageError(f"run {run_id} has no steps: --warmup {warmup} needs steps (use --warmup auto or 0)")
        short = [r for r, ws in by_rank.items() if len(ws) <= warmup]
        if short:
            raise UsageError(f"--warmup {warmup} leaves rank {short[0]} of run {run_id} no step "
                             f"(it has {len(by_rank[short[0]])})")
        return WarmUp(f"{warmup} steps", {r: warmup for r in by_rank},
                      {r: int(ws[warmup]["ts_ns"]) for r, ws in by_rank.items()})
    per_type: dict[tuple[int, int], dict[str, int]] = {}
    for rank, step, lt, ns in (_step_sums(con, run_id) if by_rank else []):
        per_type.setdefault((rank, step), {})[lt] = ns
    steps, cuts = {}, {}
    for rank, ws in by_rank.items():
        n = warm_steps(ws, per_type, rank)
        steps[rank] = n
        if n:
            cuts[rank] = int(ws[n]["ts_ns"])
    return WarmUp("auto", steps, cuts, first_calls=True)


def warm_steps(ws: list[dict], per_type: dict[tuple[int, int], dict[str, int]], rank: int) -> int:
    """How many leading steps of one rank (`ws` in time order) are warm-up (module doc)."""
    if len(ws) < 2:
        return 0
    lat = [w["end_ns"] - w["ts_ns"] for w in ws]
    phase = [w["phase"] or "unknown" for w in ws]
    types = [per_type.get((rank, w["step"]), {}) if w["sampled"] else {} for w in ws]
    late = range(len(ws) // 2, len(ws))
    ref_lat, ref_type = {}, {}
    for ph in set(phase):
        idx = [i for i in late if phase[i] == ph] or [i for i in range(len(ws)) if phase[i] == ph]
        ref_lat[ph] = _median([lat[i] for i in idx])
        for lt in {t for i in idx for t in types[i]}:
            ref_type[(ph, lt)] = _median([types[i][lt] for i in idx if lt in types[i]])
    settled = [lat[i] <= FACTOR * ref_lat[phase[i]]
               and all(ns <= FACTOR * ref_type.get((phase[i], lt), np.inf) for lt, ns in types[i].items())
               for i in range(len(ws))]
    for j in range(min(len(ws) // 2, len(ws) - RUN) + 1):
        if all(settled[j:j + RUN]):
            return j
    return 0


def _median(values: list[int]) -> float:
    return quantile_cont(np.sort(np.asarray(values, dtype=np.float64)), 0.5)


def events_cte(predicate: str, *, first_calls: bool = True, clusters: bool = True) -> str:
    """SQL CTEs ending in `ev`: the run's events of `predicate` (our constant, never user input),
    each with `warm` (true when warm-up) and, with `clusters`, `cluster` (rank * 2^32 + step of the
    event, or of the step window it starts in; -1 outside steps). `first_calls` False leaves the
    first-call rule out of the SQL (for a WarmUp without it). Parameters: $run and WarmUp.params()."""
    first = """
    e1 AS (SELECT rank, name, quantile_cont(duration_ns, 0.5) AS med, arg_min(event_id, ts_ns) AS first_id,
                  arg_min(duration_ns, ts_ns) AS first_ns
           FROM e0 WHERE NOT in_warm_steps GROUP BY rank, name),
    e1_warm AS (SELECT rank, first_id AS event_id FROM e1 WHERE $wu_first AND med > 0 AND first_ns > $wu_factor * med),
    e2 AS (SELECT e0.*, e0.in_warm_steps OR w.event_id IS NOT NULL AS warm
           FROM e0 LEFT JOIN e1_warm w ON e0.rank = w.rank AND e0.event_id = w.event_id)""" if first_calls else """
    e2 AS (SELECT e0.*, e0.in_warm_steps AS warm FROM e0)"""
    tail = """
    wu_w AS (SELECT rank, step, ts_ns, end_ns FROM windows),
    ev AS (SELECT e2.*, CASE WHEN e2.step IS NOT NULL THEN e2.rank * 4294967296 + e2.step
                             WHEN s.step IS NOT NULL AND e2.ts_ns < s.end_ns THEN e2.rank * 4294967296 + s.step
                             ELSE -1 END AS cluster
           FROM e2 ASOF LEFT JOIN wu_w s ON e2.rank = s.rank AND e2.ts_ns >= s.ts_ns)""" if clusters else """
    ev AS (SELECT * FROM e2)"""
    steps = f"{timeline.STEP_WINDOWS_SQL}," if clusters else ""
    return f"""{steps}
    wu_cut AS (SELECT unnest($wu_ranks) AS rank, unnest($wu_cuts) AS cut_ns),
    e0 AS (SELECT e.*, e.ts_ns < coalesce(c.cut_ns, {_NO_CUT}) AS in_warm_steps
           FROM events e LEFT JOIN wu_cut c ON e.rank = c.rank
           WHERE e.run_id = $run AND {predicate}),{first},{tail}"""


def _windows(con, run_id: int) -> list[dict]:
    """The run's steps (recorded, or step ranges of an import: timeline.STEP_WINDOWS_SQL) as they
    were recorded, without the timeline's kernel pass: what the rule needs, cheaply."""
    rows = con.execute(f"WITH {timeline.STEP_WINDOWS_SQL} SELECT rank, step, ts_ns, end_ns, phase, sampled "
                       "FROM windows", {"run": run_id}).fetchall()
    keys = ("rank", "step", "ts_ns", "end_ns", "phase", "sampled")
    return [dict(zip(keys, r)) for r in rows]


def _step_sums(con, run_id: int) -> list[tuple[int, int, str, int]]:
    """(rank, step, layer type, summed ns) of the run's measured events that carry their step
    (capture and attribution fill `events.step`), in one aggregation."""
    return con.execute(
        f"""SELECT rank, step, coalesce(layer_type, 'other'), sum(duration_ns)::BIGINT FROM events
            WHERE run_id = $run AND {MEASURES[measure_of(con, run_id)]} AND step IS NOT NULL
            GROUP BY ALL""", {"run": run_id}).fetchall()


def summary(w: WarmUp, n: int, time_ns: int, n_total: int, *, rank: int | None = None) -> dict:
    """What the warm-up left out, as a dict for a table's meta and `describe`, from counts already made."""
    steps = {r: s for r, s in w.steps.items() if rank is None or r == rank}
    return {"setting": w.setting, "events": int(n), "events_total": int(n_total), "time_ns": int(time_ns),
            "steps": {str(r): s for r, s in sorted(steps.items())}}


def left_out(con, run_id: int, predicate: str, w: WarmUp, *, rank: int | None = None) -> dict:
    """How much the warm-up leaves out of the measure: events, their summed time, steps per rank,
    and the window time before the cut-offs; as a dict for a table's meta and notes."""
    params = {"run": run_id, **w.params()}
    rank_sql = ""
    if rank is not None:
        rank_sql, params["rank"] = "AND rank = $rank", rank
    n, ns, n_all = con.execute(
        f"WITH {events_cte(predicate, first_calls=w.first_calls, clusters=False)} SELECT count(*) FILTER (WHERE warm), "
        f"coalesce(sum(duration_ns) FILTER (WHERE warm), 0)::BIGINT, count(*) FROM ev WHERE true {rank_sql}",
        params).fetchall()[0]
    return summary(w, n, ns, n_all, rank=rank)


def describe(info: dict) -> str:
    """One line: what the warm-up left out ('warm-up kept' for --warmup 0)."""
    if info["setting"] == "none":
        return "warm-up kept (--warmup 0): every event counts"
    if not info["events"]:
        return f"no warm-up found ({info['setting']}): every event counts"
    steps = sorted(set(info["steps"].values()))
    per = (f"{steps[0]} step(s) per rank" if len(steps) == 1 else
           "steps per rank " + ", ".join(f"{r}: {s}" for r, s in info["steps"].items())) if steps else "no steps"
    return (f"warm-up left out ({info['setting']}): {per}, {info['events']:,} of {info['events_total']:,} events, "
            f"{info['time_ns'] / 1e6:,.3f} ms of their time; --warmup 0 keeps it")
