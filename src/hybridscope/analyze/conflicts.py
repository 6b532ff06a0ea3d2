"""Stream conflicts: MoE collectives in flight together, or queued back to back on one stream.

On the moe_comm kernels of each (rank, device) in its rank's steady state (from the warm-up cut-off
on, analyze/warmup.py: NCCL's first collective is no conflict of the workload). Definitions (docs/analyses.md, "stream conflicts"):
- *overlap*: a collective that starts before an earlier one has ended. Its partner is the earlier
  collective with the latest end (the one still in flight); `ns` is the time both are in flight.
  `scope` says what they share: 'stream' (same stream: the trace shows them overlapping although
  a stream runs them in order), 'communicator' (other streams, same process group, or group
  unknown: they contend for the same NCCL channels), 'device' (other streams and groups);
- *serialized*: two consecutive collectives of one stream, the second starting at most
  `back_to_back_ns` after the first ends with no other kernel of the device starting in between,
  from different scopes (module or layer index differ; two collectives of one module, like a
  count exchange before a token exchange, usually depend on each other). `ns` is the shorter of
  the two durations: the most that running them concurrently could save.
- meta['max_in_flight'] is the most moe_comm kernels in flight at one instant on any device.
"""

from __future__ import annotations

import numpy as np

from hybridscope.analyze import intervals, timeline
from hybridscope.table import Column, Table

CONFLICT_COLUMNS = (
    Column("rank", "int"), Column("device", "int"),
    Column("kind", "str", "overlap | serialized"),
    Column("scope", "str", "stream | communicator | device"),
    Column("stream_a", "int", "stream of the earlier collective"), Column("stream_b", "int", "stream of the later"),
    Column("module_a", "str"), Column("module_b", "str"),
    Column("layer_a", "int"), Column("layer_b", "int"),
    Column("step", "int", "step of the later collective"),
    Column("at_ns", "ns", "start of the later collective from the rank's window start", "at"),
    Column("ns", "ns", "overlap: time both in flight; serialized: the shorter duration", "at stake"),
)


@timeline.on_timeline
def conflicts(con, run_id: int, *, back_to_back_ns: int = 2_000) -> Table:
    """Every overlapping or serialized pair of moe_comm kernels (module doc).

    The moe_comm kernels are read one (rank, device) at a time as numeric columns (module and
    process group as dictionary ids), with the first start of any kernel of the device at or after
    each one's end (`next_start`, analyze/sweep.py), so memory holds one device's collectives at most.
    """
    k = timeline.tables(con, run_id).kernels
    windows = timeline.rank_windows(con, run_id)
    comm = f"_hs_moe_comm_{int(run_id)}"
    con.execute(f"""CREATE OR REPLACE TEMP TABLE {comm} AS
        SELECT c.pos, c.rank, c.device, c.stream, c.ts_ns, c.end_ns, c.ev, c.layer_index, c.step, c.next_start, e.module,
               json_extract_string(e.args, '$."Process Group Name"') AS pg
        FROM {k} c JOIN events e ON e.rowid = c.ev
        WHERE c.layer_type = 'moe_comm' AND NOT c.warm
          AND e.run_id = $run AND e.source = 'cuda' AND e.kind = 'kernel' AND e.layer_type = 'moe_comm'
        ORDER BY c.pos""", {"run": run_id})
    rows: list[tuple] = []
    max_in_flight = 0
    try:
        modules, groups = _dictionary(con, comm, "module"), _dictionary(con, comm, "pg")
        for rank, device in con.execute(f"SELECT DISTINCT rank, device FROM {comm} ORDER BY ALL").fetchall():
            c = _comm_columns(con, comm, rank, device, modules, groups)
            max_in_flight = max(max_in_flight, intervals.max_concurrency(c["ts_ns"], c["end_ns"]))
            every = np.arange(c["ts_ns"].size)
            rows += _rows(c, rank, device, windows[rank][0], _overlaps(c, every),
                          _serialized(c, every, back_to_back_ns), modules.names)
    finally:
        con.execute(f"DROP TABLE IF EXISTS {comm}")
    return Table("conflicts", CONFLICT_COLUMNS, rows,
                 {"title": "MoE collectives in conflict", "run_id": run_id, "max_in_flight": max_in_flight,
                  "back_to_back_ns": back_to_back_ns})


class _Dictionary:
    """Distinct values of a text expression over the moe_comm kernels: `sql(param)` gives each
    kernel's id (its position in `names`, -1 for NULL), `names[id]` the value back."""

    def __init__(self, expr: str, names: list[str]):
        self.expr = expr
        self.values = names
        self.names = names + [None]  # id -1 reads None

    def sql(self, param: str) -> str:
        return f"coalesce(list_position(${param}, {self.expr}) - 1, -1)"


def _dictionary(con, comm: str, column: str) -> _Dictionary:
    got = con.execute(f"SELECT DISTINCT {column} FROM {comm} WHERE {column} IS NOT NULL ORDER BY 1").fetchall()
    return _Dictionary(column, [v for (v,) in got])


