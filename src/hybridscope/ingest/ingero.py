"""Ingero eBPF databases (`ingero trace --record`, SQLite) -> host-side API events.

Ingero records, with uprobes and tracepoints, how long host threads spent in CUDA runtime and
driver calls, in syncs, and in scheduler, block-I/O and network events. These are HOST timings:
no kernel ran for them on a GPU, and Ingero records no kernel names. They are stored with
source = 'host_api', so no kernel statistic (source = 'cuda') ever sees them, and with
name = the Ingero operation ('cudaLaunchKernel', 'cuCtxSynchronize', 'sched_switch', ...), so an
analysis can group them by operation. kind: 'runtime' (CUDA runtime), 'driver' (CUDA driver),
'sync' (the stream/device/context synchronizations of both), 'other' (host kernel, I/O, network).

Every row of `events` becomes one event (the count is checked and any difference is reported);
`ts_ns` counts from the first event (ts_ns = timestamp - base_time_ns, where base_time_ns is the
first event's Unix-epoch timestamp, so epoch = base_time_ns + ts_ns, as for nsys), `duration_ns` its
duration. Kept in `args`: the Ingero source, arg0/arg1 (bytes, kernel pointer, copy direction:
see the database's schema_info), the return code, the stack hash (stacks are in the file's
`stack_traces`), the node and the Ingero event id. `system_snapshots` go to `samples`
(host CPU/memory/load), the recorder's own sessions and causal-chain findings to runs.notes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hybridscope.errors import BadInput
from hybridscope.ingest._common import (
    MAX_DURATION_NS,
    MAX_RANK,
    MAX_TS_NS,
    ImportContext,
    ImportResult,
    checked_int,
)
from hybridscope.ingest._sqlite import EventWriter, SqliteFile, lookup_table, nn
from hybridscope.store.runs import finish_rank, insert_run, insert_run_rank

FORMAT = "ingero"
REQUIRED = {"events": ("timestamp", "duration", "pid", "tid", "source", "op"),
            "sources": ("id", "name"), "ops": ("source_id", "op_id", "name")}
SYNC_OPS = frozenset({"cudaStreamSync", "cudaDeviceSync", "cuCtxSynchronize"})
KIND_BY_SOURCE = {"CUDA": "runtime", "DRIVER": "driver"}
# system_snapshots column -> samples.metric
SNAPSHOT_METRICS = {"cpu_pct": "host_cpu_util_pct", "mem_pct": "host_mem_used_pct",
                    "mem_avail": "host_mem_avail_mb", "swap_mb": "host_swap_used_mb", "load_avg": "host_load_avg_1m"}
MAX_CHAINS = 20
MAX_OFFSET_NS = 2**62  # |timestamp - first event's| beyond this is no clock reading (and would overflow)


def import_file(con, path: Path, *, content_hash: str, ctx: ImportContext) -> ImportResult:
    """Write one Ingero database as one rank of a new run, in the caller's transaction."""
    path = Path(path)
    sq = SqliteFile(path, "an Ingero database")
    try:
        _check(sq)
        meta = _metadata(sq)
        rank = ctx.rank if ctx.rank is not None else meta["rank"]
        run_id, new = ctx.run_for(con, None, rank)
        if new:
            insert_run(con, run_id, source=FORMAT, label=ctx.label or path.stem, host=meta["host"], rank=rank,
                       world_size=meta["world_size"], device_name=meta["device"], versions=meta["versions"],
                       distributed_info=None)
        rows = sq.count("events")
        base = sq.query_rows("SELECT min(timestamp) FROM events WHERE typeof(timestamp) = 'integer' "
                             f"AND timestamp BETWEEN 0 AND {MAX_TS_NS - 1}")[0][0] or 0
        out = EventWriter(con, run_id, rank, path)
        with out.progress(ctx, rows, path.name):
            _write_events(sq, out, base)
        skipped = {SKIPPED_EVENTS: rows - out.n} if rows != out.n else {}
        n_samples = _samples(con, sq, run_id, rank, base, skipped)
        insert_run_rank(con, run_id, rank, path=path, content_hash=content_hash, host=meta["host"],
                        device_name=meta["device"], versions=meta["versions"], distributed_info=None,
                        base_time_ns=base, n_events=out.n, t_start_ns=out.t_start, t_end_ns=out.t_end)
        notes = {"format": FORMAT, "events_table_rows": rows, "events_stored": out.n, "samples": n_samples,
                 "timing": "host-side API/tracepoint durations (eBPF), not GPU kernel executions: "
                           "stored as source='host_api'", **meta["notes"], **skipped}
        unknown = sq.count("events", "e WHERE NOT EXISTS (SELECT 1 FROM ops o WHERE o.source_id = e.source "
                                     "AND o.op_id = e.op)")
        if unknown:
            notes["unknown_ops"] = f"{unknown} events have a (source, op) pair missing from `ops`"
        finish_rank(con, run_id, rank, notes)
    finally:
        sq.close()
    lines = [notes[k] for k in ("timing", "nodes", "ranks", "unknown_ops", "ingero_not_recorded") if k in notes]
    return ImportResult(str(path), FORMAT, run_id, rank, out.n, skipped=skipped, world_size=meta["world_size"],
                        notes=tuple(lines))


