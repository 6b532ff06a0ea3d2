"""CUDA-graph replays: their kernels mapped to the launches captured into the graph, or segmented.

Every kernel of one replay shares the correlation id of its `cudaGraphLaunch`, so the scope around
that launch says nothing about each kernel. Two ways to do better, tried in this order:

1. Graph map (`graph_map`): when the trace holds the capture phase (runtime calls between a
   `cudaStreamBeginCapture` and its `cudaStreamEndCapture` on one thread: live capture records it,
   vLLM's capture traces hold it), every launch call in that window became one node of the graph,
   in the order captured, with the scopes open around it. A replay's kernels (ordered by start,
   then stream) are matched to a capture whose node kinds (kernel / memcpy / memset, in order) are
   the same sequence, the latest such capture before the replay; kernel i gets the scopes of
   launch i. Replays of one capture must also agree on the kernel names position by position: those
   that differ from the capture's most frequent name sequence are not mapped (counted as name
   mismatches). When several captures fit and their maps differ (layer index or type of some
   position), the latest is used and the replay is counted as ambiguous.
2. Sequence (`sequence`, `sequence_guess`): with a layer pattern (`--pattern`, `--model-config`,
   stored in the run's notes), unmapped replays are cut into layers by `attribute.sequence`.
Anything else keeps its name rule (`graph`). `graph_tables` leaves temp tables for `resolve`:
`_hs_attr_gmap` (event -> the captured launch's thread and time) and `_hs_attr_seq`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from hybridscope.attribute.pattern import LayerPattern
from hybridscope.attribute.sequence import segment
from hybridscope.store.db import GPU_EVENTS, insert_columns

TEMPS = ("_hs_attr_gk", "_hs_attr_cap", "_hs_attr_cl", "_hs_attr_rp", "_hs_attr_gmap", "_hs_attr_seq")

_RUN = "run_id = $run AND ($rank IS NULL OR rank = $rank)"
_NODE_KIND = """CASE WHEN name ILIKE '%LaunchKernel%' OR name ILIKE '%LaunchCooperativeKernel%' THEN 'k'
                     WHEN name ILIKE '%memcpy%' THEN 'c' WHEN name ILIKE '%memset%' THEN 's' END"""


@dataclass
class GraphStats:
    """Counts of one attribution's graph replays (`replays` in all), by outcome."""

    replays: int = 0
    captures: int = 0
    mapped: int = 0
    ambiguous: int = 0
    no_capture_match: int = 0
    name_mismatch: int = 0
    segmented: int = 0
    unsegmented: int = 0
    guessed_kernels: int = 0


def graph_tables(con, params: dict, pattern: LayerPattern | None) -> GraphStats:
    """Build `_hs_attr_gmap` and `_hs_attr_seq` for the run (see the module docstring).

    Needs `_hs_attr_active`, `_hs_attr_sc` (scopes), `_hs_attr_rules` (name rules) and
    `_hs_attr_cc` / `_hs_attr_launch` (resolve.py: kernels and launch per correlation)."""
    stats = GraphStats()
    _replay_kernels(con, params)
    _captures(con, params)
    _match(con)
    stats.captures = con.execute("SELECT count(*) FROM _hs_attr_cap").fetchall()[0][0]
    row = con.execute(
        """SELECT count(*), count(*) FILTER (WHERE mapped), count(*) FILTER (WHERE mapped AND n_maps > 1),
                  count(*) FILTER (WHERE cap_id IS NULL), count(*) FILTER (WHERE cap_id IS NOT NULL AND NOT mapped)
           FROM _hs_attr_rp""").fetchall()[0]
    stats.replays, stats.mapped, stats.ambiguous, no_match, stats.name_mismatch = row
    stats.no_capture_match = no_match if stats.captures else 0
    con.execute(
        """CREATE OR REPLACE TEMP TABLE _hs_attr_gmap AS
           SELECT g.rank, g.event_id, l.pid, l.tid, l.ts_ns AS ts
           FROM _hs_attr_gk g JOIN _hs_attr_rp r ON r.rank = g.rank AND r.correlation = g.correlation
           JOIN _hs_attr_cl l ON l.cap_id = r.cap_id AND l.pos = g.pos
           WHERE r.mapped""")
    con.execute("CREATE OR REPLACE TEMP TABLE _hs_attr_seq (rank INTEGER, event_id BIGINT, layer_index INTEGER,"
                " layer_type VARCHAR, method VARCHAR)")
    if pattern is not None:
        _sequence(con, pattern, stats)
    return stats


