"""Warm-up: the first steps of a run, the first calls of each kernel, and the steps that captured a
CUDA graph: what is no part of its steady state (NCCL's first all-to-all, Triton compiling on first
use, allocator growth, graph captures).

The rule (docs/analyses.md, "warm-up"), per rank:
- Steps (recorded, or step ranges of an import, as recorded: the CPU range of an imported step),
  in time order; a layer type's time in a step sums the measured events that carry that step
  (`events.step`, filled by capture and attribution). A step is *settled* when its
  latency is at most FACTOR x the reference latency of its phase, and every layer type's time in it
  at most FACTOR x that layer type's reference time per step of the phase; a reference is the
  REF_Q quantile (quantile_cont 0.9) over the phase's steps in the second half of the rank's steps
  (over all of the phase's steps when none is there). The p90, not the median: in a bursty workload
  (routing hot spots in 30% of the steps) a burst step is > 1.5x the median, three calm steps in a
  row come late, and a median reference left out 0-40 of 96 steady steps of a rank (9.8 on
  average); against the p90 a steady run's steps are settled 9 times in 10, and one-time costs
  (compiling, a first collective: 10-100x) stand out all the same. The warm-up is the steps before the first RUN
  consecutive settled steps, when such a run starts within the first half of the rank's steps
  (else the rule cannot tell, and there is none); it ends where the first kept step starts, and
  everything of the rank before that is warm-up.
- First calls: after the warm-up steps, the first call of each (rank, event name) when it takes
  more than FIRST_CALL_FACTOR x the median of that name's calls on the rank (a first NCCL call of
  40 ms beside 200 us ones; a prefill kernel a few times a decode one is not warm-up).
- Graph captures: after the warm-up steps, every step in which the program captured a CUDA graph
  (a capture notes them: runs.notes ranks.<rank>.cuda_graphs.capture_steps, live/graphs.py) with
  all its events. An engine captures a graph per batch shape the first time it meets it, running
  the model eagerly first, wherever in the run that falls (217 ms beside 10 ms replays on an H200).
`--warmup N` replaces the rule by exactly the first N steps of each rank (no first-call rule);
`--warmup 0` keeps everything.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import numpy as np

from hybridscope.analyze import shared
from hybridscope.analyze.measures import MEASURES, measure_of
from hybridscope.analyze.stats import quantile_cont
from hybridscope.errors import UsageError

FACTOR = 1.5
RUN = 3
REF_Q = 0.9  # the reference of a settled step: this quantile of the phase's late steps
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
    first: tuple[tuple[int, int], ...] = ()  # (rank, event_id): first calls, and the events of graph_steps
    graph_steps: tuple[tuple[int, int], ...] = ()  # (rank, step) of graph captures after the cut-off

    def params(self) -> dict:
        """The SQL parameters of `events_cte(first_calls=self.first_calls)` (ranks with a cut-off,
        the first calls found; a sentinel keeps the lists typed)."""
        ranks = sorted(self.cutoffs)
        out = {"wu_ranks": [-1] + ranks, "wu_cuts": [_NO_CUT] + [self.cutoffs[r] for r in ranks]}
        if self.first_calls:  # events_cte(first_calls=self.first_calls) names these only then
            out.update(wu_first_ranks=[-1] + [r for r, _ in self.first],
                       wu_first_ids=[_NO_CUT] + [e for _, e in self.first])
        return out


def after(windows: dict[int, tuple[int, int]], cutoffs: dict[int, int]) -> dict[int, tuple[int, int]]:
    """Each rank's window (start_ns, end_ns) from its warm-up cut-off on (the steady state); the
    whole window for a rank without one."""
    return {r: (min(max(lo, cutoffs.get(r, lo)), hi), hi) for r, (lo, hi) in windows.items()}


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


@shared.once
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
    sums = _step_sums(con, run_id) if by_rank else None
    steps, cuts = {}, {}
    for rank, ws in by_rank.items():
        mine = sums["rank"] == rank
        n = warm_steps(ws, sums["step"][mine], sums["lt"][mine], sums["ns"][mine])
        steps[rank] = n
        if n:
            cuts[rank] = int(ws[n]["ts_ns"])
    captured = _capture_steps(con, run_id)
    graph_steps = tuple(sorted((r, int(w["step"])) for r, ws in by_rank.items() for w in ws[steps[r]:]
                               if w["step"] is not None and w["step"] in captured.get(r, ())))
    first = set(_first_calls(con, run_id, cuts)) | set(_step_events(con, run_id, graph_steps))
    return WarmUp("auto", steps, cuts, first_calls=True, first=tuple(sorted(first)), graph_steps=graph_steps)


def warm_steps(ws: list[dict], step: np.ndarray, lt: np.ndarray, ns: np.ndarray) -> int:
    """How many leading steps of one rank (`ws` in time order) are warm-up (module doc); `step`,
    `lt`, `ns`: the rank's summed time per (step, layer type), as _step_sums gives them."""
    n = len(ws)
    if n < 2:
        return 0
    lat = np.array([w["end_ns"] - w["ts_ns"] for w in ws], dtype=np.int64)
    _, ph = np.unique([w["phase"] or "unknown" for w in ws], return_inverse=True)
    ph = ph.reshape(-1)
    late = np.arange(n) >= n // 2
    # a phase's reference steps: its steps in the second half, or all of them when none is there
    in_ref = late | (np.bincount(ph[late], minlength=ph.max() + 1) == 0)[ph]
    ref_lat = np.array([_reference(lat[(ph == p) & in_ref]) for p in range(ph.max() + 1)])
    win, rows = _step_rows(ws, step)
    _, code = np.unique(lt[rows].astype(str), return_inverse=True)
    key = ph[win] * (code.max(initial=0) + 1) + code.reshape(-1)  # (phase, layer type) of each pair
    ref = np.full(len(key), np.inf)
    for k in np.unique(key[in_ref[win]]):
        ref[key == k] = _reference(ns[rows][(key == k) & in_ref[win]])
    bad = np.bincount(win[~(ns[rows] <= FACTOR * ref)], minlength=n)
    settled = (lat <= FACTOR * ref_lat[ph]) & (bad == 0)
    last = min(n // 2, n - RUN)
    if last < 0:
        return 0
    runs = np.convolve(settled.astype(np.int64), np.ones(RUN, dtype=np.int64), "valid")[:last + 1]
    hits = np.flatnonzero(runs == RUN)
    return int(hits[0]) if hits.size else 0


def _step_rows(ws: list[dict], step: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(window index, row index) pairs: every sampled window of `ws` with each row of `step` that
    carries its step number."""
    order = np.argsort(step, kind="stable")
    sorted_steps = step[order]
    known = np.array([w["sampled"] and w["step"] is not None for w in ws], dtype=bool)
    wsteps = np.array([w["step"] if k else 0 for w, k in zip(ws, known)], dtype=np.int64)
    a = np.searchsorted(sorted_steps, wsteps, "left")
    cnt = np.where(known, np.searchsorted(sorted_steps, wsteps, "right") - a, 0)
    win = np.repeat(np.arange(len(ws)), cnt)
    offset = np.arange(int(cnt.sum())) - np.repeat(np.cumsum(cnt) - cnt, cnt)
    return win, order[np.repeat(a, cnt) + offset]


def _reference(values: list[int]) -> float:
    return quantile_cont(np.sort(np.asarray(values, dtype=np.float64)), REF_Q)


_FIRST_CALLS_SQL = """
    e1 AS (SELECT rank, name, quantile_cont(duration_ns, 0.5) AS med, arg_min(event_id, ts_ns) AS first_id,
                  arg_min(duration_ns, ts_ns) AS first_ns
           FROM e0 WHERE NOT in_warm_steps GROUP BY rank, name),
    e1_warm AS (SELECT rank, first_id AS event_id FROM e1 WHERE med > 0 AND first_ns > $wu_factor * med)"""


def _first_calls(con, run_id: int, cuts: dict[int, int]) -> tuple[tuple[int, int], ...]:
    """(rank, event_id) of the first calls the first-call rule (module doc) finds after the warm-up
    steps `cuts`, among the run's measured events: found once here, handed to events_cte as values."""
    w = WarmUp("auto", cutoffs=cuts)
    sql = f"""WITH {cut_sql(MEASURES[measure_of(con, run_id)])},{_FIRST_CALLS_SQL}
              SELECT rank, event_id FROM e1_warm"""
    with shared.quantile_memory(con, run_id):  # a median per (rank, name) over every event
        rows = con.execute(sql, {"run": run_id, **w.params(), "wu_factor": FIRST_CALL_FACTOR}).fetchall()
    return tuple((int(r), int(e)) for r, e in rows)


def cut_sql(predicate: str) -> str:
    """CTEs wu_cut and e0: the run's events of `predicate`, `in_warm_steps` before their rank's cut-off
    (parameters $run, $wu_ranks and $wu_cuts: WarmUp.params())."""
    return f"""
    wu_cut AS (SELECT unnest($wu_ranks) AS rank, unnest($wu_cuts) AS cut_ns),
    e0 AS (SELECT e.*, e.ts_ns < coalesce(c.cut_ns, {_NO_CUT}) AS in_warm_steps
           FROM events e LEFT JOIN wu_cut c ON e.rank = c.rank
           WHERE e.run_id = $run AND {predicate})"""


def events_cte(predicate: str, *, first_calls: bool = True, clusters: bool = True) -> str:
    """SQL CTEs ending in `ev`: the run's events of `predicate` (our constant, never user input),
    each with `warm` (true when warm-up) and, with `clusters`, `cluster` (rank * 2^32 + step of the
    event, or of the step window it starts in; -1 outside steps). `first_calls` False leaves the
    first-call rule out of the SQL (for a WarmUp without it); with it, the first calls detect found
    (WarmUp.first) are warm-up. Parameters: $run and WarmUp.params()."""
    first = """
    wu_first AS (SELECT unnest($wu_first_ranks) AS rank, unnest($wu_first_ids) AS event_id),
    e2 AS (SELECT e0.*, e0.in_warm_steps OR w.event_id IS NOT NULL AS warm
           FROM e0 LEFT JOIN wu_first w ON e0.rank = w.rank AND e0.event_id = w.event_id)""" if first_calls else """
    e2 AS (SELECT e0.*, e0.in_warm_steps AS warm FROM e0)"""
    tail = """
    wu_w AS (SELECT rank, step, ts_ns, end_ns FROM windows),
    ev AS (SELECT e2.*, CASE WHEN e2.step IS NOT NULL THEN e2.rank * 4294967296 + e2.step
                             WHEN s.step IS NOT NULL AND e2.ts_ns < s.end_ns THEN e2.rank * 4294967296 + s.step
                             ELSE -1 END AS cluster
           FROM e2 ASOF LEFT JOIN wu_w s ON e2.rank = s.rank AND e2.ts_ns >= s.ts_ns)""" if clusters else """
    ev AS (SELECT * FROM e2)"""
    steps = f"{shared.STEP_WINDOWS_SQL}," if clusters else ""
    return f"""{steps}{cut_sql(predicate)},{first},{tail}"""


def _windows(con, run_id: int) -> list[dict]:
    """The run's steps (recorded, or step ranges of an import: shared.STEP_WINDOWS_SQL) as they
    were recorded, without the timeline's kernel pass: what the rule needs, cheaply."""
    rows = con.execute(f"WITH {shared.STEP_WINDOWS_SQL} SELECT rank, step, ts_ns, end_ns, phase, sampled "
                       "FROM windows", {"run": run_id}).fetchall()
    keys = ("rank", "step", "ts_ns", "end_ns", "phase", "sampled")
    return [dict(zip(keys, r)) for r in rows]


@shared.once
def warm_step_numbers(con, run_id: int, *, warmup: int | None = None) -> list[int]:
    """The step numbers that are warm-up on some rank (its steps before the rank's cut-off, and the
    steps that captured a CUDA graph): what analyses of per-step data pooled over ranks (routing
    counts) leave out."""
    wu = detect(con, run_id, warmup=warmup)
    out = {s for _, s in wu.graph_steps}
    out |= {int(w["step"]) for w in _windows(con, run_id)
            if w["step"] is not None and w["rank"] in wu.cutoffs and w["ts_ns"] < wu.cutoffs[w["rank"]]}
    return sorted(out)


def _capture_steps(con, run_id: int) -> dict[int, set[int]]:
    """Per rank, the steps in which a capture saw the program capture a CUDA graph (its notes)."""
    (text,) = con.execute("SELECT notes FROM runs WHERE run_id = ?", [run_id]).fetchall()[0]
    try:
        ranks = json.loads(text).get("ranks") or {} if text else {}
        return {int(r): {int(s) for s in (n.get("cuda_graphs") or {}).get("capture_steps") or ()}
                for r, n in ranks.items() if isinstance(n, dict)}
    except (ValueError, TypeError, AttributeError):  # notes written by hand or by another tool
        return {}


def _step_events(con, run_id: int, steps: tuple[tuple[int, int], ...]) -> list[tuple[int, int]]:
    """(rank, event_id) of the run's measured events in the (rank, step)s `steps`."""
    if not steps:
        return []
    rows = con.execute(
        f"""WITH s AS (SELECT unnest($ranks) AS rank, unnest($steps) AS step)
            SELECT e.rank, e.event_id FROM events e JOIN s ON e.rank = s.rank AND e.step = s.step
            WHERE e.run_id = $run AND {MEASURES[measure_of(con, run_id)]}""",
        {"run": run_id, "ranks": [r for r, _ in steps], "steps": [s for _, s in steps]}).fetchall()
    return [(int(r), int(e)) for r, e in rows]


def _step_sums(con, run_id: int) -> dict[str, np.ndarray]:
    """Columns rank, step, lt (layer type), ns (summed) of the run's measured events that carry
    their step (capture and attribution fill `events.step`), in one aggregation, as numpy."""
    got = con.execute(
        f"""SELECT rank::BIGINT AS rank, step::BIGINT AS step, coalesce(layer_type, 'other') AS lt,
                   sum(duration_ns)::BIGINT AS ns FROM events
            WHERE run_id = $run AND {MEASURES[measure_of(con, run_id)]} AND step IS NOT NULL
            GROUP BY ALL""", {"run": run_id}).fetchnumpy()
    return {k: np.asarray(v) for k, v in got.items()}


def summary(w: WarmUp, n: int, time_ns: int, n_total: int, *, rank: int | None = None) -> dict:
    """What the warm-up left out, as a dict for a table's meta and `describe`, from counts already made."""
    steps = {r: s for r, s in w.steps.items() if rank is None or r == rank}
    return {"setting": w.setting, "events": int(n), "events_total": int(n_total), "time_ns": int(time_ns),
            "steps": {str(r): s for r, s in sorted(steps.items())},
            "graph_capture_steps": sum(rank is None or r == rank for r, _ in w.graph_steps)}


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
    graphs = info.get("graph_capture_steps") or 0
    per += f" and {graphs} CUDA-graph capture step(s)" if graphs else ""
    return (f"warm-up left out ({info['setting']}): {per}, {info['events']:,} of {info['events_total']:,} events, "
            f"{info['time_ns'] / 1e6:,.3f} ms of their time; --warmup 0 keeps it")
