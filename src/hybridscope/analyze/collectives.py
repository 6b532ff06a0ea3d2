"""Collectives across ranks: arrivals, waits, stragglers, traffic, clock alignment.

Definitions (docs/analyses.md, "collectives"):
- Collective events: the run's NCCL/RCCL kernels (source 'cuda', kind 'kernel', name starting
  with 'nccl' or 'rccl') when it has any; otherwise the host-side collective ranges of a CPU run
  (gloo's 'gloo:<op>' annotations, which span a collective from enqueue to completion).
- Step: the collective event's own step, else the step scope (kind 'step') of its rank enclosing
  its start (gloo's worker threads carry no step of their own).
- Matching: the k-th collective of process group g on one rank is the k-th of g on every rank
  (collectives of a group are issued in the same order everywhere: NCCL/gloo require it).
  g is the event's 'Process Group Name' arg, '0' when absent.
- Arrival = start of the rank's collective; the last arrival ends everyone's wait.
  wait(rank) = last arrival - arrival(rank), >= 0. The straggler of a collective is the rank that
  arrived last. A rank's wait is time its GPU (or thread) sat in the collective for a peer.
- Step straggler: the rank its peers waited for longest in that step (each collective's summed
  wait charged to the rank that arrived last; ties: the most last arrivals); wait share of a step = sum of every rank's wait / (ranks x step time), step time
  being the mean over ranks of the step's window (analyze/timeline.py step_windows).
- Traffic: from each collective's split sizes ('In split size' rows to each peer, empty = equal
  split), row size = 'In msg nelems' / total rows, element size from 'dtype'. A run without split
  sizes (a capture) takes it from its routing counts: the rows each rank routed to the experts
  another rank owns, experts in contiguous blocks of E / world ranks (rows, no bytes).
- Clock alignment across hosts: ranks leave a collective within microseconds of each other, so
  offset(rank) = median over matched collectives of (end(rank0) - end(rank)); the residual skew is
  the median absolute deviation of that difference after the offset. Ranks of one host share a
  clock and are not shifted.
"""

from __future__ import annotations

import numpy as np

from hybridscope.analyze import shared, timeline
from hybridscope.table import Column, Table, plain

_GPU = "source = 'cuda' AND kind = 'kernel' AND (name LIKE 'nccl%' OR name LIKE 'rccl%')"
_CPU = "source = 'annotation' AND name LIKE 'gloo:%'"

DTYPE_BYTES = {
    "float": 4, "float32": 4, "float16": 2, "half": 2, "bfloat16": 2, "double": 8, "float64": 8,
    "long": 8, "long int": 8, "int64": 8, "int": 4, "int32": 4, "int16": 2, "short": 2, "char": 1,
    "int8": 1, "byte": 1, "uint8": 1, "bool": 1, "float8_e4m3fn": 1, "float8_e5m2": 1,
}


def _predicate(con, run_id: int) -> str:
    n = con.execute(f"SELECT count(*) FROM events WHERE run_id = ? AND {_GPU}", [run_id]).fetchall()[0][0]
    return _GPU if n else _CPU


def _matched_sql(pred: str) -> str:
    """Every collective event with its group, ordinal, arrival and wait (values bound by caller)."""
    return f"""
        WITH c AS (
            SELECT e.rank, e.name, e.ts_ns AS start_ns, e.ts_ns + e.duration_ns AS end_ns, e.args,
                   coalesce(e.step, (SELECT arg_max(s.step, s.ts_ns) FROM scopes s
                                     WHERE s.run_id = $run AND s.rank = e.rank AND s.kind = 'step'
                                       AND s.ts_ns <= e.ts_ns AND e.ts_ns < s.end_ns)) AS step,
                   coalesce(json_extract_string(e.args, '$."Process Group Name"'), '0') AS pg
            FROM (SELECT * FROM events WHERE run_id = $run AND {pred}) e
        ), n AS (
            SELECT *, row_number() OVER (PARTITION BY rank, pg ORDER BY start_ns) - 1 AS seq FROM c
        ), g AS (
            SELECT pg, seq, max(start_ns) AS last_arrival, arg_max(rank, start_ns) AS straggler,
                   count(*) AS n_ranks, max(end_ns) - min(end_ns) AS end_spread
            FROM n GROUP BY pg, seq
        )
        SELECT n.pg, n.seq, n.rank, n.name, n.step, n.start_ns, n.end_ns,
               g.last_arrival - n.start_ns AS wait_ns, n.rank = g.straggler AS is_straggler,
               g.n_ranks, g.end_spread, n.args
        FROM n JOIN g USING (pg, seq)
    """


