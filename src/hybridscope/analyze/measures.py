"""What a run measured: GPU kernels, capture's per-module layer timings, or host API calls.

One definition, shared by decompose, compare, the warm-up rule and the report: `MEASURES` maps a
measure to its `events` predicate (our constants, never user input); `measure_of` picks a run's.
"""

from __future__ import annotations

from hybridscope.analyze.shared import once
from hybridscope.store.db import GPU_EVENTS

MEASURES: dict[str, str] = {
    "kernels": GPU_EVENTS,
    "layers": "source = 'layer' AND kind = 'layer'",
    "host_api": "source = 'host_api'",
}


@once
def measure_of(con, run_id: int) -> str:
    """'kernels' when the run has GPU events, else 'layers' (capture's layer timings), else 'host_api'."""
    for measure in ("kernels", "layers", "host_api"):
        n = con.execute(f"SELECT count(*) FROM (SELECT 1 FROM events WHERE run_id = ? AND {MEASURES[measure]} LIMIT 1)",
                        [run_id]).fetchall()[0][0]
        if n:
            return measure
    return "kernels"
