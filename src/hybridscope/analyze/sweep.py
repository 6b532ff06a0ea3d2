"""One pass over each device's kernels in time order, in bounded memory: the running maxima that the
interval analyses (duty cycle, overlap, gaps, launch-bound, conflicts) are sums over.

Input: a query over the store's tables (not temp tables: it streams through a second connection
of the same database) whose rows are the kernels, columns KERNEL_COLUMNS, sorted by (rank, device,
ts_ns, end_ns, ev). Output: a temp table holding those rows in that order, `pos` (0, 1, ...: the
order) first, and after them, per row:
- prev_max: the latest end among the earlier kernels of the device (NULL for its first kernel);
- prev_compute / prev_comm / prev_phase: the same among earlier compute kernels (layer type not in
  the communication types) / communication kernels / kernels of the same phase;
- holder, holder_code: pos and layer type code of the latest earlier kernel whose end is
  prev_max (the kernel before an idle gap, when this kernel starts one);
- next_start: for moe_comm kernels, the first start of any kernel of the device at or after
  this kernel's end (NULL when none).
The rows stream through Python CHUNK_ROWS at a time as Arrow (text columns never become Python
objects; layer type and phase as dictionary codes for the numpy pass), the running state carried
from chunk to chunk and reset at each device: memory holds one chunk whatever the run.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pyarrow.compute as pc

NONE = int(np.iinfo(np.int64).min)  # "no earlier kernel": NULL once inserted
CHUNK_ROWS = 1 << 20
KERNEL_COLUMNS = (("ev", "BIGINT"), ("rank", "INTEGER"), ("device", "INTEGER"), ("stream", "BIGINT"),
                  ("ts_ns", "BIGINT"), ("end_ns", "BIGINT"), ("layer_type", "VARCHAR"), ("layer_index", "INTEGER"),
                  ("step", "INTEGER"), ("phase", "VARCHAR"), ("correlation", "BIGINT"))
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
    pending: list[tuple[int, int]] = field(default_factory=list)  # (pos, end) of moe_comm kernels


class _Codes:
    """Dictionary codes of a text column, 1-based in order of first appearance (0: NULL)."""

    def __init__(self):
        self.values: list[str] = []
        self._index: dict[str, int] = {}

    def encode(self, column) -> np.ndarray:
        """The codes of an Arrow string column (its chunk's dictionary mapped to ours)."""
        enc = pc.dictionary_encode(column)
        local = enc.dictionary.to_pylist()
        to_global = np.array([0] + [self._index.setdefault(v, len(self._index) + 1) for v in local], np.int64)
        self.values = list(self._index)
        return to_global[enc.indices.fill_null(-1).to_numpy(zero_copy_only=False).astype(np.int64) + 1]

    def code(self, value: str) -> int:
        return self._index.get(value, -1)


@dataclass
class _State:
    """The pass so far: codes, the device being swept and its carry, the rows done."""

    types: _Codes = field(default_factory=_Codes)
    phases: _Codes = field(default_factory=_Codes)
    device: tuple[int, int] | None = None
    carry: _Carry = field(default_factory=_Carry)
    pos: int = 0
    late: list[tuple[int, int]] = field(default_factory=list)  # (pos, next_start) found in a later chunk


def sweep(con, query: str, params: dict, target: str, comm_types: tuple[str, ...]) -> list[str]:
    """Create `target` from the rows of `query` (module doc); returns the layer types, holder_code
    being a 1-based position in that list."""
    cols = ", ".join(f"{name} {kind}" for name, kind in KERNEL_COLUMNS)
    con.execute(f"CREATE OR REPLACE TEMP TABLE {target} (pos BIGINT, {cols}, prev_max BIGINT, prev_compute BIGINT,"
                " prev_comm BIGINT, prev_phase BIGINT, holder BIGINT, holder_code INTEGER, next_start BIGINT)")
    names = ", ".join(name for name, _ in KERNEL_COLUMNS)
    insert = (f"INSERT INTO {target} SELECT pos, {names}, "
              + ", ".join(c if c == "holder_code" else f"nullif({c}, {NONE})" for c in COLUMNS) + " FROM _hs_sweep")
    state = _State()
    reader = con.cursor()  # the rows stream from this second connection while `con` writes the target
    try:
        for batch in reader.sql(query, params=params).to_arrow_reader(CHUNK_ROWS):
            if not batch.num_rows:
                continue
            con.register("_hs_sweep", _with(batch, state.pos, _batch(batch, state, comm_types)))
            try:
                con.execute(insert)
            finally:
                con.unregister("_hs_sweep")
            state.pos += batch.num_rows
    finally:
        reader.close()
    if state.late:  # moe_comm kernels whose next start lay in a later chunk
        rows, values = zip(*state.late)
        con.execute(f"UPDATE {target} SET next_start = u.v FROM (SELECT unnest($r) AS r, unnest($v) AS v) u"
                    f" WHERE {target}.rowid = u.r", {"r": list(rows), "v": list(values)})
    return state.types.values


def _batch(batch, state: _State, comm_types: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The running maxima of one chunk of rows, device by device (the carry restarts at each)."""
    n = batch.num_rows
    code = state.types.encode(batch.column("layer_type"))
    is_comm = np.isin(code, [state.types.code(t) for t in comm_types])
    is_moe = code == state.types.code("moe_comm")
    phase = state.phases.encode(batch.column("phase"))
    ts, end = batch.column("ts_ns").to_numpy(), batch.column("end_ns").to_numpy()
    rank, dev = batch.column("rank").to_numpy(), batch.column("device").to_numpy()
    out = {c: np.empty(n, np.int64) for c in COLUMNS}
    cuts = np.flatnonzero((rank[1:] != rank[:-1]) | (dev[1:] != dev[:-1])) + 1
    for a, b in zip(np.r_[0, cuts].tolist(), np.r_[cuts, n].tolist()):
        if (int(rank[a]), int(dev[a])) != state.device:
            state.device, state.carry = (int(rank[a]), int(dev[a])), _Carry()
        part = _chunk(state.pos + a, ts[a:b], end[a:b], code[a:b], phase[a:b], is_comm[a:b], is_moe[a:b],
                      state.carry, state.late)
        for c in COLUMNS:
            out[c][a:b] = part[c]
    return out


def _with(batch, pos: int, out: dict[str, np.ndarray]):
    """The chunk as an Arrow table: its kernel columns, pos, and the running maxima."""
    import pyarrow as pa

    arrays = [pa.array(np.arange(pos, pos + batch.num_rows, dtype=np.int64))] + list(batch.columns)
    arrays += [pa.array(out[c]) for c in COLUMNS]
    return pa.Table.from_arrays(arrays, names=["pos", *batch.schema.names, *COLUMNS])


def _chunk(a: int, ts: np.ndarray, end: np.ndarray, code: np.ndarray, phase: np.ndarray, is_comm: np.ndarray,
           is_moe: np.ndarray, carry: _Carry, late: list) -> dict[str, np.ndarray]:
    """The output columns of one device's rows a, a+1, ... of a chunk, updating `carry`."""
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
            "next_start": _next_starts(a, ts, end, is_moe, carry, late)}


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