def _matched(con, run_id: int) -> tuple[str, dict]:
    """(a FROM-able relation of `_matched_sql`'s rows but `args` and `name`, its parameters): inside
    a report (`timeline.materialized`) a temp table computed once for rank_waits and stragglers
    (without the names the matching's window sorts 1.1M collectives of the 10M-kernel run in
    0.30 s instead of 0.42)."""
    sql, params = f"SELECT * EXCLUDE (args, name) FROM ({_matched_sql(_predicate(con, run_id))})", {"run": run_id}
    open_ = shared.block(con, run_id)
    if open_ is None:
        return f"({sql})", params
    name = f"_hs_collectives_{int(run_id)}"
    if name not in open_.extra:
        con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS {sql}", params)
        open_.extra.append(name)
    return name, {}


COLLECTIVE_COLUMNS = (
    Column("pg", "str", "process group"),
    Column("seq", "int", "ordinal of the collective in its group"),
    Column("rank", "int", "rank"),
    Column("name", "kernel", "kernel / op name"),
    Column("step", "int", "step of the rank's collective, when known"),
    Column("start_ns", "int", "arrival (start) on the run's clock"),
    Column("end_ns", "int", "completion on the run's clock"),
    Column("wait_ns", "ns", "last arrival - this rank's arrival", "wait"),
    Column("straggler", "str", "'yes' when this rank arrived last"),
)


def collectives(con, run_id: int) -> Table:
    """One row per (collective, rank): arrival, completion, wait, straggler flag."""
    rows = con.execute(_matched_sql(_predicate(con, run_id)) + " ORDER BY n.pg, n.seq, n.rank",
                       {"run": run_id}).fetchall()
    out = [(pg, int(seq), int(r), name, None if st is None else int(st), int(s), int(e), int(w),
            "yes" if strag else "") for pg, seq, r, name, st, s, e, w, strag, *_ in rows]
    notes = []
    incomplete = {(pg, seq) for pg, seq, *_, nr, _, _ in rows if nr < max((x[9] for x in rows), default=0)}
    if incomplete:
        notes.append(f"{len(incomplete)} collective(s) are missing on some rank (trace windows differ?)")
    return Table("collectives", COLLECTIVE_COLUMNS, out, {"title": f"run {run_id} · collectives by rank",
                                                           "notes": notes, "run_id": run_id})


RANK_COLUMNS = (
    Column("rank", "int", "rank"),
    Column("collectives", "int", "collectives matched", optional=2),
    Column("comm_ns", "ns", "time inside collectives", "in collectives", optional=1),
    Column("wait_ns", "ns", "time waiting for a later peer", "waiting"),
    Column("wait_pct", "pct", "wait / time inside collectives", "wait %"),
    Column("straggler_n", "int", "collectives where this rank arrived last", "last to arrive"),
    Column("p99_wait_ns", "ns", "p99 of the wait per collective", "p99 wait"),
)


def rank_waits(con, run_id: int) -> Table:
    """Per rank: how long it sat in collectives, how much of that was waiting, how often it was last."""
    matched, params = _matched(con, run_id)
    with shared.quantile_memory(con, run_id):
        rows = con.execute(f"""
            SELECT rank, count(*), sum(end_ns - start_ns), sum(wait_ns), count(*) FILTER (WHERE is_straggler),
                   quantile_cont(wait_ns, 0.99)
            FROM {matched} GROUP BY rank ORDER BY rank""", params).fetchall()
    out = [(int(r), int(n), int(c), int(w), 100.0 * w / c if c else None, int(s), plain(p)) for r, n, c, w, s, p in rows]
    return Table("rank_waits", RANK_COLUMNS, out, {"title": f"run {run_id} · collective wait per rank", "run_id": run_id})


STEP_COLUMNS = (
    Column("step", "int", "step"),
    Column("straggler", "int", "rank whose late arrivals its peers waited for longest in the step"),
    Column("caused_ns", "ns", "wait of the peers in the collectives where the straggler arrived last",
           "wait it caused"),
    Column("last_n", "int", "collectives where it arrived last", "times last", optional=1),
    Column("collectives", "int", "collectives in the step", optional=3),
    Column("wait_ns", "ns", "sum of every rank's wait in the step", "total wait"),
    Column("step_ns", "ns", "mean step time over ranks", "step time", optional=2),
    Column("wait_share_pct", "pct", "total wait / (ranks x step time)", "wait share"),
)


