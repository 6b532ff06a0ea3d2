"""One pass over each device's kernels in time order, in bounded memory: the running maxima that the
interval analyses (duty cycle, overlap, gaps, launch-bound, conflicts) are sums over.

Input: a query over the store's tables (not temp tables: it streams through a second connection
of the same database) whose rows are the kernels, columns KERNEL_COLUMNS, sorted by SORT_KEYS, and
each rank's warm-up cut-off (analyze/warmup.py: a kernel starting before it is warm-up). Two tables
come out.

`target`: those rows in the order (rank, device, ts_ns, end_ns, ev), `pos` (0, 1, ...: the order)
first, and after them, per row:
- warm: the kernel starts before its rank's cut-off. A device's warm-up kernels come first (time
  order), and the steady state is a timeline of its own: the running maxima below restart at its
  first kernel, so nothing of the warm-up (a 40 ms first collective) reaches into it;
- prev_max: the latest end among the earlier kernels of the device on the same side of the cut
  (NULL for the first);
- holder, holder_code: pos and layer type code of the latest such kernel whose end is prev_max (the
  kernel before an idle gap, when this kernel starts one);
- next_start: for moe_comm kernels, the first start of any kernel of the device at or after this
  kernel's end (NULL when none), warm-up or not (what runs on the device is a fact of the device).

`busy`: per (rank, device, phase, warm), the kernels' count and the lengths of interval unions
(each kernel adds the part of [ts, end) past the latest end before it; zero-length and inverted
intervals add nothing, as intervals.union drops them): `busy_all` of every kernel of the device,
warm-up and steady state as one timeline (the duty cycle: what a dashboard sees), and on each side
of the cut `busy` of every kernel, `busy_comm` of the communication kernels (layer type in
`comm_types`), `busy_compute` of the others, `busy_phase` of the kernels of the row's phase. A
union's length over a group of rows is the sum of their rows' parts.

The rows stream through Python CHUNK_ROWS at a time as Arrow (text columns never become Python
objects; layer type and phase as dictionary codes for the numpy pass), the running state carried
from chunk to chunk and reset at each device: memory holds one chunk whatever the run. The query
sorts on three keys (SORT_KEYS), not five: the sort of 10M kernels took 2.1 s on 2 cores with
end_ns and `ev` as keys too, 1.2 s with end_ns, 1.1 s without. Rows equal on the three (kernels
of one device starting at the same ns, rare) are put in (end_ns, ev) order here, DuckDB's sort not
being stable, and a chunk never ends inside such a run.
"""

from __future__ import annotations

import concurrent.futures
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

NONE = int(np.iinfo(np.int64).min)  # "no earlier kernel": NULL once inserted
# 256k rows: at 10M kernels 0.4 s faster than 1M (the numpy pass stays in cache) and 350 MiB
# less at the peak, which leaves DuckDB the room of shared.ANALYSIS_MEMORY_LIMIT
CHUNK_ROWS = 1 << 18
KERNEL_COLUMNS = (("ev", "BIGINT"), ("rank", "INTEGER"), ("device", "INTEGER"), ("stream", "BIGINT"),
                  ("ts_ns", "BIGINT"), ("end_ns", "BIGINT"), ("layer_type", "VARCHAR"), ("layer_index", "INTEGER"),
                  ("step", "INTEGER"), ("phase", "VARCHAR"), ("correlation", "BIGINT"))
COLUMNS = ("warm", "prev_max", "holder", "holder_code", "next_start")
SUMS = ("n", "busy_all", "busy", "busy_comm", "busy_compute", "busy_phase")
SORT_KEYS = ("rank", "device", "ts_ns")  # what the input query orders by (module doc)


@dataclass
class _Line:
    """The running state of one timeline of a device (its warm-up, or its steady state)."""

    run_max: int = NONE
    compute_max: int = NONE
    comm_max: int = NONE
    phase_max: dict[int, int] = field(default_factory=dict)
    holder: int = NONE
    holder_code: int = 0


@dataclass
class _Carry:
    """What a device's earlier chunks leave to its next one."""

    line: _Line = field(default_factory=_Line)
    steady: bool = False  # the device's rows have passed its rank's cut-off
    full_max: int = NONE  # the running maximum over warm-up and steady state together (busy_all)
    pending: list[tuple[int, int]] = field(default_factory=list)  # (pos, end) of moe_comm kernels


