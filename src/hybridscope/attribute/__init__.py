"""Attribution: kernel -> launch -> enclosing scopes -> layer (index, module, type); names as fallback.

`attribute_run(con, run_id, rank=...)` is what importers and capture call after inserting a rank's
events, inside their own transaction (it never BEGINs or COMMITs). It is idempotent: it rebuilds
the run's derived scopes and rewrites every GPU event's attribution columns. Afterwards every
event with source='cuda' and kind kernel/memcpy/memset has a non-null `layer_type` from
`vocab.LAYER_TYPES` and an `attr_method` in 'scope' | 'graph_map' | 'sequence' | 'sequence_guess' |
'graph' | 'name' | 'none' (resolve.py says when each applies; graphs.py for CUDA-graph replays).

Recognizers (`recognize.classify_module`, `classify_annotation`) are shared with live capture.
See docs/attribution.md.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hybridscope.attribute.graphs import TEMPS as GRAPH_TEMPS
from hybridscope.attribute.graphs import GraphStats
from hybridscope.attribute.pattern import LayerPattern
from hybridscope.attribute.recognize import ModuleInfo, classify_annotation, classify_module
from hybridscope.store.db import GPU_EVENTS

__all__ = ["AttributionSummary", "ModuleInfo", "attribute_run", "classify_annotation", "classify_module"]

_TEMPS = ("_hs_attr_src", "_hs_attr_names", "_hs_attr_bound", "_hs_attr_sc", "_hs_attr_active",
          "_hs_attr_rules", "_hs_attr_cc", "_hs_attr_launch", "_hs_attr_decided", *GRAPH_TEMPS)


@dataclass(frozen=True)
class AttributionSummary:
    """What one `attribute_run` call did. Times are summed GPU durations in ns."""

    run_id: int
    rank: int | None
    n_scopes: int
    n_gpu_events: int
    events_by_method: dict[str, int] = field(default_factory=dict)
    ns_by_method: dict[str, int] = field(default_factory=dict)
    graphs: GraphStats = field(default_factory=GraphStats)


def attribute_run(con, run_id: int, *, rank: int | None = None, rules_path: str | Path | None = None,
                  pattern: LayerPattern | None = None) -> AttributionSummary:
    """Attribute the GPU events of `run_id` (one rank, or all ranks when None).

    `pattern`: the model's layers, for sequence attribution of CUDA-graph replays that no captured
    graph maps; it is stored in the run's notes (`layer_pattern`) and used again by later calls
    that give none. Runs inside the caller's transaction. BadInput when `rules_path` is not a
    valid rules file (checked before anything is written).
    """
    from hybridscope.attribute.resolve import resolve
    from hybridscope.attribute.rules import load_rules
    from hybridscope.attribute.scopes import build_scopes

    rules = load_rules(rules_path)
    pattern = _pattern(con, run_id, pattern)
    try:
        n_scopes = build_scopes(con, run_id, rank)
        graphs = resolve(con, run_id, rank, rules, pattern)
    finally:
        _drop_temps(con)
    _note_graphs(con, run_id, rank, graphs, pattern)
    rows = con.execute(
        f"""
        SELECT attr_method, count(*), coalesce(sum(duration_ns), 0)::BIGINT FROM events
        WHERE run_id = $run AND ($rank IS NULL OR rank = $rank) AND {GPU_EVENTS}
        GROUP BY attr_method
        """,
        {"run": run_id, "rank": rank},
    ).fetchall()
    return AttributionSummary(
        run_id=run_id, rank=rank, n_scopes=n_scopes, n_gpu_events=sum(r[1] for r in rows),
        events_by_method={r[0]: r[1] for r in rows}, ns_by_method={r[0]: r[2] for r in rows}, graphs=graphs,
    )


def _pattern(con, run_id: int, given: LayerPattern | None) -> LayerPattern | None:
    """The pattern given, else the one stored in the run's notes by an earlier attribution."""
    if given is not None:
        return given
    from hybridscope.attribute.pattern import from_note

    row = con.execute("SELECT json_extract(notes, '$.layer_pattern') FROM runs WHERE run_id = ?",
                      [run_id]).fetchall()
    stored = json.loads(row[0][0]) if row and row[0][0] else None
    return from_note(stored) if isinstance(stored, list) else None


def _note_graphs(con, run_id: int, rank: int | None, graphs: GraphStats, pattern: LayerPattern | None) -> None:
    """The pattern and what happened to the CUDA-graph replays, in the run's notes: the counts
    `attribution` shows (per rank under graph_replays.<rank>, 'all' when ranks were pooled)."""
    row = con.execute("SELECT notes FROM runs WHERE run_id = ?", [run_id]).fetchall()
    if not row:
        return
    notes = json.loads(row[0][0]) if row[0][0] else {}
    if pattern is not None:
        notes["layer_pattern"] = pattern.as_note()
    if graphs.replays or str(rank if rank is not None else "all") in notes.get("graph_replays", {}):
        notes.setdefault("graph_replays", {})[str(rank if rank is not None else "all")] = asdict(graphs)
    con.execute("UPDATE runs SET notes = ? WHERE run_id = ?", [json.dumps(notes), run_id])


def _drop_temps(con) -> None:
    import duckdb

    for name in _TEMPS:
        try:
            con.execute(f"DROP TABLE IF EXISTS {name}")
        except duckdb.Error:  # an aborted transaction refuses everything: the caller rolls back
            return