def stragglers(con, run_id: int) -> Table:
    """Per step: who was the straggler, and what share of the step its peers spent waiting.

    The straggler is charged with every collective where it arrived last: the wait of all ranks
    in it. A rank milliseconds late at one collective outweighs a peer microseconds late at three
    (counting arrivals alone would name the peer)."""
    matched, params = _matched(con, run_id)
    rows = con.execute(f"""
        WITH m AS (SELECT * FROM {matched}),
        per_rank AS (
            SELECT step, rank, count(*) FILTER (WHERE is_straggler) AS last_n,
                   coalesce(sum(coll_wait) FILTER (WHERE is_straggler), 0) AS caused
            FROM (SELECT *, sum(wait_ns) OVER (PARTITION BY pg, seq) AS coll_wait FROM m)
            WHERE step IS NOT NULL GROUP BY step, rank
        ),
        pick AS (SELECT step, rank AS straggler, caused, last_n FROM per_rank
                 QUALIFY row_number() OVER (PARTITION BY step ORDER BY caused DESC, last_n DESC, rank DESC) = 1),
        totals AS (SELECT step, count(DISTINCT (pg, seq)) AS n, sum(wait_ns) AS wait, count(DISTINCT rank) AS ranks
                   FROM m WHERE step IS NOT NULL GROUP BY step)
        SELECT t.step, p.straggler, p.caused, p.last_n, t.n, t.wait, t.ranks
        FROM totals t JOIN pick p USING (step) ORDER BY t.step""", params).fetchall()
    spans: dict[int, list[int]] = {}  # the report's own step windows: one definition of a step
    for w in timeline.step_windows(con, run_id):
        spans.setdefault(w["step"], []).append(w["end_ns"] - w["ts_ns"])
    out = []
    for step, strag, caused, last_n, n, wait, ranks in rows:
        step_ns = float(np.mean(spans[step])) if step in spans else None
        share = 100.0 * wait / (ranks * step_ns) if step_ns else None
        out.append((int(step), int(strag), int(caused), int(last_n), int(n), int(wait), plain(step_ns), share))
    notes = [] if out else ["no collective carries a step: attribute step scopes first (record_function 'step#i')"]
    return Table("stragglers", STEP_COLUMNS, out, {"title": f"run {run_id} · stragglers per step",
                                                    "notes": notes, "run_id": run_id})


TRAFFIC_COLUMNS = (
    Column("src_rank", "int", "sending rank"),
    Column("dst_rank", "int", "receiving rank"),
    Column("rows", "int", "rows (tokens) sent"),
    Column("bytes", "int", "bytes sent"),
    Column("collectives", "int", "collectives with split sizes"),
)