class Codes:
    """Dictionary codes of a text column, 1-based in order of first appearance (0: NULL)."""

    def __init__(self):
        self.values: list[str] = []
        self._index: dict[str, int] = {}

    def encode(self, column) -> np.ndarray:
        """The codes of an Arrow string column (its dictionary mapped to ours)."""
        if isinstance(column, pa.ChunkedArray):
            column = column.combine_chunks()
        if pa.types.is_dictionary(column.type):  # an ENUM from DuckDB: its codes as they come
            local, indices = column.dictionary.to_pylist() + [None], column.indices.fill_null(len(column.dictionary))
        else:
            enc = pc.dictionary_encode(column, null_encoding="encode")  # NULL: an entry of the dictionary
            local, indices = enc.dictionary.to_pylist(), enc.indices
        return self.encode_values(local)[indices.to_numpy()]

    def encode_values(self, values) -> np.ndarray:
        """The codes of a few Python strings (None: 0), without Arrow (pyarrow imports pandas to
        convert Python values: 0.15 s of a report on a run without kernels)."""
        out = np.array([0 if v is None else self._index.setdefault(v, len(self._index) + 1) for v in values], np.int64)
        self.values = list(self._index)
        return out

    def code(self, value: str) -> int:
        return self._index.get(value, -1)

    def value(self, code: int) -> str | None:
        return self.values[code - 1] if code > 0 else None


@dataclass
class _State:
    """The pass so far: codes, the device being swept and its carry, the rows done, the sums."""

    cuts: dict[int, int]
    types: Codes = field(default_factory=Codes)
    phases: Codes = field(default_factory=Codes)
    device: tuple[int, int] | None = None
    carry: _Carry = field(default_factory=_Carry)
    pos: int = 0
    late: list[tuple[int, int]] = field(default_factory=list)  # (pos, next_start) found in a later chunk
    sums: dict[tuple[int, int, int, bool], np.ndarray] = field(default_factory=dict)  # SUMS per key


def sweep(con, query: str, params: dict, target: str, busy: str, comm_types: tuple[str, ...],
          cuts: dict[int, int], types: dict[str, str] | None = None) -> list[str]:
    """Create `target` and `busy` from the rows of `query` (module doc), `cuts` the warm-up
    cut-off of each rank that has one, `types` SQL types of `target`'s columns other than
    KERNEL_COLUMNS' (an ENUM: the query's own); returns the layer types, holder_code being a
    1-based position in that list."""
    cols = ", ".join(f"{name} {(types or {}).get(name, kind)}" for name, kind in KERNEL_COLUMNS)
    con.execute(f"CREATE OR REPLACE TEMP TABLE {target} (pos BIGINT, {cols}, warm BOOLEAN, prev_max BIGINT,"
                " holder BIGINT, holder_code INTEGER, next_start BIGINT)")
    names = ", ".join(name for name, _ in KERNEL_COLUMNS)
    insert = (f"INSERT INTO {target} SELECT pos, {names}, warm, "
              + ", ".join(c if c == "holder_code" else f"nullif({c}, {NONE})" for c in COLUMNS[1:]) + " FROM _hs_sweep")
    state = _State(cuts={int(r): int(c) for r, c in cuts.items()})
    reader = con.cursor()  # the rows stream from this second connection while `con` writes the target

    def write(table) -> None:
        con.register("_hs_sweep", table)
        try:
            con.execute(insert)
        finally:
            con.unregister("_hs_sweep")

    # a chunk is written on a thread of its own while the next one's numpy pass runs (DuckDB's
    # insert leaves the GIL): two chunks in memory at most; leaving the block waits for the writer
    try:
        with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="hybridscope-sweep") as writer:
            written = None
            for chunk in _chunks(reader.sql(query, params=params).to_arrow_reader(CHUNK_ROWS)):
                table = _with(chunk, state.pos, _batch(chunk, state, comm_types))
                state.pos += chunk.num_rows
                if written is not None:
                    written.result()
                written = writer.submit(write, table)
            if written is not None:
                written.result()
    finally:
        reader.close()
    if state.late:  # moe_comm kernels whose next start lay in a later chunk
        rows, values = zip(*state.late)
        con.execute(f"UPDATE {target} SET next_start = u.v FROM (SELECT unnest($r) AS r, unnest($v) AS v) u"
                    f" WHERE {target}.pos = u.r", {"r": list(rows), "v": list(values)})
    _write_sums(con, busy, state)
    return state.types.values


