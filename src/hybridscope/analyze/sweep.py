"""One pass over each device's kernels in time order, in bounded memory: the running maxima that the
interval analyses (duty cycle, overlap, gaps, launch-bound, conflicts) are sums over.

Input: a temp table of kernels sorted by (rank, device, ts_ns, end_ns, ev), so that its rowid is
that order (timeline.materialized builds it). Output: a temp table with one row per input row, in
the same order (read side by side with POSITIONAL JOIN):
- prev_max: the latest end among the earlier kernels of the device (NULL for its first kernel);
- prev_compute / prev_comm / prev_phase: the same among earlier compute kernels (layer type not in
  timeline.COMM_TYPES) / communication kernels / kernels of the same phase;
- holder, holder_code: input rowid and layer type code of the latest earlier kernel whose end is
  prev_max (the kernel before an idle gap, when this kernel starts one);
- next_start: for moe_comm kernels, the first start of any kernel of the device at or after
  this kernel's end (NULL when none).
The kernels are read CHUNK_ROWS at a time as numeric columns (layer type and phase as dictionary
codes), the running state carried from chunk to chunk: memory holds one chunk whatever the run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

NONE = int(np.iinfo(np.int64).min)  # "no earlier kernel": NULL once read back through the view
CHUNK_ROWS = 1 << 20
COLUMNS = ("prev_max", "prev_compute", "prev_comm", "prev_phase", "holder", "holder_code", "next_start")


@dataclass
class _Carry:
    """What a device's earlier chunks leave to its next one."""

    run_max: int = NONE
    compute_max: int = NONE
    comm_max: int = NONE
    phase_max: dict[int, int] = field(default_factory=dict)
    holder: int = NONE
    holder_code: int = 0
    pending: list[tuple[int, int]] = field(default_factory=list)  # (rowid, end) of moe_comm kernels


def sweep(con, source: str, target: str, types: list[str], phases: list[str | None],
          comm_types: tuple[str, ...]) -> None:
    """Create `target` from `source` (module doc). `types` / `phases`: the distinct layer types and
    phases of `source`; codes are 1-based positions in them."""
    con.execute(f"CREATE OR REPLACE TEMP TABLE {target} (prev_max BIGINT, prev_compute BIGINT, prev_comm BIGINT,"
                " prev_phase BIGINT, holder BIGINT, holder_code INTEGER, next_start BIGINT)")
    comm = np.array([i + 1 for i, t in enumerate(types) if t in comm_types], dtype=np.int64)
    moe = types.index("moe_comm") + 1 if "moe_comm" in types else -1
    late: list[tuple[int, int]] = []
    devices = con.execute(f"SELECT min(rowid), max(rowid) + 1 FROM {source} GROUP BY rank, device ORDER BY 1")
    for lo, hi in devices.fetchall():
        carry = _Carry()
        for a in range(lo, hi, CHUNK_ROWS):
            cols = con.execute(
                f"SELECT ts_ns, end_ns, list_position($types, layer_type) AS code,"
                f" coalesce(list_position($phases, phase), 0) AS phase FROM {source}"
                f" WHERE rowid >= $a AND rowid < $b",
                {"types": types, "phases": [p for p in phases if p is not None], "a": a,
                 "b": min(a + CHUNK_ROWS, hi)}).fetchnumpy()
            out = _chunk(a, cols, carry, comm, moe, late)
            con.register("_hs_sweep", out)
            try:
                con.execute(f"INSERT INTO {target} SELECT {', '.join(COLUMNS)} FROM _hs_sweep")
            finally:
                con.unregister("_hs_sweep")
    if late:  # moe_comm kernels whose next start lay in a later chunk
        rows, values = zip(*late)
        con.execute(f"UPDATE {target} SET next_start = u.v FROM (SELECT unnest($r) AS r, unnest($v) AS v) u"
                    f" WHERE {target}.rowid = u.r", {"r": list(rows), "v": list(values)})


def _chunk(a: int, cols: dict, carry: _Carry, comm: np.ndarray, moe: int, late: list) -> dict[str, np.ndarray]:
    """The output columns of one chunk (input rows a, a+1, ...), updating `carry`."""
    ts, end = np.asarray(cols["ts_ns"], np.int64), np.asarray(cols["end_ns"], np.int64)
    code, phase = np.asarray(cols["code"], np.int64), np.asarray(cols["phase"], np.int64)
    is_comm = np.isin(code, comm)
    prev_max, carry.run_max = _earlier_max(end, None, carry.run_max)
    prev_compute, carry.compute_max = _earlier_max(end, ~is_comm, carry.compute_max)
    prev_comm, carry.comm_max = _earlier_max(end, is_comm, carry.comm_max)
    prev_phase = np.empty_like(end)
    for p in np.unique(phase).tolist():
        mask = phase == p
        got, carry.phase_max[p] = _earlier_max(end, mask, carry.phase_max.get(p, NONE))
        prev_phase[mask] = got[mask]
    holder, holder_code = _holders(a, end, code, prev_max, carry)
    return {"prev_max": prev_max, "prev_compute": prev_compute, "prev_comm": prev_comm, "prev_phase": prev_phase,
            "holder": holder, "holder_code": holder_code,
            "next_start": _next_starts(a, ts, end, code == moe, carry, late)}


def _earlier_max(end: np.ndarray, mask: np.ndarray | None, before: int) -> tuple[np.ndarray, int]:
    """For each row, the largest end among earlier rows (of `mask`), and the carry for the next chunk."""
    e = end if mask is None else np.where(mask, end, NONE)
    acc = np.maximum.accumulate(e)
    out = np.empty_like(end)
    out[0] = before
    np.maximum(acc[:-1], before, out=out[1:])
    return out, max(before, int(acc[-1]))


def _holders(a: int, end: np.ndarray, code: np.ndarray, prev_max: np.ndarray, carry: _Carry):
    """Rowid and type code of the latest earlier kernel whose end reached the running maximum."""
    n = end.size
    is_holder = (prev_max == NONE) | (end >= prev_max)
    last = np.maximum.accumulate(np.where(is_holder, np.arange(n), -1))  # latest holder up to each row
    before = np.empty(n, np.int64)
    before[0] = -1
    before[1:] = last[:-1]
    local = before >= 0
    holder = np.where(local, a + before, carry.holder)
    holder_code = np.where(local, code[np.maximum(before, 0)], carry.holder_code)
    if last[-1] >= 0:
        carry.holder, carry.holder_code = a + int(last[-1]), int(code[last[-1]])
    return holder, holder_code


def _next_starts(a: int, ts: np.ndarray, end: np.ndarray, is_moe: np.ndarray, carry: _Carry, late: list):
    """First start at or after each moe_comm kernel's end; those past this chunk wait in `carry`."""
    out = np.full(ts.size, NONE, np.int64)
    if carry.pending:  # earlier chunks' kernels: their next start is in this chunk or later
        keep = []
        for row, e in carry.pending:
            j = int(np.searchsorted(ts, e, "left"))
            (late.append((row, int(ts[j]))) if j < ts.size else keep.append((row, e)))
        carry.pending = keep
    rows = np.flatnonzero(is_moe)
    j = np.searchsorted(ts, end[rows], "left")
    found = j < ts.size
    out[rows[found]] = ts[j[found]]
    carry.pending += [(a + int(r), int(e)) for r, e in zip(rows[~found], end[rows[~found]])]
    return out