def traffic(con, run_id: int, *, payload_only: bool = False) -> Table:
    """Rank x rank bytes of the run's all-to-alls, from their split sizes (module doc).

    `payload_only` leaves out integer-typed collectives: the split-size exchanges that precede
    an all-to-all-v carry counts, not tokens."""
    # each args parsed once for its five fields; one row per distinct shape, not per collective
    rows = con.execute(f"""
        WITH a AS (SELECT rank, json_extract_string(args, ['$."In split size"', '$."In msg nelems"', '$."Group size"',
                                                         '$.dtype', '$."Process Group Ranks"']) AS f
                   FROM events WHERE run_id = $run AND {_GPU})
        SELECT rank, f[1], f[2], f[3], lower(f[4]), f[5], count(*) FROM a WHERE f[1] IS NOT NULL
        GROUP BY ALL""", {"run": run_id}).fetchall()
    acc: dict[tuple[int, int], list[int]] = {}
    for rank, splits, nelems, group, dtype, ranks, times in rows:
        peers = _int_list(ranks) or list(range(int(group or 0)))
        sizes = _int_list(splits)
        if not peers or nelems is None:
            continue
        nelems = int(nelems)
        if not sizes:  # equal split
            sizes = [nelems // len(peers)] * len(peers)
            row_elems = 1
        else:
            row_elems = nelems // max(1, sum(sizes))
        elem = DTYPE_BYTES.get((dtype or "").replace("c10::", ""), 0)
        if payload_only and dtype and dtype.replace("c10::", "") in _INT_TYPES:
            continue
        for peer, n in zip(peers, sizes):
            cell = acc.setdefault((int(rank), peer), [0, 0, 0])
            cell[0] += n * times
            cell[1] += n * row_elems * elem * times
            cell[2] += times
    out = [(s, d, r, b, c) for (s, d), (r, b, c) in sorted(acc.items())]
    source = "split sizes"
    if not out:
        out, source = _traffic_from_routing(con, run_id), "routing"
    notes = []
    if source == "routing" and out:
        notes.append("from the routing counts: experts owned in contiguous blocks of E / world ranks "
                     "(the engine's and Megatron's layout); rows only, no bytes")
    elif not out:
        notes.append("no collective with split sizes (Kineto record_param_comms args) and no routing counts")
    return Table("traffic", TRAFFIC_COLUMNS, out, {"title": f"run {run_id} · all-to-all traffic", "notes": notes,
                                                   "run_id": run_id, "source": source})


def _traffic_from_routing(con, run_id: int) -> list[tuple]:
    """(src, dst, rows, None, MoE calls) per rank pair: the (token, expert) rows each rank routed to
    the experts another rank owns. Expert e of a layer with E experts lives on rank e // (E / world)."""
    world = con.execute("SELECT world_size FROM runs WHERE run_id = ?", [run_id]).fetchall()
    world = int(world[0][0] or 1) if world else 1
    if world < 2:
        return []
    rows = con.execute("""
        WITH ne AS (SELECT layer_index, max(expert) + 1 AS n FROM routing WHERE run_id = $run GROUP BY layer_index)
        SELECT r.rank, r.expert // (ne.n // $world) AS dst, sum(r.tokens)::BIGINT,
               count(DISTINCT (r.step, r.layer_index))
        FROM routing r JOIN ne USING (layer_index)
        WHERE r.run_id = $run AND ne.n % $world = 0
        GROUP BY ALL ORDER BY ALL""", {"run": run_id, "world": world}).fetchall()
    return [(int(s), int(d), int(n), None, int(c)) for s, d, n, c in rows]





_INT_TYPES = frozenset({"long", "long int", "int64", "int", "int32", "int16", "short", "char", "int8", "byte",
                        "uint8", "bool"})


def _int_list(text: str | None) -> list[int]:
    if not text:
        return []
    body = text.strip().strip("[]").strip()
    return [int(x) for x in body.split(",") if x.strip()] if body else []


def clock_offsets(con, run_id: int) -> dict[int, tuple[int, float]]:
    """{rank: (offset_ns to add to its timestamps, residual skew ns)} from collective completions."""
    rows = con.execute(f"""
        WITH m AS ({_matched_sql(_predicate(con, run_id))})
        SELECT a.rank, list(b.end_ns - a.end_ns) FROM m a JOIN m b ON a.pg = b.pg AND a.seq = b.seq AND b.rank = 0
        GROUP BY a.rank ORDER BY a.rank""", {"run": run_id}).fetchall()
    result = {}
    for rank, diffs in rows:
        d = np.asarray(diffs, dtype=np.int64)
        off = int(np.median(d))
        result[int(rank)] = (off, float(np.median(np.abs(d - off))))
    return result


LOAD_COLUMNS = (
    Column("rank", "int", "the rank whose tokens were routed"),
    Column("layer_index", "int", "MoE layer", "layer"),
    Column("expert", "int", "expert"),
    Column("tokens", "int", "tokens this rank routed to the expert over the run"),
    Column("share_pct", "pct", "share of this rank's tokens in the layer", "share"),
)


def rank_expert_load(con, run_id: int) -> Table:
    """Per rank, MoE layer and expert: the tokens behind each rank's traffic (routing table)."""
    rows = con.execute("""
        SELECT rank, layer_index, expert, sum(tokens)::BIGINT,
               100.0 * sum(tokens) / nullif(sum(sum(tokens)) OVER (PARTITION BY rank, layer_index), 0)
        FROM routing WHERE run_id = ? GROUP BY rank, layer_index, expert ORDER BY rank, layer_index, expert""",
        [run_id]).fetchall()
    notes = [] if rows else ["no routing recorded (capture records it; imports of Kineto traces do not)"]
    return Table("rank_expert_load", LOAD_COLUMNS, [tuple(plain(v) for v in r) for r in rows],
                 {"title": f"run {run_id} · tokens per expert behind each rank's traffic", "notes": notes,
                  "run_id": run_id})


def imbalance_vs_wait(con, run_id: int) -> Table:
    """Per step routing imbalance (experts.imbalance, worst layer) against the step's summed
    collective wait (stragglers): Pearson and Spearman over the steps that have both."""
    from hybridscope.analyze.experts import pearson, spearman, step_imbalance

    imb = step_imbalance(con, run_id)
    waits = {r["step"]: r["wait_ns"] for r in stragglers(con, run_id).to_records()}
    steps = sorted(set(imb) & set(waits))
    xs = np.array([imb[s] for s in steps], dtype=np.float64)
    ys = np.array([waits[s] for s in steps], dtype=np.float64)
    rows = [("imbalance", "wait_ns", len(steps), pearson(xs, ys), spearman(xs, ys))] if steps else []
    cols = (Column("x", "str"), Column("y", "str"), Column("n", "int", "steps with routing and collectives"),
            Column("pearson", "float", "Pearson r"), Column("spearman", "float", "Spearman rho"))
    notes = [] if rows else ["needs routing counts and matched collectives in the same steps"]
    return Table("imbalance_vs_wait", cols, rows, {"title": f"run {run_id} · does imbalance make ranks wait?",
                                                    "notes": notes, "run_id": run_id})