def _chunks(reader):
    """The reader's rows as record batches of about CHUNK_ROWS, in the order (SORT_KEYS, end_ns, ev): DuckDB
    hands them over a vector size at a time whatever was asked, and a chunk of contiguous columns
    lets the numpy pass and the insert (on all of DuckDB's threads) work a chunk at a time. A chunk
    ends between two rows that differ on SORT_KEYS (so that a run of equal rows is ordered whole),
    which may make it shorter or, for a run longer than CHUNK_ROWS, longer."""
    pending, rows = [], 0
    for batch in reader:
        pending.append(batch)
        rows += batch.num_rows
        while rows > CHUNK_ROWS:
            table = pa.Table.from_batches(pending).combine_chunks()
            cut = _cut(_differs(table), CHUNK_ROWS)
            if cut is None:  # a run of equal rows reaches the end of what came so far
                pending = table.to_batches(max_chunksize=None)
                break
            yield _ev_order(table.slice(0, cut))
            rest = table.slice(cut)
            pending, rows = rest.to_batches(max_chunksize=None), rest.num_rows
    pending = [b for b in pending if b.num_rows]
    if pending:
        yield _ev_order(pa.Table.from_batches(pending).combine_chunks())


def _differs(table) -> np.ndarray:
    """d[i]: rows i and i + 1 differ on SORT_KEYS (the start first: rows rarely share one)."""
    ts = table.column("ts_ns").to_numpy()
    d = ts[1:] != ts[:-1]
    same = np.flatnonzero(~d)
    for key in SORT_KEYS:
        if key != "ts_ns" and same.size:
            v = table.column(key).to_numpy()  # NOT NULL: the query coalesces device
            d[same] |= v[same + 1] != v[same]
    return d


def _cut(d: np.ndarray, at: int) -> int | None:
    """Where to end a chunk of about `at` rows, given _differs: before row `at`, or before the run of
    equal rows holding it; after that run when it starts the table; None when it reaches the end."""
    if d[at - 1]:
        return at
    before = np.flatnonzero(d[:at - 1])
    if before.size:
        return int(before[-1]) + 1
    after = np.flatnonzero(d[at:])
    return at + int(after[0]) + 1 if after.size else None


def _ev_order(table):
    """The chunk as one record batch, runs of rows equal on SORT_KEYS put in (end_ns, ev) order."""
    d = _differs(table)
    if not d.all():
        order = np.lexsort((table.column("ev").to_numpy(), table.column("end_ns").to_numpy(), np.r_[0, np.cumsum(d)]))
        table = table.take(order)
    return table.to_batches(max_chunksize=None)[0]


def _write_sums(con, busy: str, state: _State) -> None:
    keys = sorted(state.sums)
    con.execute(f"CREATE OR REPLACE TEMP TABLE {busy} (rank INTEGER, device INTEGER, phase VARCHAR, warm BOOLEAN, "
                + ", ".join(f"{c} BIGINT" for c in SUMS) + ")")
    if keys:
        got = np.array([state.sums[k] for k in keys], np.int64)
        con.execute(f"INSERT INTO {busy} SELECT * FROM (SELECT unnest($rank), unnest($device), unnest($phase), "
                    "unnest($warm), " + ", ".join(f"unnest(${c})" for c in SUMS) + ")",
                    {"rank": [k[0] for k in keys], "device": [k[1] for k in keys],
                     "phase": [state.phases.value(k[2]) for k in keys], "warm": [k[3] for k in keys],
                     **{c: got[:, i].tolist() for i, c in enumerate(SUMS)}})