def _replay_kernels(con, params: dict) -> None:
    """`_hs_attr_gk`: every GPU event of a replay with its position in the replay and rule type."""
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _hs_attr_gk AS
        WITH gpu AS (
            SELECT rank, event_id, name, kind, ts_ns, coalesce(stream, -1) AS stream,
                   nullif(correlation, 0) AS correlation, graph_id
            FROM events WHERE {_RUN} AND {GPU_EVENTS})
        SELECT g.rank, g.event_id, g.correlation, g.name, g.ts_ns,
               CASE g.kind WHEN 'kernel' THEN 'k' WHEN 'memcpy' THEN 'c' ELSE 's' END AS node_kind,
               r.rule_type,
               (row_number() OVER (PARTITION BY g.rank, g.correlation ORDER BY g.ts_ns, g.stream, g.event_id)
                - 1)::INTEGER AS pos
        FROM gpu g JOIN _hs_attr_cc cc ON cc.rank = g.rank AND cc.correlation = g.correlation
        LEFT JOIN _hs_attr_launch gl ON gl.rank = g.rank AND gl.correlation = g.correlation
        LEFT JOIN _hs_attr_rules r ON r.name = g.name AND r.kind = g.kind
        WHERE g.graph_id IS NOT NULL OR cc.n_kernels > 1 OR coalesce(gl.graph_launch, FALSE)
        """,
        params,
    )


def _captures(con, params: dict) -> None:
    """`_hs_attr_cap` (capture windows) and `_hs_attr_cl` (their launches, in order, with the
    scope each launch ran in and a map signature per capture)."""
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _hs_attr_cap AS
        WITH api AS (
            SELECT rank, coalesce(pid, -1) AS pid, coalesce(tid, -1) AS tid, ts_ns, name FROM events
            WHERE {_RUN} AND source = 'cuda_api' AND (name ILIKE '%BeginCapture%' OR name ILIKE '%EndCapture%')),
        b AS (SELECT *, row_number() OVER (PARTITION BY rank, pid, tid ORDER BY ts_ns) AS k
              FROM api WHERE name ILIKE '%BeginCapture%'),
        e AS (SELECT *, row_number() OVER (PARTITION BY rank, pid, tid ORDER BY ts_ns) AS k
              FROM api WHERE name ILIKE '%EndCapture%')
        SELECT row_number() OVER (ORDER BY b.rank, b.ts_ns) AS cap_id, b.rank, b.pid, b.tid,
               b.ts_ns AS t0, e.ts_ns AS t1
        FROM b JOIN e ON e.rank = b.rank AND e.pid = b.pid AND e.tid = b.tid AND e.k = b.k AND e.ts_ns > b.ts_ns
        """,
        params,
    )
    con.execute(
        f"""
        CREATE OR REPLACE TEMP TABLE _hs_attr_cl AS
        WITH l AS (
            SELECT c.cap_id, a.rank, coalesce(a.pid, -1) AS pid, coalesce(a.tid, -1) AS tid, a.ts_ns,
                   {_NODE_KIND.replace('name', 'a.name')} AS node_kind, a.event_id
            FROM _hs_attr_cap c JOIN events a
              ON a.run_id = $run AND a.rank = c.rank AND a.source = 'cuda_api'
             AND coalesce(a.pid, -1) = c.pid AND coalesce(a.tid, -1) = c.tid AND a.ts_ns > c.t0 AND a.ts_ns < c.t1)
        SELECT l.cap_id, l.rank, l.pid, l.tid, l.ts_ns, l.node_kind,
               (row_number() OVER (PARTITION BY l.cap_id ORDER BY l.ts_ns, l.event_id) - 1)::INTEGER AS pos,
               s.eff_index, s.eff_type
        FROM l ASOF LEFT JOIN _hs_attr_active a ON l.rank = a.rank AND l.pid = a.pid AND l.tid = a.tid AND l.ts_ns >= a.t
        LEFT JOIN _hs_attr_sc s ON s.rank = l.rank AND s.scope_id = a.active
        WHERE l.node_kind IS NOT NULL
        """,
        {"run": params["run"]},
    )


