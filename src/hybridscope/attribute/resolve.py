"""Resolution: every GPU event (source='cuda', kind kernel/memcpy/memset) gets one layer type.

Order of decision, per GPU event (all in one columnar pass):
1. CUDA graph replay (several kernels share one launch correlation, the launch is a
   cu(da)GraphLaunch / hipGraphLaunch, or the importer set graph_id): the scope around the graph
   launch says nothing about each node (attribute/graphs.py). A kernel mapped to the launch that
   was captured into the graph is decided like an eager kernel (2-4 below) from the scopes around
   that captured launch, with attr_method 'graph_map' where the scope decided; a kernel placed by
   sequence attribution takes its layer from the segmentation ('sequence' / 'sequence_guess');
   any other replayed kernel is typed by its name rule (`other` if none), attr_method='graph', no
   layer index / module / scope. The step always comes from the replay's own launch.
2. Collectives (a rule with `collective = true`, e.g. NCCL): inside an MoE scope `moe_comm`
   (attr_method 'scope'), elsewhere the rule's type, `comm` (attr_method 'name').
3. Scopes win: the innermost typed scope open on the launching thread (pid, tid) at the launch's
   timestamp (kernel -> cuda_api event with the same correlation) gives the layer type
   (attr_method 'scope'); weak types already yielded in `scopes`. Except where the scope is vague
   and the name precise: a weak scope (`norm`, `mlp`: vLLM names its MoE block `mlp`) under a
   name rule of a strong type (mamba, attention, moe_*), or an MoE container under another moe_*
   rule (`topkGatingSoftmax` inside the MoE block is the router): the name decides ('name').
4. Otherwise the first matching name rule (attr_method 'name'), or `other` (attr_method 'none').
Layer index, module and step come from the scopes around the launch whatever decided the type
(a residual add inside decoder block 7 is `other` but still layer 7), except for graph kernels
(step only). A launch on a thread without a step mark of its own (autograd's backward thread,
a helper thread) takes the step whose range, on any thread of the rank, holds its timestamp.
"""

from __future__ import annotations

from collections.abc import Sequence

import duckdb

from hybridscope.attribute.graphs import GraphStats, graph_tables
from hybridscope.attribute.pattern import LayerPattern
from hybridscope.attribute.rules import Rule, match_table
from hybridscope.store.db import GPU_EVENTS, insert_columns


def resolve(con: duckdb.DuckDBPyConnection, run_id: int, rank: int | None, rules: Sequence[Rule],
            pattern: LayerPattern | None = None) -> GraphStats:
    """Write layer_type, layer_index, module, scope_id, attr_method, step on the run's GPU events;
    returns what happened to the run's CUDA-graph replays.

    Needs the temp tables `build_scopes` leaves (`_hs_attr_sc`, `_hs_attr_active`).
    """
    params = {"run": run_id, "rank": rank}
    _name_rules(con, rules, params)
    _per_correlation(con, params)
    stats = graph_tables(con, params, pattern)
    # The decisions first, then the UPDATE reading them: one UPDATE around the whole decision took
    # 1.8 s on the 5M-event synthetic trace, these two 0.9 + 0.3 s.
    con.execute(f"CREATE OR REPLACE TEMP TABLE _hs_attr_decided AS {_decide(_has_steps(con))}", params)
    con.execute(
        """
        UPDATE events AS e SET layer_type = o.layer_type, layer_index = o.layer_index, module = o.module,
               scope_id = o.scope_id, attr_method = o.attr_method, step = o.step
        FROM _hs_attr_decided AS o
        WHERE e.run_id = $run AND e.rank = o.rank AND e.event_id = o.event_id
        """,
        {"run": run_id},
    )
    return stats


def _has_steps(con) -> bool:
    """Whether any scope marks a step (else no launch takes one from another thread's step)."""
    return con.execute("SELECT count(*) > 0 FROM _hs_attr_sc WHERE own_step IS NOT NULL").fetchall()[0][0]