def _check(sq: SqliteFile) -> None:
    for table, needed in REQUIRED.items():
        missing = [c for c in needed if c not in sq.columns(table)]
        if table not in sq.tables or missing:
            what = f"table {table}" if table not in sq.tables else f"{table}.{', '.join(missing)}"
            raise BadInput(f"{sq.path} is not a readable Ingero database: no {what}")


def _write_events(sq: SqliteFile, out: EventWriter, base: int) -> None:
    """`events` in rowid order through `out`: integer columns from SQLite, names and kinds joined
    from `ops`/`sources` in DuckDB, args built there."""
    cols = sq.columns("events")
    op_keys, op_names = sq.lookup("SELECT source_id * 65536 + op_id, name FROM ops")
    src_keys, src_names = sq.lookup("SELECT id, name FROM sources")
    src_kind = dict(zip(src_keys.tolist(), (KIND_BY_SOURCE.get(v, "other") for v in src_names)))
    op_kinds = np.array([_kind(src_kind.get(k >> 16, "other"), v) for k, v in zip(op_keys.tolist(), op_names)],
                        dtype=object)
    ints = {"ts": f"timestamp - {int(base)}", "dur": "duration", "pid": "pid", "tid": "tid", "src": "source",
            "code": "source * 65536 + op"}
    ints |= {k: c for k, c in (("gpu", "gpu_id"), ("arg0", "arg0"), ("arg1", "arg1"), ("ret", "ret_code"),
                               ("stack", "stack_hash")) if c in cols}
    texts = {"node": "node"} if "node" in cols else {}
    int_id = "id" in cols and sq.query_rows("SELECT typeof(id) FROM events LIMIT 1") in ([], [("integer",)])
    (ints if int_id else texts).update({"ingero_id": "id"} if "id" in cols else {})
    args = [("'source'", "coalesce(s.name, c.src::VARCHAR)")]
    args += [(f"'{k}'", f"c.{k}") for k in ("arg0", "arg1", "ret") if k in ints]
    args += [("'stack'", "nullif(c.stack, 0)")] if "stack" in ints else []
    args += [("'node'", "nullif(c.node, '')")] if texts.get("node") else []
    args += [("'id'", "c.ingero_id")] if "id" in cols else []
    device = f"CASE WHEN s.name IN ('CUDA', 'DRIVER') THEN {nn('gpu')} END" if "gpu" in ints else "NULL"
    select = {"source": "'host_api'", "kind": "coalesce(o.kind, s.kind, 'other')",
              "name": "coalesce(o.name, 'ingero source ' || c.src || ' op ' || (c.code % 65536))",
              "device": device, "pid": nn("pid"), "tid": nn("tid"),
              "args": f"json_object({', '.join(f'{k}, {v}' for k, v in args)})"}
    joins = "LEFT JOIN _hs_ops o ON o.id = c.code LEFT JOIN _hs_src s ON s.id = c.src"
    src_kinds = np.array([src_kind[k] for k in src_keys.tolist()], dtype=object)
    with lookup_table(out.con, op_keys, "_hs_ops", name=op_names, kind=op_kinds), \
            lookup_table(out.con, src_keys, "_hs_src", name=src_names, kind=src_kinds):
        for frame in sq.column_chunks("events", ints, texts, _valid_event(base)):
            out.write(frame, select, joins)


SKIPPED_EVENTS = ("events rows without an integer timestamp (within 2^62 ns of the first) and duration "
                  "(0 to 2^53 ns)")


def _valid_event(base: int) -> str:
    """SQLite condition of the events rows that are stored (the others are counted as SKIPPED_EVENTS)."""
    return (f"typeof(timestamp) = 'integer' AND typeof(duration) = 'integer' AND duration BETWEEN 0 AND "
            f"{MAX_DURATION_NS} AND timestamp BETWEEN {int(base)} AND {int(base) + MAX_TS_NS - 1}")


def _kind(source_kind: str, op: str) -> str:
    """'runtime'/'driver' by the op's Ingero source, 'sync' for its synchronizations, else 'other'."""
    if source_kind == "other":
        return "other"
    return "sync" if op in SYNC_OPS or "Synchronize" in op else source_kind