def _comm_columns(con, comm: str, rank: int, device: int, modules: _Dictionary, groups: _Dictionary) -> dict:
    """One device's moe_comm kernels as numpy columns in (ts_ns, end_ns) order (module doc)."""
    got = con.execute(f"""
        SELECT ts_ns, end_ns, end_ns - ts_ns AS duration_ns, stream, coalesce(layer_index, -1) AS layer_index,
               coalesce(step, -1) AS step, {modules.sql("modules")} AS module, {groups.sql("groups")} AS pg,
               coalesce(next_start, -1) AS next_start
        FROM {comm} WHERE rank = $rank AND device = $device ORDER BY pos""",
        {"rank": rank, "device": device, "modules": modules.values, "groups": groups.values}).fetchnumpy()
    return {name: np.asarray(col) for name, col in got.items()}


def conflict_pairs(table: Table) -> Table:
    """`conflicts` grouped by (kind, scope, streams, modules): count and total time at stake."""
    acc: dict[tuple, list[int]] = {}  # key -> [pairs, ns]; a run may have 100k+ pairs
    at = [table.index(c) for c in ("kind", "scope", "stream_a", "stream_b", "module_a", "module_b")]
    ns = table.index("ns")
    for r in table.rows:
        key = tuple(r[i] for i in at)
        got = acc.get(key)
        if got is None:
            acc[key] = [1, r[ns]]
        else:
            got[0] += 1
            got[1] += r[ns]
    rows = [(*key, n, int(total)) for key, (n, total) in acc.items()]
    rows.sort(key=lambda r: -r[7])
    cols = (Column("kind", "str"), Column("scope", "str"), Column("stream_a", "int"), Column("stream_b", "int"),
            Column("module_a", "str"), Column("module_b", "str"), Column("n", "int", "pairs"),
            Column("total_ns", "ns", "summed time at stake", "at stake"))
    return Table("conflict_pairs", cols, rows, {"title": "Colliding collectives", **dict(table.meta)})


def _overlaps(k: dict, comm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(earlier, later, ns) of collectives starting while an earlier one is in flight."""
    s, e = k["ts_ns"][comm], k["end_ns"][comm]
    order = np.lexsort((e, s))
    s, e, comm = s[order], e[order], comm[order]
    run_max = np.maximum.accumulate(e)
    holder = np.maximum.accumulate(np.where(e >= run_max, np.arange(s.size), 0))
    j = np.flatnonzero(s[1:] < run_max[:-1]) + 1
    ns = np.minimum(e[j], run_max[j - 1]) - s[j]
    keep = ns > 0
    return comm[holder[j - 1]][keep], comm[j][keep], ns[keep]


def _serialized(k: dict, comm: np.ndarray, back_to_back_ns: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(earlier, later, ns) of back-to-back collectives of one stream (module doc): no kernel of the
    device starts in [end of the first, start of the second) when the first start at or after the
    first's end (`next_start`) is not before the second's start."""
    out = []
    for _stream, pos in timeline.groups({"stream": k["stream"][comm]}, "stream"):
        c = comm[pos]
        c = c[np.argsort(k["ts_ns"][c], kind="stable")]
        a, b = c[:-1], c[1:]
        gap = k["ts_ns"][b] - k["end_ns"][a]
        nothing_between = k["next_start"][a] >= k["ts_ns"][b]
        other_scope = (k["module"][a] != k["module"][b]) | (k["layer_index"][a] != k["layer_index"][b])
        hit = (gap >= 0) & (gap <= back_to_back_ns) & nothing_between & other_scope
        out.append((a[hit], b[hit], np.minimum(k["duration_ns"][a], k["duration_ns"][b])[hit]))
    if not out:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.int64)
    return tuple(np.concatenate(x) for x in zip(*out))


def _rows(k: dict, rank: int, device: int, lo: int, overlaps: tuple, serialized: tuple, modules: list) -> list[tuple]:
    """The table's rows of one device's pairs (overlaps, then serialized pairs, each as (earlier,
    later, ns) arrays), in the order of the later collective's start; columns at once, no per-pair
    arithmetic in Python."""
    a, b, ns = (np.concatenate([o, s]).astype(np.int64) for o, s in zip(overlaps, serialized))
    serial = np.arange(a.size) >= overlaps[0].size
    order = np.argsort(k["ts_ns"][b], kind="stable")
    a, b, ns, serial = a[order], b[order], ns[order], serial[order]
    sa, sb, pa, pb = k["stream"][a], k["stream"][b], k["pg"][a], k["pg"][b]
    scope = np.where(serial | (sa == sb), "stream",
                     np.where((pa < 0) | (pb < 0) | (pa == pb), "communicator", "device"))
    names = np.array(modules, dtype=object)  # id -1 reads the trailing None
    dev = None if device < 0 else int(device)
    return list(zip([int(rank)] * a.size, [dev] * a.size, np.where(serial, "serialized", "overlap").tolist(),
                    scope.tolist(), sa.tolist(), sb.tolist(), names[k["module"][a]].tolist(),
                    names[k["module"][b]].tolist(), _opt(k["layer_index"][a]), _opt(k["layer_index"][b]),
                    _opt(k["step"][b]), (k["ts_ns"][b] - lo).tolist(), ns.tolist()))


def _opt(v: np.ndarray) -> list:
    """Ids as ints, -1 (NULL) as None."""
    return [None if x < 0 else x for x in v.tolist()]
