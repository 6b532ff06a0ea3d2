"""Scopes: the CPU ranges that give kernels their meaning, built from a run's events.

Sources (one rank of one run): annotation events (source='annotation': record_function, NVTX,
capture's ranges) and python frames of nn.Modules (source='cpu', kind='python', names
`nn.Module: Class_N`). Zero-length ranges enclose nothing and are skipped.

For each scope, on its thread (pid, tid), in columnar SQL:
- depth and parent from a sweep over start/end boundaries (running sum; parent = the latest scope
  one level up that started before it: an ASOF join);
- its own meaning from `recognize` (classified once per distinct name);
- layer index of nn.Module decoder blocks = order of first appearance among the top-level blocks of
  the rank (the profiler's `_N` suffix counts instances per class, so Jamba's
  JambaMambaDecoderLayer_1 is not layer 1); paths in annotation names give theirs directly;
- effective values inherited down the tree, one UPDATE per depth level: layer type of the
  innermost typed scope (weak types `norm`/`mlp` yield to an enclosing strong type), layer index
  of the innermost scope that knows one, module label, step; `refinable` when that type came
  from a weak scope or an MoE container (a kernel name may then say more, see `resolve`).

The scope_id of a scope is the event_id of the event it came from (unique per run and rank).
Rows of kind 'annotation' | 'module' | 'step' for the run (and rank) are replaced on every call;
other kinds (capture's 'layer' rows) are left alone.

Temp tables left for `resolve`: `_hs_attr_sc` (scopes with effective columns) and
`_hs_attr_active` (thread timeline: from `t` on, the innermost active scope is `active`).
"""

from __future__ import annotations

import duckdb

from hybridscope.attribute.recognize import WEAK_TYPES, classify_annotation, parse_module_frame

SCOPE_KINDS = ("annotation", "module", "step")
_WEAK = "(" + ", ".join(f"'{t}'" for t in sorted(WEAK_TYPES)) + ")"


def build_scopes(con: duckdb.DuckDBPyConnection, run_id: int, rank: int | None) -> int:
    """(Re)build the scopes of `run_id` (one rank, or all when None); returns how many."""
    _load_sources(con, run_id, rank)
    _classify_names(con)
    _nest(con)
    _mark_lm_head(con)
    _propagate(con, "type")
    _rank_blocks(con)
    _propagate(con, "index")
    _write(con, run_id, rank)
    return con.execute("SELECT count(*) FROM _hs_attr_sc").fetchall()[0][0]


