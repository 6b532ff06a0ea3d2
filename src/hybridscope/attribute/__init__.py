"""Attribution: kernel -> launch -> enclosing scopes -> layer (index, module, type); names as fallback.

`attribute_run(con, run_id, rank=...)` is what importers and capture call after inserting a rank's
events, inside their own transaction (it never BEGINs or COMMITs). It is idempotent: it rebuilds
the run's derived scopes and rewrites every GPU event's attribution columns. Afterwards every
event with source='cuda' and kind kernel/memcpy/memset has a non-null `layer_type` from
`vocab.LAYER_TYPES` and an `attr_method` in 'scope' | 'graph' | 'name' | 'none'.

Recognizers (`recognize.classify_module`, `classify_annotation`) are shared with live capture.
See docs/attribution.md.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from hybridscope.attribute.recognize import ModuleInfo, classify_annotation, classify_module
from hybridscope.store.db import GPU_EVENTS

__all__ = ["AttributionSummary", "ModuleInfo", "attribute_run", "classify_annotation", "classify_module"]

_TEMPS = ("_hs_attr_src", "_hs_attr_names", "_hs_attr_bound", "_hs_attr_sc", "_hs_attr_active",
          "_hs_attr_rules")


@dataclass(frozen=True)
class AttributionSummary:
    """What one `attribute_run` call did. Times are summed GPU durations in ns."""

    run_id: int
    rank: int | None
    n_scopes: int
    n_gpu_events: int
    events_by_method: dict[str, int] = field(default_factory=dict)
    ns_by_method: dict[str, int] = field(default_factory=dict)


def attribute_run(con, run_id: int, *, rank: int | None = None,
                  rules_path: str | Path | None = None) -> AttributionSummary:
    """Attribute the GPU events of `run_id` (one rank, or all ranks when None).

    Runs inside the caller's transaction. BadInput when `rules_path` is not a valid rules file
    (checked before anything is written).
    """
    from hybridscope.attribute.resolve import resolve
    from hybridscope.attribute.rules import load_rules
    from hybridscope.attribute.scopes import build_scopes

    rules = load_rules(rules_path)
    try:
        n_scopes = build_scopes(con, run_id, rank)
        resolve(con, run_id, rank, rules)
    finally:
        _drop_temps(con)
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
        events_by_method={r[0]: r[1] for r in rows}, ns_by_method={r[0]: r[2] for r in rows},
    )


def _drop_temps(con) -> None:
    import duckdb

    for name in _TEMPS:
        try:
            con.execute(f"DROP TABLE IF EXISTS {name}")
        except duckdb.Error:  # an aborted transaction refuses everything: the caller rolls back
            return
