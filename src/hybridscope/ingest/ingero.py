"""Ingero eBPF databases (`ingero trace --record`, SQLite) -> host-side API events.

Ingero records, with uprobes and tracepoints, how long host threads spent in CUDA runtime and
driver calls, in syncs, and in scheduler, block-I/O and network events. These are HOST timings:
no kernel ran for them on a GPU, and Ingero records no kernel names. They are stored with
source = 'host_api', so no kernel statistic (source = 'cuda') ever sees them, and with
name = the Ingero operation ('cudaLaunchKernel', 'cuCtxSynchronize', 'sched_switch', ...), so an
analysis can group them by operation. kind: 'runtime' (CUDA runtime), 'driver' (CUDA driver),
'sync' (the stream/device/context synchronizations of both), 'other' (host kernel, I/O, network).

Every row of `events` becomes one event (the count is checked and any difference is reported);
`ts_ns` is Ingero's Unix-epoch timestamp as recorded (so `base_time_ns` = 0), `duration_ns` its
duration. Kept in `args`: the Ingero source, arg0/arg1 (bytes, kernel pointer, copy direction:
see the database's schema_info), the return code, the stack hash (stacks are in the file's
`stack_traces`), the node and the Ingero event id. `system_snapshots` go to `samples`
(host CPU/memory/load), the recorder's own sessions and causal-chain findings to runs.notes.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hybridscope.errors import BadInput
from hybridscope.ingest._common import ImportContext, ImportResult, finish_rank, insert_run, insert_run_rank
from hybridscope.ingest._sqlite import SqliteFile, resolve, write_events

FORMAT = "ingero"
REQUIRED = {"events": ("timestamp", "duration", "pid", "tid", "source", "op"),
            "sources": ("id", "name"), "ops": ("source_id", "op_id", "name")}
SYNC_OPS = frozenset({"cudaStreamSync", "cudaDeviceSync", "cuCtxSynchronize"})
KIND_BY_SOURCE = {"CUDA": "runtime", "DRIVER": "driver"}
# system_snapshots column -> samples.metric
SNAPSHOT_METRICS = {"cpu_pct": "host_cpu_util_pct", "mem_pct": "host_mem_used_pct",
                    "mem_avail": "host_mem_avail_mb", "swap_mb": "host_swap_used_mb", "load_avg": "host_load_avg_1m"}
MAX_CHAINS = 20


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
        stats = {"unknown_ops": 0}
        n, t0, t1 = write_events(con, run_id, rank, _events(sq, stats), total=rows, progress=ctx.progress,
                                 label=path.name)
        n_samples = _samples(con, sq, run_id, rank)
        insert_run_rank(con, run_id, rank, path=path, content_hash=content_hash, host=meta["host"],
                        device_name=meta["device"], versions=meta["versions"], distributed_info=None,
                        base_time_ns=0, n_events=n, t_start_ns=t0, t_end_ns=t1)
        skipped = {"events rows not stored": rows - n} if rows != n else {}
        notes = {"format": FORMAT, "events_table_rows": rows, "events_stored": n, "samples": n_samples,
                 "timing": "host-side API/tracepoint durations (eBPF), not GPU kernel executions: "
                           "stored as source='host_api'", **meta["notes"]}
        if stats["unknown_ops"]:
            notes["unknown_ops"] = f"{stats['unknown_ops']} events have a (source, op) pair missing from `ops`"
        finish_rank(con, run_id, rank, notes)
    finally:
        sq.close()
    return ImportResult(str(path), FORMAT, run_id, rank, n, skipped=skipped, world_size=meta["world_size"])


def _check(sq: SqliteFile) -> None:
    for table, needed in REQUIRED.items():
        missing = [c for c in needed if c not in sq.columns(table)]
        if table not in sq.tables or missing:
            what = f"table {table}" if table not in sq.tables else f"{table}.{', '.join(missing)}"
            raise BadInput(f"{sq.path} is not a readable Ingero database: no {what}")


def _events(sq: SqliteFile, stats: dict):
    """Chunks of normalized columns from `events`, in rowid order; counts unknown ops in stats."""
    cols = sq.columns("events")
    keys, names = sq.lookup("SELECT source_id * 65536 + op_id, name FROM ops")
    src_keys, src_names = sq.lookup("SELECT id, name FROM sources")
    kinds = np.array([_kind(k >> 16, v, src_keys, src_names) for k, v in zip(keys, names)], dtype=object)
    src_kinds = np.array([KIND_BY_SOURCE.get(v, "other") for v in src_names], dtype=object)
    args = [("source", "coalesce(s.name, e.source)"), ("arg0", "e.arg0"), ("arg1", "e.arg1"),
            ("ret", "e.ret_code"), ("stack", "CASE WHEN e.stack_hash != 0 THEN e.stack_hash END"),
            ("node", "nullif(e.node, '')"), ("id", "e.id")]
    need = {"arg0": "arg0", "arg1": "arg1", "ret": "ret_code", "stack": "stack_hash", "node": "node", "id": "id"}
    args_sql = ", ".join(f"'{k}', {v}" for k, v in args if k not in need or need[k] in cols)
    device = "CASE WHEN s.name IN ('CUDA', 'DRIVER') THEN e.gpu_id END" if "gpu_id" in cols else "NULL"
    sql = (f"SELECT e.timestamp AS ts, e.duration AS dur, e.pid, e.tid, e.source * 65536 + e.op AS code, "
           f"{device} AS device, json_object({args_sql}) AS args "
           f"FROM events e LEFT JOIN sources s ON s.id = e.source ORDER BY e.rowid")
    for c in sq.chunks(sql):
        m = len(c["ts"])
        code = c["code"].astype(np.int64)
        name, missing = resolve(keys, names, code, "")
        if missing:
            stats["unknown_ops"] += missing
            lost = name == ""
            name[lost] = [f"ingero source {k >> 16} op {k & 65535}" for k in code[lost]]
        kind = resolve(keys, kinds, code, "")[0]
        if missing:  # an op the `ops` table lacks: its source still says runtime/driver/other
            kind[kind == ""] = resolve(src_keys, src_kinds, code[kind == ""] >> 16, "other")[0]
        yield {"source": np.full(m, "host_api", dtype=object), "kind": kind,
               "name": name, "device": c["device"], "pid": c["pid"], "tid": c["tid"],
               "ts_ns": c["ts"], "duration_ns": c["dur"], "args": c["args"]}


def _kind(source_id: int, op: str, src_keys: np.ndarray, src_names: np.ndarray) -> str:
    source = resolve(src_keys, src_names, np.array([source_id], dtype=np.int64), "")[0][0]
    if source not in KIND_BY_SOURCE:
        return "other"
    return "sync" if op in SYNC_OPS or "Synchronize" in op else KIND_BY_SOURCE[source]


def _samples(con, sq: SqliteFile, run_id: int, rank: int) -> int:
    """system_snapshots -> samples (one row per metric and snapshot)."""
    from hybridscope.store.db import insert_columns

    cols = [c for c in SNAPSHOT_METRICS if c in sq.columns("system_snapshots")]
    if not cols or "timestamp" not in sq.columns("system_snapshots"):
        return 0
    n = 0
    for c in sq.chunks(f"SELECT timestamp, {', '.join(cols)} FROM system_snapshots ORDER BY timestamp"):
        m = len(c["timestamp"])
        for col in cols:
            insert_columns(con, "samples", {
                "run_id": np.full(m, run_id, dtype=np.int64), "rank": np.full(m, rank, dtype=np.int64),
                "ts_ns": c["timestamp"], "metric": np.full(m, SNAPSHOT_METRICS[col], dtype=object),
                "value": c[col]})
            n += m
    return n


def _metadata(sq: SqliteFile) -> dict:
    """host, device, versions, rank, world size and notes from sessions/schema_info/events."""
    notes: dict = {}
    sessions = _rows(sq, "sessions", ("gpu_model", "gpu_driver", "cuda_ver", "python_ver", "ingero_ver", "node",
                                      "flags", "pid_filter", "started_at", "stopped_at"))
    gpus = sorted({s["gpu_model"].split(",")[0].strip() for s in sessions if s.get("gpu_model")})
    nodes = sorted({s["node"] for s in sessions if s.get("node")})
    if "node" in sq.columns("events"):
        nodes = sorted(set(nodes) | {r[0] for r in sq.query_rows("SELECT DISTINCT node FROM events") if r[0]})
    versions = {k: sorted({s[c] for s in sessions if s.get(c)}) for k, c in
                (("ingero", "ingero_ver"), ("cuda", "cuda_ver"), ("driver", "gpu_driver"), ("python", "python_ver"))}
    versions = {k: (v[0] if len(v) == 1 else v) for k, v in versions.items() if v}
    if "value" in sq.columns("schema_info"):
        row = sq.query_rows("SELECT value FROM schema_info WHERE key = 'version'")
        if row:
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
            rank, world = found[0][0], found[0][1] or 1
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


def _rows(sq: SqliteFile, table: str, wanted: tuple[str, ...]) -> list[dict]:
    cols = [c for c in wanted if c in sq.columns(table)]
    if not cols:
        return []
    return [dict(zip(cols, r)) for r in sq.query_rows(f"SELECT {', '.join(cols)} FROM {table}")]