def _load_sources(con, run_id: int, rank: int | None) -> None:
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE _hs_attr_src AS
        SELECT rank, event_id AS scope_id, name, coalesce(pid, -1) AS pid, coalesce(tid, -1) AS tid,
               ts_ns, ts_ns + duration_ns AS end_ns, (kind = 'python') AS is_frame,
               -- live capture knew the module (live.plan: structure first): its role and type win
               CASE WHEN source = 'annotation' THEN json_extract_string(args, '$.role') END AS cap_role,
               CASE WHEN source = 'annotation' AND json_extract_string(args, '$.role') <> 'block'
                    THEN layer_type END AS cap_type
        FROM events
        WHERE run_id = $run AND ($rank IS NULL OR rank = $rank) AND duration_ns > 0
          AND (source = 'annotation'
               OR (source = 'cpu' AND kind = 'python' AND name LIKE 'nn.Module:%'))
        """,
        {"run": run_id, "rank": rank},
    )


def _classify_names(con) -> None:
    names = [r[0] for r in con.execute("SELECT DISTINCT name FROM _hs_attr_src").fetchall()]
    cols: dict[str, list] = {k: [] for k in ("name", "role", "own_type", "own_index", "module_class",
                                              "module_path", "own_step")}
    for name in names:
        info = classify_annotation(name)
        frame = parse_module_frame(name)
        cols["name"].append(name)
        cols["role"].append(info.role if info else None)
        cols["own_type"].append(info.layer_type if info else None)
        cols["own_index"].append(info.layer_index if info else None)
        cols["module_class"].append(info.module_class if info and info.module_class else
                                    (frame[0] if frame else None))
        cols["module_path"].append(info.module_path if info else None)
        cols["own_step"].append(info.step if info else None)
    con.execute(
        "CREATE OR REPLACE TEMP TABLE _hs_attr_names (name VARCHAR, role VARCHAR, own_type VARCHAR,"
        " own_index INTEGER, module_class VARCHAR, module_path VARCHAR, own_step INTEGER)"
    )
    if names:
        from hybridscope.store.db import insert_columns

        insert_columns(con, "_hs_attr_names", cols)


def _nest(con) -> None:
    """Depth, parent and the boundary timeline of every thread."""
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE _hs_attr_bound AS
        WITH b AS (
            SELECT rank, pid, tid, ts_ns AS t, 1 AS delta, -end_ns AS k1, scope_id AS k2, scope_id
            FROM _hs_attr_src
            UNION ALL
            SELECT rank, pid, tid, end_ns, -1, -ts_ns, -scope_id, scope_id FROM _hs_attr_src)
        -- at one instant: ends before starts (half-open ranges), inner ends first, outer starts first
        SELECT *, sum(delta) OVER w AS running, row_number() OVER w AS seq
        FROM b
        WINDOW w AS (PARTITION BY rank, pid, tid ORDER BY t, delta, k1, k2
                     ROWS BETWEEN UNBOUNDED PRECEDING AND CURRENT ROW)
        """
    )
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE _hs_attr_sc AS
        WITH s AS (
            SELECT src.*, b.running - 1 AS depth, b.seq,
                   coalesce(src.cap_role, n.role) AS role,
                   CASE WHEN src.cap_role IS NOT NULL THEN src.cap_type ELSE n.own_type END AS own_type,
                   n.own_index, n.module_class, n.module_path, n.own_step
            FROM _hs_attr_src src
            JOIN _hs_attr_bound b ON b.delta = 1 AND b.scope_id = src.scope_id AND b.rank = src.rank
            LEFT JOIN _hs_attr_names n ON n.name = src.name)
        SELECT c.*, p.scope_id AS parent_id, FALSE AS anc_block,
               c.own_type AS eff_type, CASE WHEN c.own_type IS NOT NULL THEN c.scope_id END AS type_scope,
               CASE WHEN c.own_type IS NOT NULL
                    THEN coalesce(c.module_path, c.module_class, c.name) END AS typed_module,
               coalesce(c.module_path, c.module_class) AS any_module,
               c.own_index AS eff_index, c.own_step AS eff_step,
               coalesce(c.own_type IN ('moe_router', 'moe_experts', 'moe_comm'), FALSE) AS in_moe,
               coalesce(c.role = 'moe' OR c.own_type IN ('norm', 'mlp'), FALSE) AS refinable
        FROM s c ASOF LEFT JOIN s p
          ON c.rank = p.rank AND c.pid = p.pid AND c.tid = p.tid AND c.depth - 1 = p.depth
         AND c.seq > p.seq
        """
    )


def _mark_lm_head(con) -> None:
    """A bare projection called directly by a ...ForCausalLM frame is its lm_head (HF's `lm_head` is a
    plain `Linear`). Only a projection: a block, norm or router whose class no rule knows is not the
    LM head, whatever frame called it (vLLM's `TransformerBlock` under `GptOssForCausalLM`)."""
    con.execute(
        """
        UPDATE _hs_attr_sc AS c SET own_type = 'lm_head', role = 'lm_head', eff_type = 'lm_head',
               type_scope = c.scope_id, typed_module = coalesce(c.module_class, c.name)
        FROM _hs_attr_sc AS p
        WHERE c.parent_id = p.scope_id AND c.rank = p.rank AND p.role = 'causal_lm'
          AND c.is_frame AND c.own_type IS NULL AND c.role IS NULL
          AND regexp_matches(coalesce(c.module_class, ''), '^(Linear|\\w*(LMHead|LmHead|ParallelLMHead|Linear))$')
        """
    )


def _levels(con) -> int:
    return con.execute("SELECT coalesce(max(depth), 0) FROM _hs_attr_sc").fetchall()[0][0]


def _propagate(con, what: str) -> None:
    """Inherit effective columns from the parent, level by level (parents are final first)."""
    if what == "type":
        assign = f"""
            eff_type = CASE WHEN c.own_type IS NULL THEN p.eff_type
                            WHEN c.own_type IN {_WEAK} AND p.eff_type IS NOT NULL
                                 AND p.eff_type NOT IN {_WEAK} THEN p.eff_type
                            ELSE c.own_type END,
            type_scope = CASE WHEN c.own_type IS NULL THEN p.type_scope
                              WHEN c.own_type IN {_WEAK} AND p.eff_type IS NOT NULL
                                   AND p.eff_type NOT IN {_WEAK} THEN p.type_scope
                              ELSE c.scope_id END,
            typed_module = CASE WHEN c.own_type IS NULL THEN p.typed_module
                                WHEN c.own_type IN {_WEAK} AND p.eff_type IS NOT NULL
                                     AND p.eff_type NOT IN {_WEAK} THEN p.typed_module
                                ELSE coalesce(c.module_path, c.module_class, c.name) END,
            refinable = CASE WHEN c.own_type IS NULL THEN p.refinable
                             WHEN c.own_type IN {_WEAK} AND p.eff_type IS NOT NULL
                                  AND p.eff_type NOT IN {_WEAK} THEN p.refinable
                             ELSE c.refinable END,
            in_moe = c.in_moe OR p.in_moe,
            anc_block = p.anc_block OR coalesce(p.role = 'block', FALSE),
            eff_step = coalesce(c.own_step, p.eff_step)"""
    else:
        assign = """
            eff_index = coalesce(c.own_index, p.eff_index),
            any_module = coalesce(c.module_path, c.module_class, p.any_module)"""
    for depth in range(1, _levels(con) + 1):
        con.execute(
            f"""UPDATE _hs_attr_sc AS c SET {assign}
                FROM _hs_attr_sc AS p
                WHERE c.depth = $d AND c.parent_id = p.scope_id AND c.rank = p.rank""",
            {"d": depth},
        )


def _rank_blocks(con) -> None:
    """Layer index of nn.Module blocks: order of first appearance among top-level blocks."""
    con.execute(
        """
        UPDATE _hs_attr_sc AS c SET own_index = r.idx, eff_index = r.idx
        FROM (SELECT rank, name, (row_number() OVER (PARTITION BY rank ORDER BY first_ts, name) - 1)::INTEGER AS idx
              FROM (SELECT rank, name, min(ts_ns) AS first_ts FROM _hs_attr_sc
                    WHERE is_frame AND role = 'block' AND NOT anc_block AND own_index IS NULL
                    GROUP BY rank, name)) AS r
        WHERE c.rank = r.rank AND c.name = r.name AND c.is_frame
        """
    )


def _write(con, run_id: int, rank: int | None) -> None:
    con.execute(
        "DELETE FROM scopes WHERE run_id = $run AND ($rank IS NULL OR rank = $rank) AND kind IN "
        "('annotation', 'module', 'step')",
        {"run": run_id, "rank": rank},
    )
    con.execute(
        """
        INSERT INTO scopes (run_id, rank, scope_id, kind, name, pid, tid, ts_ns, end_ns, depth,
                            parent_id, module_class, module_path, layer_index, layer_type, step)
        SELECT $run, rank, scope_id,
               CASE WHEN own_step IS NOT NULL THEN 'step' WHEN is_frame THEN 'module' ELSE 'annotation' END,
               name, nullif(pid, -1), nullif(tid, -1), ts_ns, end_ns, depth, parent_id,
               module_class, module_path, eff_index, eff_type, eff_step
        FROM _hs_attr_sc
        """,
        {"run": run_id},
    )
    # The thread timeline for resolution: after boundary `t`, the innermost open scope is `active`.
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE _hs_attr_active AS
        SELECT b.rank, b.pid, b.tid, b.t,
               CASE WHEN b.delta = 1 THEN b.scope_id ELSE s.parent_id END AS active
        FROM _hs_attr_bound b JOIN _hs_attr_sc s ON s.scope_id = b.scope_id AND s.rank = b.rank
        QUALIFY row_number() OVER (PARTITION BY b.rank, b.pid, b.tid, b.t ORDER BY b.seq DESC) = 1
        """
    )
