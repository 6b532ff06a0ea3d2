"""The `runs` and `run_ranks` rows, written the same way by every importer and by live capture.

A run is opened by its first rank (`insert_run`); each rank adds its `run_ranks` row
(`insert_run_rank`) and, once its events are in, `finish_rank` widens the run's window and stores
the rank's notes. All inside the caller's transaction.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import duckdb


def find_duplicate(con: duckdb.DuckDBPyConnection, content_hash: str) -> tuple[int, int] | None:
    """(run_id, rank) of a rank already imported from a file with these bytes, else None."""
    rows = con.execute(
        "SELECT run_id, rank FROM run_ranks WHERE content_hash = ? ORDER BY run_id, rank LIMIT 1",
        [content_hash],
    ).fetchall()
    return (rows[0][0], rows[0][1]) if rows else None


def to_json(value: Any) -> str | None:
    """JSON text for a JSON column (None stays NULL); keys sorted so equal values compare equal."""
    if value is None:
        return None
    return json.dumps(value, sort_keys=True, separators=(",", ":"), default=str)


def insert_run(
    con: duckdb.DuckDBPyConnection,
    run_id: int,
    *,
    source: str,
    label: str | None,
    host: str | None,
    rank: int,
    world_size: int,
    device_name: str | None,
    versions: Mapping | None,
    distributed_info: Mapping | None,
) -> None:
    """The `runs` row of a new run, opened by its first rank; `finish_rank` fills window and notes."""
    con.execute(
        "INSERT INTO runs (run_id, label, source, host, rank, world_size, device_name, versions, "
        "distributed_info, notes) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, '{}')",
        [run_id, label, source, host, rank, world_size, device_name, to_json(versions),
         to_json(distributed_info)],
    )


def insert_run_rank(
    con: duckdb.DuckDBPyConnection,
    run_id: int,
    rank: int,
    *,
    path: Path,
    content_hash: str,
    host: str | None,
    device_name: str | None,
    versions: Mapping | None,
    distributed_info: Mapping | None,
    base_time_ns: int | None,
    n_events: int,
    t_start_ns: int | None,
    t_end_ns: int | None,
) -> None:
    con.execute(
        "INSERT INTO run_ranks (run_id, rank, path, content_hash, host, device_name, versions, "
        "distributed_info, base_time_ns, n_events, t_start_ns, t_end_ns) "
        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        [run_id, rank, str(path), content_hash, host, device_name, to_json(versions),
         to_json(distributed_info), base_time_ns, n_events, t_start_ns, t_end_ns],
    )


def finish_rank(con: duckdb.DuckDBPyConnection, run_id: int, rank: int, notes: Mapping[str, Any]) -> None:
    """After a rank's rows are in: widen the run's window to its ranks', set `rank` to NULL once a
    run holds several ranks, and store this rank's notes under notes.ranks."<rank>"."""
    (old,) = con.execute("SELECT notes FROM runs WHERE run_id = ?", [run_id]).fetchall()[0]
    merged = json.loads(old) if old else {}
    merged.setdefault("ranks", {})[str(rank)] = dict(notes)
    con.execute(
        """
        UPDATE runs SET
            t_start_ns = (SELECT min(t_start_ns) FROM run_ranks WHERE run_id = $run),
            t_end_ns   = (SELECT max(t_end_ns)   FROM run_ranks WHERE run_id = $run),
            rank = CASE WHEN (SELECT count(*) FROM run_ranks WHERE run_id = $run) = 1
                        THEN (SELECT min(rank) FROM run_ranks WHERE run_id = $run) END,
            notes = $notes
        WHERE run_id = $run
        """,
        {"run": run_id, "notes": to_json(merged)},
    )
