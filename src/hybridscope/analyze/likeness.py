"""Like with like: what a run measured, and the refusal to compare runs that measured different things.

A run's identity (docs/analyses.md, "compare"):
- measure: what its durations are (decompose.measure_of): GPU 'kernels', capture's per-module
  'layers' timings, or 'host_api' calls. A kernel and the layer around it are different numbers.
- device: `runs.device_name` ('NVIDIA H200', or the CPU's architecture for a CPU capture).
- model: the layer structure the attribution found, 'N layers: type, type, ...' (distinct layer
  indexes, and the layer types that carry one); None when no event has a layer index (an
  unlabelled trace): then the model is not compared.
"""

from __future__ import annotations

from hybridscope.analyze.decompose import MEASURES, measure_of
from hybridscope.errors import BadInput

FIELDS = ("measure", "device", "model")


def identity(con, run_id: int) -> dict:
    """{'device': ..., 'model': ...} of a run (module doc); the measure comes from measure_of."""
    dev = con.execute("SELECT device_name FROM runs WHERE run_id = ?", [run_id]).fetchall()
    rows = con.execute(
        f"""SELECT count(DISTINCT layer_index), list(DISTINCT layer_type ORDER BY layer_type)
            FROM events WHERE run_id = ? AND {MEASURES[measure_of(con, run_id)]}
              AND layer_index IS NOT NULL AND layer_type IS NOT NULL""", [run_id]).fetchall()
    n, types = rows[0] if rows else (0, None)
    model = f"{n} layers: {', '.join(types)}" if n else None
    return {"device": dev[0][0] if dev else None, "model": model}


def mismatches(a: dict, b: dict) -> list[str]:
    """The fields of FIELDS on which two runs' info differ (a field unknown on either side is not compared)."""
    return [f for f in FIELDS if a.get(f) is not None and b.get(f) is not None and a[f] != b[f]]


def require_like(a: dict, b: dict, *, what_a: str, what_b: str, force: bool) -> list[str]:
    """BadInput (one line) when `a` and `b` measured different things, unless `force`; with
    `force`, the notes that say what differs. Also notes a field neither side could tell."""
    diff = mismatches(a, b)
    if diff and not force:
        parts = "; ".join(f"{f} {a[f]!r} vs {b[f]!r}" for f in diff)
        raise BadInput(f"{what_a} and {what_b} are not like with like ({parts}); "
                       "pass --force to compare them anyway")
    notes = [f"compared although the {f} differs (--force): {a[f]!r} vs {b[f]!r}" for f in diff]
    unknown = [f for f in FIELDS if a.get(f) is None or b.get(f) is None]
    if unknown:
        notes.append(f"not known on both sides, so not compared: {', '.join(unknown)}")
    return notes