def _batch(batch, state: _State, comm_types: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The running maxima of one chunk of rows, device by device (the carry restarts at each)."""
    n = batch.num_rows
    code = state.types.encode(batch.column("layer_type"))
    cols = {"code": code, "phase": state.phases.encode(batch.column("phase")),
            "is_comm": np.isin(code, [state.types.code(t) for t in comm_types]),
            "is_moe": code == state.types.code("moe_comm"),
            "ts": batch.column("ts_ns").to_numpy(), "end": batch.column("end_ns").to_numpy()}
    rank, dev = batch.column("rank").to_numpy(), batch.column("device").to_numpy()
    out = {c: np.empty(n, bool if c == "warm" else np.int64) for c in COLUMNS}
    cuts = np.flatnonzero((rank[1:] != rank[:-1]) | (dev[1:] != dev[:-1])) + 1
    for a, b in zip(np.r_[0, cuts].tolist(), np.r_[cuts, n].tolist()):
        key = (int(rank[a]), int(dev[a]))
        if key != state.device:
            state.device, state.carry = key, _Carry()
        # the device's warm-up rows come first: [a, s) warm, [s, b) steady
        s = a if state.carry.steady else a + int(np.searchsorted(cols["ts"][a:b], state.cuts.get(key[0], NONE)))
        for lo, hi, warm in ((a, s, True), (s, b, False)):
            if hi > lo:
                if not warm and not state.carry.steady:
                    state.carry.steady, state.carry.line = True, _Line()
                part = _chunk(state.pos + lo, {c: v[lo:hi] for c, v in cols.items()}, state, key, warm)
                for c in COLUMNS:
                    out[c][lo:hi] = part[c]
    return out


def _with(batch, pos: int, out: dict[str, np.ndarray]):
    """The chunk as an Arrow table: its kernel columns, pos, and the running maxima."""
    arrays = [pa.array(np.arange(pos, pos + batch.num_rows, dtype=np.int64))] + list(batch.columns)
    arrays += [pa.array(out[c]) for c in COLUMNS]
    return pa.Table.from_arrays(arrays, names=["pos", *batch.schema.names, *COLUMNS])


def _chunk(a: int, c: dict[str, np.ndarray], state: _State, key: tuple[int, int], warm: bool) -> dict:
    """The output columns of one device's rows a, a+1, ... of a chunk, all on one side of the
    cut; updates the carry and adds the rows' parts of each union to the sums."""
    carry, line, ts, end = state.carry, state.carry.line, c["ts"], c["end"]
    full, carry.full_max = _earlier_max(end, None, carry.full_max)
    prev_max, line.run_max = _earlier_max(end, None, line.run_max)
    prev_compute, line.compute_max = _earlier_max(end, ~c["is_comm"], line.compute_max)
    prev_comm, line.comm_max = _earlier_max(end, c["is_comm"], line.comm_max)
    phases = {p: c["phase"] == p for p in np.flatnonzero(np.bincount(c["phase"])).tolist()}  # code -> its rows
    prev_phase = np.empty_like(end)
    for p, mask in phases.items():
        got, line.phase_max[p] = _earlier_max(end, mask, line.phase_max.get(p, NONE))
        prev_phase[mask] = got[mask]
    parts = {"busy_all": _part(ts, end, full), "busy": _part(ts, end, prev_max),
             "busy_comm": np.where(c["is_comm"], _part(ts, end, prev_comm), 0),
             "busy_compute": np.where(c["is_comm"], 0, _part(ts, end, prev_compute)),
             "busy_phase": _part(ts, end, prev_phase)}
    for p, mask in phases.items():
        got = np.array([int(mask.sum())] + [int(parts[s][mask].sum()) for s in SUMS[1:]], np.int64)
        k = (key[0], key[1], p, warm)
        state.sums[k] = state.sums[k] + got if k in state.sums else got
    holder, holder_code = _holders(a, end, c["code"], prev_max, line)
    return {"warm": np.full(end.size, warm), "prev_max": prev_max, "holder": holder, "holder_code": holder_code,
            "next_start": _next_starts(a, ts, end, c["is_moe"], carry, state.late)}


def _part(ts: np.ndarray, end: np.ndarray, prev: np.ndarray) -> np.ndarray:
    """Each kernel's part of its group's union: the length of [ts, end) past `prev`, the latest end
    among the group's earlier kernels (NONE: none)."""
    return np.maximum(end - np.maximum(ts, prev), 0)


def _earlier_max(end: np.ndarray, mask: np.ndarray | None, before: int) -> tuple[np.ndarray, int]:
    """For each row, the largest end among earlier rows (of `mask`), and the carry for the next chunk."""
    e = end if mask is None else np.where(mask, end, NONE)
    out = np.empty_like(end)
    out[0] = before
    if e.size > 1:
        np.maximum.accumulate(e[:-1], out=out[1:])
        # a running maximum never decreases: the rows where it is below `before` lead
        out[1:1 + int(np.searchsorted(out[1:], before))] = before
    return out, max(before, int(out[-1]), int(e[-1]))


def _holders(a: int, end: np.ndarray, code: np.ndarray, prev_max: np.ndarray, line: _Line):
    """Rowid and type code of the latest earlier kernel whose end reached the running maximum."""
    n = end.size
    is_holder = (prev_max == NONE) | (end >= prev_max)
    last = np.maximum.accumulate(np.where(is_holder, np.arange(n), -1))  # latest holder up to each row
    before = np.empty(n, np.int64)
    before[0] = -1
    before[1:] = last[:-1]
    # `before` never decreases: the rows without an earlier holder in the chunk (-1) lead
    k = int(np.searchsorted(before, 0))
    holder = before + a
    holder[:k] = line.holder
    holder_code = code[before]  # -1 reads the last row's: those rows are the k overwritten
    holder_code[:k] = line.holder_code
    if last[-1] >= 0:
        line.holder, line.holder_code = a + int(last[-1]), int(code[last[-1]])
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
