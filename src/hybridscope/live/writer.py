"""From capture buffers to the store: columns for each table, written as one run in one transaction.

A capture becomes a run like an import (source 'capture'): `runs` and `run_ranks` rows through the
importers' helpers, events (hook ranges as 'annotation' events, per-layer times as 'layer' events,
kernel-mode events as recorded), `steps`, `routing`, `samples`, then `attribute_run` builds the
scopes and attributes kernels, inside the same transaction. Event ids: hook ranges keep their
instance number, every other event is numbered after them.

If the store cannot be opened or written (locked by another process, not a hybridscope file), the
run goes to a fallback file beside it (`<stem>.capture-<pid>.duckdb`) so the capture is not lost;
both failures are reported.
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from hybridscope.store.db import insert_columns, next_run_id, open_store, transaction


@dataclass
class RunMeta:
    label: str | None
    path: str
    rank: int = 0
    world_size: int = 1
    device_name: str | None = None
    versions: dict = field(default_factory=dict)
    distributed_info: dict | None = None
    host: str = field(default_factory=socket.gethostname)


def layer_columns(res: dict[str, np.ndarray], recorder, *, rank: int, pid: int, device: int | None,
                  first_id: int, replays: list[tuple[int, int, int]] = ()) -> dict:
    """`layers` mode rows: one per resolved instance, exclusive device time (see live.layers).
    `replays`: (first instance, count, graph key) of instances timed inside CUDA-graph replays
    (live.graphs): their rows carry `graph_id` and `"replay":true` in args."""
    inst = res["inst"]
    n = len(inst)
    if n == 0:
        return {}
    spec = np.asarray(recorder.inst_spec, np.int64)[inst]
    sp = recorder.specs
    excl = res["excl_ns"]
    index = recorder.instance_index()[inst]
    graph = np.full(len(recorder.inst_spec), -1, np.int64)
    for base, k, key in replays:
        graph[base:base + k] = key
    graph = graph[inst]
    replay = [',"replay":true' if g >= 0 else "" for g in graph.tolist()]
    return {
        "rank": np.full(n, rank, np.int32), "event_id": first_id + np.arange(n, dtype=np.int64),
        "source": ["layer"] * n, "kind": ["layer"] * n,
        "name": [sp[s].module_class for s in spec],
        "device": [device] * n, "pid": np.full(n, pid, np.int64),
        "tid": np.full(n, recorder.tid, np.int64),
        "ts_ns": res["ts_ns"], "duration_ns": excl, "duration_us": excl / 1000.0,
        "args": [f'{{"inclusive_ns":{v}{r}}}' for v, r in zip(res["incl_ns"].tolist(), replay)],
        "graph_id": [g if g >= 0 else None for g in graph.tolist()],
        "layer_type": [sp[s].layer_type for s in spec],
        "layer_index": [None if i < 0 else int(i) for i in index],
        "module": [sp[s].path for s in spec],
        "scope_id": inst, "attr_method": ["scope"] * n,
        "step": np.asarray(recorder.inst_step, np.int32)[inst],
    }


def step_tables(steps: list[tuple], *, rank: int, pid: int, tid: int, first_id: int) -> tuple[dict, dict, dict]:
    """(steps rows, 'step#k' annotation events, step_ms / tokens_per_s samples) from closed steps
    given as (step, ts_ns, duration_ns, phase, n_tokens, n_requests, sampled, graph_replay)."""
    if not steps:
        return {}, {}, {}
    step, ts, dur, phase, n_tokens, n_requests, sampled, replay = (list(c) for c in zip(*steps))
    n = len(step)
    ts_a, dur_a = np.asarray(ts, np.int64), np.asarray(dur, np.int64)
    rows = {"rank": np.full(n, rank, np.int32), "step": np.asarray(step, np.int32), "ts_ns": ts_a,
            "duration_ns": dur_a, "phase": phase, "n_tokens": n_tokens, "n_requests": n_requests,
            "sampled": np.asarray(sampled, bool), "graph_replay": np.asarray(replay, bool)}
    ann = {"rank": np.full(n, rank, np.int32), "event_id": first_id + np.arange(n, dtype=np.int64),
           "source": ["annotation"] * n, "kind": ["user_annotation"] * n,
           "name": [f"step#{s}" for s in step], "pid": np.full(n, pid, np.int64),
           "tid": np.full(n, tid, np.int64), "ts_ns": ts_a, "duration_ns": dur_a,
           "duration_us": dur_a / 1000.0, "step": np.asarray(step, np.int32), "phase": phase}
    end = ts_a + dur_a
    ms = dur_a / 1e6
    tok = np.array([np.nan if t is None else t for t in n_tokens], np.float64)
    has_tok = ~np.isnan(tok) & (dur_a > 0)
    samples = {"ts_ns": np.concatenate([end, end[has_tok]]),
               "metric": ["step_ms"] * n + ["tokens_per_s"] * int(has_tok.sum()),
               "value": np.concatenate([ms, tok[has_tok] / (dur_a[has_tok] / 1e9)])}
    samples["rank"] = np.full(len(samples["ts_ns"]), rank, np.int32)
    samples["device"] = [None] * len(samples["ts_ns"])
    return rows, ann, samples


def merge(*parts: dict) -> dict:
    """Concatenate column dicts (same table) that may name different column subsets."""
    parts = tuple(p for p in parts if p)
    if not parts:
        return {}
    names = list(dict.fromkeys(k for p in parts for k in p))
    sizes = [len(next(iter(p.values()))) for p in parts]
    out = {}
    for k in names:
        chunks = [list(p[k]) if k in p else [None] * m for p, m in zip(parts, sizes)]
        if all(k in p and isinstance(p[k], np.ndarray) for p in parts):
            out[k] = np.concatenate([p[k] for p in parts])
        else:
            out[k] = [v for c in chunks for v in c]
    return out


def write_run(db: Path, meta: RunMeta, tables: dict[str, dict], notes: dict, faults) -> tuple[int, Path]:
    """Write one run; returns (run_id, the file written). Raises the last error when even the
    fallback file cannot be written (the caller records it as a fault)."""
    try:
        return _write(db, meta, tables, notes), db
    except Exception as e:  # noqa: BLE001 - any failure: try the fallback file
        faults.record("writer", e)
        fallback = db.with_name(f"{db.stem}.capture-{os.getpid()}.duckdb")
        notes = {**notes, "written_to_fallback": f"{db} failed: {e}"}
        return _write(fallback, meta, tables, notes), fallback


def _write(db: Path, meta: RunMeta, tables: dict[str, dict], notes: dict) -> int:
    from hybridscope.attribute import attribute_run
    from hybridscope.store.runs import finish_rank, insert_run, insert_run_rank

    con = open_store(db)
    try:
        with transaction(con):
            run_id = next_run_id(con)
            insert_run(con, run_id, source="capture", label=meta.label, host=meta.host, rank=meta.rank,
                       world_size=meta.world_size, device_name=meta.device_name, versions=meta.versions,
                       distributed_info=meta.distributed_info)
            for table, cols in tables.items():
                if cols:
                    n = len(next(iter(cols.values())))
                    insert_columns(con, table, {"run_id": np.full(n, run_id, np.int32), **cols})
            t0, t1, n_events = _window(con, run_id)
            insert_run_rank(con, run_id, meta.rank, path=Path(meta.path), content_hash=None,
                            host=meta.host, device_name=meta.device_name, versions=meta.versions,
                            distributed_info=meta.distributed_info, base_time_ns=None,
                            n_events=n_events, t_start_ns=t0, t_end_ns=t1)
            finish_rank(con, run_id, meta.rank, notes)
            attribute_run(con, run_id, rank=meta.rank)
            _attribute_cpu_ops(con, run_id)
            _phases(con, run_id)
        return run_id
    finally:
        con.close()


def _window(con, run_id: int) -> tuple[int | None, int | None, int]:
    rows = con.execute(
        "SELECT min(ts_ns), max(ts_ns + duration_ns), count(*) FROM events WHERE run_id = ?", [run_id]
    ).fetchall()
    return rows[0]


def _attribute_cpu_ops(con, run_id: int) -> None:
    """CPU ops of a CPU-only kernel-mode capture get the layer of the innermost scope around them.

    `attribute_run` attributes GPU events (through their launches); on a CPU the ops are the
    work itself, so each op takes, from the scopes (built by attribute_run) open on its thread at
    its start, the innermost layer type and layer index, module and step."""
    con.execute(
        """
        UPDATE events AS e SET layer_type = a.layer_type, layer_index = a.layer_index, module = a.module,
               scope_id = a.scope_id, attr_method = 'scope', step = a.step
        FROM (
            SELECT o.event_id,
                   arg_max(s.layer_type, s.depth) FILTER (WHERE s.layer_type IS NOT NULL) AS layer_type,
                   arg_max(s.layer_index, s.depth) FILTER (WHERE s.layer_index IS NOT NULL) AS layer_index,
                   arg_max(s.module_path, s.depth) FILTER (WHERE s.module_path IS NOT NULL) AS module,
                   arg_max(s.scope_id, s.depth) FILTER (WHERE s.kind <> 'step') AS scope_id,
                   max(s.step) AS step
            FROM events o JOIN scopes s
              ON s.run_id = o.run_id AND s.rank = o.rank AND s.tid = o.tid
             AND o.ts_ns >= s.ts_ns AND o.ts_ns < s.end_ns
            WHERE o.run_id = $run AND s.run_id = $run AND o.source = 'cpu' AND o.layer_type IS NULL
            GROUP BY o.event_id) AS a
        WHERE e.run_id = $run AND e.event_id = a.event_id AND e.source = 'cpu'
        """,
        {"run": run_id},
    )


def _phases(con, run_id: int) -> None:
    """Copy each step's phase onto the run's events and scopes (attribution set their step)."""
    for table in ("events", "scopes"):
        con.execute(
            f"UPDATE {table} AS t SET phase = s.phase FROM steps AS s "
            "WHERE t.run_id = $run AND s.run_id = $run AND s.rank = t.rank AND s.step = t.step "
            "AND s.phase IS NOT NULL",
            {"run": run_id},
        )