def _name_rules(con, rules: Sequence[Rule], params: dict) -> None:
    pairs = con.execute(f"SELECT DISTINCT name, kind FROM events WHERE {_GPU}", params).fetchall()
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _hs_attr_rules (name VARCHAR, kind VARCHAR, rule_type VARCHAR,"
        " collective BOOLEAN, rule INTEGER)"
    )
    if pairs:
        insert_columns(con, "_hs_attr_rules", match_table(rules, pairs))


def _per_correlation(con, params: dict) -> None:
    """What graph_tables reads, aggregated once per (rank, correlation): the GPU events' kernel
    count (`_hs_attr_cc`) and whether a launch call is a graph launch (`_hs_attr_launch`)."""
    con.execute(f"""
        CREATE OR REPLACE TEMP TABLE _hs_attr_cc AS
        SELECT rank, nullif(correlation, 0) AS correlation, count(*) FILTER (WHERE kind = 'kernel') AS n_kernels
        FROM events WHERE {_GPU} AND nullif(correlation, 0) IS NOT NULL GROUP BY ALL""", params)
    con.execute("""
        CREATE OR REPLACE TEMP TABLE _hs_attr_launch AS
        SELECT rank, correlation, bool_or(name ILIKE '%graphlaunch%') AS graph_launch
        FROM events
        WHERE run_id = $run AND ($rank IS NULL OR rank = $rank) AND source = 'cuda_api'
          AND correlation IS NOT NULL AND correlation <> 0
        GROUP BY rank, correlation""", params)


_STRONG = "('mamba', 'attention', 'moe_router', 'moe_experts', 'moe_comm')"
_GPU = f"run_id = $run AND ($rank IS NULL OR rank = $rank) AND {GPU_EVENTS}"

