"""Small factories for synthetic stores: runs, ranks, events, scopes, steps, routing, samples.

Every analysis test builds exactly the data it reasons about, by hand:

    con = new_store(tmp_path / "s.duckdb")
    run = add_run(con)
    add_events(con, run, [1_000, 2_000, 3_000], layer_type="mamba")
    add_events(con, run, [50_000], layer_type="moe_comm", name="ncclDevKernel_SendRecv")

Conventions (so hand-computed answers stay simple):
- Durations are integer nanoseconds; `duration_us = duration_ns / 1000`.
- Events added in one call are laid back to back on one stream, starting at `start_ns`
  (default: where the previous call on that run and rank ended) with `gap_ns` between them;
  pass `ts_ns` to place each event yourself.
- Defaults make a GPU kernel: source='cuda', kind='kernel'.
- Each rank's window in `run_ranks` (and the run's in `runs`) always covers its events; pin a
  wider window with `add_run(..., window_ns=(start, end))`. `n_events` is kept current.
Tests import this module as `from factories import ...` (pytest puts tests/ on sys.path).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np

from hybridscope.store import db


def new_store(path: str | Path):
    """A fresh store for writing at `path` (a DuckDB connection)."""
    return db.open_store(path)


def add_run(
    con,
    *,
    label: str = "synthetic",
    source: str = "kineto",
    ranks: Sequence[int] = (0,),
    world_size: int | None = None,
    device_name: str | None = "NVIDIA H100 80GB HBM3",
    host: str | None = "testhost",
    window_ns: tuple[int, int] | None = None,
) -> int:
    """Insert a run with one `run_ranks` row per rank; return its run id.

    `window_ns` pins every rank's window (it still grows to cover events added later).
    """
    t0, t1 = window_ns if window_ns is not None else (None, None)
    with db.transaction(con):
        run_id = db.next_run_id(con)
        con.execute(
            "INSERT INTO runs (run_id, label, source, host, rank, world_size, device_name, t_start_ns, t_end_ns)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [run_id, label, source, host, ranks[0] if len(ranks) == 1 else None,
             world_size or len(ranks), device_name, t0, t1],
        )
        for r in ranks:
            con.execute(
                "INSERT INTO run_ranks (run_id, rank, path, host, device_name, n_events, t_start_ns, t_end_ns)"
                " VALUES (?, ?, ?, ?, ?, 0, ?, ?)",
                [run_id, r, f"synthetic_rank{r}.json", host, device_name, t0, t1],
            )
    return run_id


def add_events(
    con,
    run_id: int,
    durations_ns: Iterable[int],
    *,
    rank: int = 0,
    name: str = "kernel",
    source: str = "cuda",
    kind: str = "kernel",
    layer_type: str | None = None,
    layer_index: int | None = None,
    module: str | None = None,
    stream: int | None = 7,
    device: int | None = 0,
    step: int | None = None,
    phase: str | None = None,
    ts_ns: Iterable[int] | None = None,
    start_ns: int | None = None,
    gap_ns: int = 0,
    attr_method: str | None = None,
    **columns: Iterable,
) -> np.ndarray:
    """Append events (one per duration) and return their event ids.

    Scalar keyword values apply to every event; `columns` may give any other `events` column
    (e.g. correlation=[...], pid=..., tid=...) as a scalar or one value per event.
    """
    dur = np.asarray(list(durations_ns), dtype=np.int64)
    n = len(dur)
    if n == 0:
        return np.empty(0, dtype=np.int64)
    first_id = _scalar(con, "SELECT coalesce(max(event_id), -1) + 1 FROM events WHERE run_id = ? AND rank = ?",
                       [run_id, rank])
    if ts_ns is not None:
        ts = np.asarray(list(ts_ns), dtype=np.int64)
    else:
        if start_ns is None:
            start_ns = _scalar(con, "SELECT coalesce(max(ts_ns + duration_ns), 0) FROM events"
                               " WHERE run_id = ? AND rank = ?", [run_id, rank])
        ts = start_ns + np.concatenate([[0], np.cumsum(dur[:-1] + gap_ns)]).astype(np.int64)
    cols = {
        "run_id": np.full(n, run_id, dtype=np.int32),
        "rank": np.full(n, rank, dtype=np.int32),
        "event_id": np.arange(first_id, first_id + n, dtype=np.int64),
        "source": source, "kind": kind, "name": name, "device": device, "stream": stream,
        "ts_ns": ts, "duration_ns": dur, "duration_us": dur / 1000.0,
        "layer_type": layer_type, "layer_index": layer_index, "module": module,
        "attr_method": attr_method if attr_method is not None else (None if layer_type is None else "name"),
        "step": step, "phase": phase, **columns,
    }
    with db.transaction(con):
        db.insert_columns(con, "events", {k: _column(v, n) for k, v in cols.items()})
        _grow_windows(con, run_id, rank)
    return cols["event_id"]


def add_scopes(con, run_id: int, spans: Sequence[tuple[int, int]], *, rank: int = 0, kind: str = "module",
               name: str = "scope", **columns) -> np.ndarray:
    """Append scopes given as (ts_ns, end_ns) spans; other `scopes` columns as scalars or lists."""
    n = len(spans)
    first_id = _scalar(con, "SELECT coalesce(max(scope_id), -1) + 1 FROM scopes WHERE run_id = ? AND rank = ?",
                       [run_id, rank])
    ids = np.arange(first_id, first_id + n, dtype=np.int64)
    cols = {"run_id": run_id, "rank": rank, "scope_id": ids, "kind": kind, "name": name,
            "ts_ns": [s for s, _ in spans], "end_ns": [e for _, e in spans], **columns}
    with db.transaction(con):
        db.insert_columns(con, "scopes", {k: _column(v, n) for k, v in cols.items()})
    return ids


def add_steps(con, run_id: int, durations_ns: Sequence[int], *, rank: int = 0, start_ns: int = 0,
              phase: str | Sequence[str | None] | None = None, **columns) -> None:
    """Append engine steps 0..n-1, back to back from `start_ns`."""
    dur = np.asarray(durations_ns, dtype=np.int64)
    n = len(dur)
    ts = start_ns + np.concatenate([[0], np.cumsum(dur[:-1])]).astype(np.int64) if n else dur
    cols = {"run_id": run_id, "rank": rank, "step": np.arange(n, dtype=np.int32), "ts_ns": ts,
            "duration_ns": dur, "phase": phase, **columns}
    with db.transaction(con):
        db.insert_columns(con, "steps", {k: _column(v, n) for k, v in cols.items()})


def add_routing(con, run_id: int, tokens: np.ndarray, *, rank: int = 0, layers: Sequence[int] | None = None) -> None:
    """Append routing counts from an array `tokens[step, layer, expert]`.

    `layers` maps the array's layer axis to layer indices (default 0..L-1).
    """
    tokens = np.asarray(tokens, dtype=np.int64)
    s, l, e = tokens.shape
    layer_ids = np.asarray(layers if layers is not None else range(l), dtype=np.int32)
    step, layer, expert = np.meshgrid(np.arange(s), np.arange(l), np.arange(e), indexing="ij")
    n = tokens.size
    cols = {"run_id": run_id, "rank": rank, "step": step.ravel().astype(np.int32),
            "layer_index": layer_ids[layer.ravel()], "expert": expert.ravel().astype(np.int32),
            "tokens": tokens.ravel()}
    with db.transaction(con):
        db.insert_columns(con, "routing", {k: _column(v, n) for k, v in cols.items()})


def add_samples(con, run_id: int, metric: str, ts_ns: Sequence[int], values: Sequence[float], *,
                rank: int = 0, device: int | None = 0) -> None:
    """Append dashboard samples of one metric (e.g. 'gpu_util_pct')."""
    n = len(ts_ns)
    cols = {"run_id": run_id, "rank": rank, "device": device, "ts_ns": list(ts_ns), "metric": metric,
            "value": np.asarray(values, dtype=np.float64)}
    with db.transaction(con):
        db.insert_columns(con, "samples", {k: _column(v, n) for k, v in cols.items()})


def store_with(path: str | Path, groups: dict[str, Sequence[int]], *, name_prefix: str = "k_", **run_kw):
    """A store with one run holding one batch of kernels per layer type: {layer_type: durations}.

    Kernels are named f"{name_prefix}{layer_type}". Returns (connection, run_id).
    """
    con = new_store(path)
    run_id = add_run(con, **run_kw)
    for layer_type, durations in groups.items():
        add_events(con, run_id, durations, layer_type=layer_type, name=f"{name_prefix}{layer_type}")
    return con, run_id


# -- helpers ------------------------------------------------------------------------------------


def _grow_windows(con, run_id: int, rank: int) -> None:
    con.execute("INSERT INTO run_ranks (run_id, rank, n_events) VALUES (?, ?, 0) ON CONFLICT DO NOTHING",
                [run_id, rank])
    con.execute(
        """
        UPDATE run_ranks SET
            t_start_ns = least(coalesce(t_start_ns, e.lo), e.lo),
            t_end_ns = greatest(coalesce(t_end_ns, e.hi), e.hi),
            n_events = e.n
        FROM (SELECT min(ts_ns) AS lo, max(ts_ns + duration_ns) AS hi, count(*) AS n
              FROM events WHERE run_id = $run AND rank = $rank) AS e
        WHERE run_ranks.run_id = $run AND run_ranks.rank = $rank
        """,
        {"run": run_id, "rank": rank},
    )
    con.execute(
        """
        UPDATE runs SET t_start_ns = r.lo, t_end_ns = r.hi
        FROM (SELECT min(t_start_ns) AS lo, max(t_end_ns) AS hi FROM run_ranks WHERE run_id = $run) AS r
        WHERE runs.run_id = $run
        """,
        {"run": run_id},
    )


def _column(value, n: int):
    """A scalar repeated n times, or a sequence checked to have n values."""
    if isinstance(value, np.ndarray):
        if value.shape != (n,):
            raise ValueError(f"column of shape {value.shape}, expected ({n},)")
        return value
    if isinstance(value, (list, tuple, range)):
        if len(value) != n:
            raise ValueError(f"column of {len(value)} values, expected {n}")
        return list(value)
    if value is None or isinstance(value, str):
        return np.full(n, value, dtype=object)
    return np.full(n, value)


def _scalar(con, sql: str, params: list):
    return con.execute(sql, params).fetchall()[0][0]