def _samples(con, sq: SqliteFile, run_id: int, rank: int, base: int, skipped: dict[str, int]) -> int:
    """system_snapshots -> samples (one row per metric and snapshot; a small table), on the
    events' clock (ns since `base`). A snapshot whose timestamp is not an integer near the events',
    or a value that is not a finite number, is skipped and counted in `skipped`."""
    import math

    from hybridscope.store.db import insert_columns

    cols = [c for c in SNAPSHOT_METRICS if c in sq.columns("system_snapshots")]
    if not cols or "timestamp" not in sq.columns("system_snapshots"):
        return 0
    rows = sq.query_rows(f"SELECT timestamp, {', '.join(cols)} FROM system_snapshots "
                         "WHERE timestamp IS NOT NULL ORDER BY timestamp")
    kept = [r for r in rows if _is_int(r[0]) and abs(r[0] - base) < MAX_OFFSET_NS]
    if len(kept) < len(rows):
        skipped["system_snapshots rows with a timestamp that is not an integer near the events'"] = len(rows) - len(kept)
    ts = np.array([r[0] - base for r in kept], dtype=np.int64)
    n = 0
    for i, col in enumerate(cols, start=1):
        ok = [j for j, r in enumerate(kept) if isinstance(r[i], (int, float)) and not isinstance(r[i], bool)
              and math.isfinite(r[i]) and abs(r[i]) < 1e300]
        if len(ok) < len(kept):
            skipped[f"system_snapshots.{col} values that are not finite numbers"] = len(kept) - len(ok)
        insert_columns(con, "samples", {
            "run_id": np.full(len(ok), run_id, dtype=np.int64), "rank": np.full(len(ok), rank, dtype=np.int64),
            "ts_ns": ts[ok], "metric": np.full(len(ok), SNAPSHOT_METRICS[col], dtype=object),
            "value": np.array([kept[j][i] for j in ok], dtype=np.float64)})
        n += len(ok)
    return n


def _is_int(v) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _metadata(sq: SqliteFile) -> dict:
    """host, device, versions, rank, world size and notes from sessions/schema_info/events."""
    notes: dict = {}
    sessions = _rows(sq, "sessions", ("gpu_model", "gpu_driver", "cuda_ver", "python_ver", "ingero_ver", "node",
                                      "flags", "pid_filter", "started_at", "stopped_at"))
    gpus = sorted({s["gpu_model"].split(",")[0].strip() for s in sessions if _text(s.get("gpu_model"))})
    nodes = sorted({s["node"] for s in sessions if _text(s.get("node"))})
    if "node" in sq.columns("events"):
        nodes = sorted(set(nodes) | {r[0] for r in sq.query_rows("SELECT DISTINCT node FROM events")
                                     if _text(r[0])})
    versions = {k: sorted({str(s[c]) for s in sessions if s.get(c)}) for k, c in
                (("ingero", "ingero_ver"), ("cuda", "cuda_ver"), ("driver", "gpu_driver"), ("python", "python_ver"))}
    versions = {k: (v[0] if len(v) == 1 else v) for k, v in versions.items() if v}
    if "value" in sq.columns("schema_info"):
        row = sq.query_rows("SELECT value FROM schema_info WHERE key = 'version'")
        if row and isinstance(row[0][0], str):
            versions["ingero_schema"] = row[0][0]
    if sessions:
        notes["ingero_sessions"] = [{k: s.get(k) for k in ("node", "started_at", "stopped_at", "flags", "pid_filter")
                                     if s.get(k) not in (None, "")} for s in sessions]
    if len(nodes) > 1:
        notes["nodes"] = f"{len(nodes)} nodes in one database ({', '.join(nodes)}): one rank, node in args.node"
    rank, world = 0, 1
    if {"rank", "world_size"} <= set(sq.columns("events")):
        found = sq.query_rows("SELECT DISTINCT rank, world_size FROM events WHERE rank IS NOT NULL")
        if len(found) == 1:
            rank = checked_int(sq.path, "events.rank", found[0][0], 0, MAX_RANK)
            world = checked_int(sq.path, "events.world_size", found[0][1] or 1, 1, MAX_RANK + 1)
        elif found:
            notes["ranks"] = f"{len(found)} distinct (rank, world_size) values in events: stored as one rank"
    notes.update(_recorder_notes(sq))
    return {"host": nodes[0] if len(nodes) == 1 else None, "device": ", ".join(gpus) or None,
            "versions": versions, "rank": rank, "world_size": world, "notes": notes}


def _recorder_notes(sq: SqliteFile) -> dict:
    """What Ingero itself concluded or dropped: causal chains, and events it counted but did not store."""
    notes: dict = {}
    chains = _rows(sq, "causal_chains", ("severity", "summary", "cuda_op"))
    if chains:
        notes["ingero_causal_chains"] = [f"{c.get('severity')}: {c.get('summary')}" for c in chains[:MAX_CHAINS]]
    if {"count", "stored"} <= set(sq.columns("event_aggregates")):
        counted, stored = sq.query_rows("SELECT sum(count), sum(stored) FROM event_aggregates")[0]
        if counted is not None and stored is not None and counted > stored:
            notes["ingero_not_recorded"] = (
                f"Ingero counted {counted} events in its per-minute aggregates but stored {stored}: "
                f"{counted - stored} were never written to its events table")
    return notes


def _text(value) -> str | None:
    return value if isinstance(value, str) and value else None


def _rows(sq: SqliteFile, table: str, wanted: tuple[str, ...]) -> list[dict]:
    """The `wanted` columns of `table` as dicts; values that are neither text nor integers (a
    damaged cell: a BLOB, a REAL) become None."""
    cols = [c for c in wanted if c in sq.columns(table)]
    if not cols:
        return []
    return [dict(zip(cols, (v if isinstance(v, (str, int)) else None for v in r)))
            for r in sq.query_rows(f"SELECT {', '.join(cols)} FROM {table}")]
