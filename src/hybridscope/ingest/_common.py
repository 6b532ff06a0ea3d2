"""Pieces every importer shares: content hashes, re-import detection, run/run_ranks rows, notes.

An importer turns ONE file into the rows of one rank of one run, inside the caller's transaction
(`hybridscope.ingest.import_files` opens it). It gets an `ImportContext` (the options of the whole
import, and the runs already opened by earlier files of the same call) and returns an
`ImportResult`. The helpers here write the `runs` and `run_ranks` rows the same way for every
format, so that `runs` means the same thing whatever the source.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb

from hybridscope.store.db import next_run_id

HASH_CHUNK = 1 << 20


@dataclass(frozen=True)
class ImportResult:
    """What one file became. `duplicate_of` is (run_id, rank) when the file was already stored:
    then nothing was written and `run_id`/`rank` name the stored copy."""

    path: str
    format: str
    run_id: int
    rank: int
    n_events: int
    skipped: Mapping[str, int] = field(default_factory=dict)
    duplicate_of: tuple[int, int] | None = None
    world_size: int = 1
    notes: tuple[str, ...] = ()  # one line each: what the file lacked or what was not read (summary)


class RetryFile(Exception):
    """Raised by an importer to have its file imported again, in a fresh transaction, with
    `ctx.careful` set (a fast path met something it cannot vouch for). The driver retries once."""


@dataclass
class ImportContext:
    """Options of one `import_files` call, and the runs its earlier files opened.

    `rank` forces the rank of every file (only sensible for one file); `label` names new runs;
    `careful` is set by the driver when it retries a file after RetryFile.
    `jobs` maps a distributed-job key to (run_id, ranks already stored in this call), so that the
    files of one job (same world size, distinct ranks) become one run.
    """

    rules_path: Path | None = None
    rank: int | None = None
    label: str | None = None
    progress: bool = True
    careful: bool = False
    jobs: dict[str, tuple[int, set[int]]] = field(default_factory=dict)

    pending: tuple[str, int, int] | None = None

    def run_for(self, con: duckdb.DuckDBPyConnection, job_key: str | None, rank: int) -> tuple[int, bool]:
        """The run this rank belongs to, and whether it is new (the caller inserts its `runs` row).

        A rank joins an earlier file's run of this call when both have the same non-empty job key
        and the rank is not taken yet; otherwise it opens a new run. Call inside the transaction;
        the claim counts only once `committed()` is called after COMMIT.
        """
        run_id, new = None, True
        if job_key is not None and job_key in self.jobs:
            jrun, ranks = self.jobs[job_key]
            if rank not in ranks:
                run_id, new = jrun, False
        if run_id is None:
            run_id = next_run_id(con)
        self.pending = (job_key, run_id, rank) if job_key is not None else None
        return run_id, new

    def committed(self) -> None:
        """The file's transaction committed: its rank now holds its place in its job's run."""
        if self.pending is None:
            return
        job_key, run_id, rank = self.pending
        self.pending = None
        if job_key not in self.jobs or self.jobs[job_key][0] != run_id:
            self.jobs[job_key] = (run_id, set())
        self.jobs[job_key][1].add(rank)


def file_sha256(path: Path) -> str:
    """sha256 of the file's bytes as stored (a .gz is hashed compressed)."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(HASH_CHUNK):
            h.update(chunk)
    return h.hexdigest()


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