def _match(con) -> None:
    """`_hs_attr_rp`: one row per replay with the capture it maps to (`mapped`) and why not."""
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE _hs_attr_rp AS
        WITH rp AS (
            SELECT rank, correlation, min(ts_ns) AS ts,
                   md5(string_agg(node_kind, '' ORDER BY pos)) AS kinds,
                   md5(string_agg(name, '|' ORDER BY pos)) AS names
            FROM _hs_attr_gk GROUP BY rank, correlation),
        cp AS (
            SELECT cap_id, any_value(rank) AS rank, min(ts_ns) AS t0,
                   md5(string_agg(node_kind, '' ORDER BY pos)) AS kinds,
                   md5(string_agg(coalesce(eff_index, -1)::VARCHAR || ':' || coalesce(eff_type, ''), '|'
                                  ORDER BY pos)) AS map
            FROM _hs_attr_cl GROUP BY cap_id),
        cand AS (
            SELECT rp.rank, rp.correlation, arg_max(cp.cap_id, cp.t0) AS cap_id, count(DISTINCT cp.map) AS n_maps
            FROM rp JOIN cp ON cp.rank = rp.rank AND cp.kinds = rp.kinds AND cp.t0 < rp.ts
            GROUP BY rp.rank, rp.correlation),
        j AS (SELECT rp.*, cand.cap_id, coalesce(cand.n_maps, 0) AS n_maps
              FROM rp LEFT JOIN cand ON cand.rank = rp.rank AND cand.correlation = rp.correlation),
        ref AS (  -- the most frequent name sequence among a capture's replays
            SELECT cap_id, arg_max(names, n) AS names
            FROM (SELECT cap_id, names, count(*) AS n FROM j WHERE cap_id IS NOT NULL GROUP BY cap_id, names)
            GROUP BY cap_id)
        SELECT j.rank, j.correlation, j.cap_id, j.n_maps,
               coalesce(j.cap_id IS NOT NULL AND j.names = ref.names, FALSE) AS mapped
        FROM j LEFT JOIN ref ON ref.cap_id = j.cap_id
        """
    )


def _sequence(con, pattern: LayerPattern, stats: GraphStats) -> None:
    """Segment every unmapped replay against the pattern (one `segment` per distinct sequence)."""
    cols = con.execute(
        """SELECT g.rank, g.correlation, g.event_id, g.rule_type FROM _hs_attr_gk g
           JOIN _hs_attr_rp r ON r.rank = g.rank AND r.correlation = g.correlation
           WHERE NOT r.mapped ORDER BY g.rank, g.correlation, g.pos""").fetchnumpy()
    if not len(cols["event_id"]):
        return
    rank, corr = np.asarray(cols["rank"]), np.asarray(cols["correlation"])
    types = [None if t is None else str(t) for t in _objects(cols["rule_type"])]
    cut = np.flatnonzero((np.diff(rank) != 0) | (np.diff(corr) != 0)) + 1
    memo: dict[tuple, object] = {}
    out = {k: [] for k in ("rank", "event_id", "layer_index", "layer_type", "method")}
    ids = np.asarray(cols["event_id"])
    for a, b in zip(np.r_[0, cut], np.r_[cut, len(ids)]):
        key = tuple(types[a:b])
        if key not in memo:
            memo[key] = segment(key, pattern)
        seg = memo[key]
        if seg is None:
            stats.unsegmented += 1
            continue
        stats.segmented += 1
        inside = np.flatnonzero(seg.layer >= 0)
        stats.guessed_kernels += int(seg.guessed[inside].sum())
        out["rank"] += [int(rank[a])] * len(inside)
        out["event_id"] += ids[a + inside].tolist()
        out["layer_index"] += seg.layer[inside].tolist()
        out["layer_type"] += [seg.layer_type[i] for i in inside]
        out["method"] += ["sequence_guess" if seg.guessed[i] else "sequence" for i in inside]
    if out["event_id"]:
        insert_columns(con, "_hs_attr_seq", out)


def _objects(arr) -> list:
    if isinstance(arr, np.ma.MaskedArray):
        return [None if m else v for v, m in zip(arr.data.tolist(), np.ma.getmaskarray(arr).tolist())]
    return arr.tolist()