# One statement, so DuckDB pipelines it: GPU events, their launches (one per correlation: the
# first), the innermost scope open at each launch (ASOF on the thread timeline), the decision.
# {any_thread_step}: the step whose range (on any thread) holds the launch, when the run marks steps.
_DECIDE = f"""
WITH gpu AS (
    SELECT rank, event_id, name, kind, nullif(correlation, 0) AS correlation, graph_id
    FROM events WHERE {_GPU}),
cc AS (
    SELECT rank, correlation, count(*) AS n_kernels FROM gpu
    WHERE kind = 'kernel' AND correlation IS NOT NULL GROUP BY rank, correlation),
launch AS (
    SELECT rank, correlation, arg_min(coalesce(pid, -1), ts_ns) AS pid,
           arg_min(coalesce(tid, -1), ts_ns) AS tid, min(ts_ns) AS ts,
           bool_or(name ILIKE '%graphlaunch%') AS graph_launch
    FROM events
    WHERE run_id = $run AND ($rank IS NULL OR rank = $rank) AND source = 'cuda_api'
      AND correlation IS NOT NULL AND correlation <> 0
    GROUP BY rank, correlation),
step_marks AS (
    SELECT rank, ts_ns, end_ns, own_step FROM _hs_attr_sc WHERE own_step IS NOT NULL),
la AS (
    SELECT l.rank, l.correlation, l.graph_launch, a.active, {{any_thread_step}}
    FROM launch l
    ASOF LEFT JOIN _hs_attr_active a ON l.rank = a.rank AND l.pid = a.pid AND l.tid = a.tid AND l.ts >= a.t
    {{step_join}}),
gm AS (  -- replayed kernels mapped to their captured launch: the scope open at that launch
    SELECT m.rank, m.event_id, a.active
    FROM _hs_attr_gmap m
    ASOF LEFT JOIN _hs_attr_active a ON m.rank = a.rank AND m.pid = a.pid AND m.tid = a.tid AND m.ts >= a.t),
j AS (
    SELECT g.rank, g.event_id,
           (g.graph_id IS NOT NULL OR coalesce(cc.n_kernels > 1, FALSE)
            OR coalesce(la.graph_launch, FALSE)) AND gm.event_id IS NULL AS is_graph,
           gm.event_id IS NOT NULL AS mapped, sq.method AS seq_method, sq.layer_index AS seq_index,
           sq.layer_type AS seq_type,
           r.rule_type, coalesce(r.collective, FALSE) AS collective,
           s.eff_type, s.type_scope, s.eff_index, coalesce(s.typed_module, s.any_module) AS module,
           coalesce(ls.eff_step, la.any_thread_step) AS eff_step, coalesce(s.in_moe, FALSE) AS in_moe,
           coalesce(s.refinable AND r.rule_type <> s.eff_type AND (
               (s.eff_type IN ('norm', 'mlp') AND r.rule_type IN {_STRONG})
               OR (s.eff_type LIKE 'moe%' AND r.rule_type LIKE 'moe%')), FALSE) AS refined
    FROM gpu g
    LEFT JOIN _hs_attr_rules r ON r.name = g.name AND r.kind = g.kind
    LEFT JOIN cc ON cc.rank = g.rank AND cc.correlation = g.correlation
    LEFT JOIN la ON la.rank = g.rank AND la.correlation = g.correlation
    LEFT JOIN gm ON gm.rank = g.rank AND gm.event_id = g.event_id
    LEFT JOIN _hs_attr_seq sq ON sq.rank = g.rank AND sq.event_id = g.event_id
    LEFT JOIN _hs_attr_sc ls ON ls.rank = g.rank AND ls.scope_id = la.active
    LEFT JOIN _hs_attr_sc s ON s.rank = g.rank AND s.scope_id = coalesce(gm.active, la.active))
SELECT rank, event_id,
       CASE WHEN is_graph AND seq_method IS NOT NULL THEN coalesce(seq_type, rule_type, 'other')
            WHEN is_graph THEN coalesce(rule_type, 'other')
            WHEN collective AND in_moe THEN 'moe_comm'
            WHEN collective THEN rule_type
            WHEN refined THEN rule_type
            WHEN eff_type IS NOT NULL THEN eff_type
            ELSE coalesce(rule_type, 'other') END AS layer_type,
       CASE WHEN is_graph AND seq_method IS NOT NULL THEN seq_method
            WHEN is_graph THEN 'graph'
            WHEN collective AND in_moe THEN (CASE WHEN mapped THEN 'graph_map' ELSE 'scope' END)
            WHEN collective THEN 'name'
            WHEN refined THEN 'name'
            WHEN eff_type IS NOT NULL THEN (CASE WHEN mapped THEN 'graph_map' ELSE 'scope' END)
            WHEN rule_type IS NOT NULL THEN 'name'
            ELSE 'none' END AS attr_method,
       CASE WHEN is_graph THEN seq_index ELSE eff_index END AS layer_index,
       CASE WHEN NOT is_graph THEN module END AS module,
       CASE WHEN NOT is_graph AND NOT refined AND eff_type IS NOT NULL AND (in_moe OR NOT collective)
            THEN type_scope END AS scope_id,
       eff_step AS step
FROM j
"""

_STEP_JOIN = "ASOF LEFT JOIN step_marks st ON l.rank = st.rank AND l.ts >= st.ts_ns"


def _decide(steps: bool) -> str:
    """_DECIDE; without step marks every launch's any_thread_step is NULL, and the ASOF join that
    finds it (a sort of every launch, 0.16 CPU s on 1M launches) is left out."""
    if steps:
        return _DECIDE.format(any_thread_step="CASE WHEN l.ts < st.end_ns THEN st.own_step END AS any_thread_step",
                              step_join=_STEP_JOIN)
    return _DECIDE.format(any_thread_step="NULL::INTEGER AS any_thread_step", step_join="")
