"""Reading foreign SQLite files (Nsight Systems exports, Ingero databases) column-wise.

Shared by `ingest.nsys` and `ingest.ingero`. The file is opened read-only and immutable (it may
sit on a read-only mount, and a profiler's WAL must never be touched); every SQLite error, from
the header check to a page that a truncation cut off mid-read, becomes one `BadInput` line.
Rows come out in chunks of numpy columns: SQLite does the per-row work in C (joins, arithmetic,
JSON), Python only transposes the tuples sqlite3 hands back.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from urllib.parse import quote

import numpy as np

from hybridscope.errors import BadInput

SQLITE_MAGIC = b"SQLite format 3\x00"
CHUNK_ROWS = 1 << 18


class SqliteFile:
    """A read-only SQLite file: table and column discovery, string lookups, chunked queries."""

    def __init__(self, path: Path, what: str):
        self.path = Path(path)
        self.what = what
        try:
            with self.path.open("rb") as f:
                head = f.read(len(SQLITE_MAGIC))
        except OSError as e:
            raise BadInput(f"cannot read {self.path}: {e.strerror or e}") from None
        if not head.startswith(SQLITE_MAGIC):
            raise BadInput(f"{self.path} is not an SQLite database, so not {what}")
        try:
            self.con = _connect(self.path)
            self.tables = {
                r[0] for r in self.con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            }
            (check,) = self.con.execute("PRAGMA quick_check(1)").fetchall()[0]
        except sqlite3.Error as e:
            raise self.error(e) from None
        if check != "ok":
            detail = " ".join(check.replace("*** in database main ***", "").split())
            raise BadInput(f"{self.path} is a damaged SQLite file ({detail}); nothing was imported")
        self._columns: dict[str, list[str]] = {}

    def close(self) -> None:
        self.con.close()

    def error(self, e: BaseException) -> BadInput:
        """The one-line BadInput for an SQLite failure while reading this file."""
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        return BadInput(f"{self.path} is a damaged or unreadable SQLite file ({msg}); nothing was imported")

    def columns(self, table: str) -> list[str]:
        """Column names of `table` (empty when the table does not exist)."""
        if table not in self.tables:
            return []
        if table not in self._columns:
            rows = self.query_rows(f"PRAGMA table_info({_q(table)})")
            self._columns[table] = [r[1] for r in rows]
        return self._columns[table]

    def count(self, table: str, where: str = "") -> int:
        if table not in self.tables:
            return 0
        return self.query_rows(f"SELECT count(*) FROM {_q(table)} {where}")[0][0]

    def query_rows(self, sql: str, params: Sequence = ()) -> list[tuple]:
        try:
            return self.con.execute(sql, params).fetchall()
        except sqlite3.DatabaseError as e:
            raise self.error(e) from None

    def lookup(self, sql: str, params: Sequence = ()) -> tuple[np.ndarray, np.ndarray]:
        """(sorted int64 keys, object values) from a two-column (id, text) query, for `resolve`."""
        rows = sorted(self.query_rows(sql, params), key=lambda r: r[0])
        keys = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        values = np.empty(len(rows), dtype=object)
        values[:] = [r[1] for r in rows]
        return keys, values

    def chunks(self, sql: str, params: Sequence = (), rows: int = CHUNK_ROWS) -> Iterator[dict[str, np.ndarray]]:
        """The query's result in chunks of at most `rows` rows, as {column name: numpy array}.

        Integer columns without NULLs come out int64; columns with NULLs or text are object arrays.
        """
        try:
            cur = self.con.execute(sql, params)
            names = [d[0] for d in cur.description]
            while batch := cur.fetchmany(rows):
                yield {n: _column(col) for n, col in zip(names, zip(*batch))}
        except sqlite3.DatabaseError as e:
            raise self.error(e) from None


def resolve(keys: np.ndarray, values: np.ndarray, ids: np.ndarray, missing: str) -> tuple[np.ndarray, int]:
    """values[keys == id] for each id (an int64 array), `missing` where the id is unknown.

    Returns the object array and how many ids were unknown.
    """
    out = np.empty(len(ids), dtype=object)
    if len(keys):
        idx = np.minimum(np.searchsorted(keys, ids), len(keys) - 1)
        found = keys[idx] == ids
        out[found] = values[idx[found]]
    else:
        found = np.zeros(len(ids), dtype=bool)
    out[~found] = missing
    return out, int((~found).sum())


def _column(values: tuple) -> np.ndarray:
    arr = np.array(values)
    if arr.dtype.kind in "iuf":
        return arr.astype(np.int64 if arr.dtype.kind in "iu" else np.float64, copy=False)
    return np.array(values, dtype=object)  # text, or integers mixed with NULLs


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _connect(path: Path) -> sqlite3.Connection:
    uri = f"file:{quote(str(Path(path).resolve()))}?mode=ro&immutable=1"
    return sqlite3.connect(uri, uri=True, check_same_thread=False)


PROGRESS_MIN_ROWS = 200_000  # below this an import is too quick for a bar to help


def write_events(
    con, run_id: int, rank: int, chunks: Iterable[dict[str, np.ndarray]], *, total: int, progress: bool, label: str
) -> tuple[int, int | None, int | None]:
    """Insert chunks of normalized event columns as events of (run_id, rank).

    Each chunk holds source, kind, name, ts_ns, duration_ns (int64, no NULLs) and any other
    `events` columns; event ids are numbered from 0 in the order given and `duration_us` is
    derived. Returns (events written, min ts_ns, max ts_ns + duration_ns).
    """
    from hybridscope.store.db import insert_columns

    n, t_start, t_end = 0, None, None
    with _progress(progress and total >= PROGRESS_MIN_ROWS, total, label) as advance:
        for chunk in chunks:
            m = len(chunk["ts_ns"])
            if m == 0:
                continue
            ts, dur = chunk["ts_ns"].astype(np.int64, copy=False), chunk["duration_ns"].astype(np.int64, copy=False)
            cols = {"run_id": np.full(m, run_id, dtype=np.int64), "rank": np.full(m, rank, dtype=np.int64),
                    "event_id": np.arange(n, n + m, dtype=np.int64), **chunk,
                    "ts_ns": ts, "duration_ns": dur, "duration_us": dur / 1000.0}
            insert_columns(con, "events", cols)
            lo, hi = int(ts.min()), int((ts + dur).max())
            t_start = lo if t_start is None else min(t_start, lo)
            t_end = hi if t_end is None else max(t_end, hi)
            n += m
            advance(m)
    return n, t_start, t_end


@contextlib.contextmanager
def _progress(enabled: bool, total: int, label: str) -> Iterator:
    """A transient rich progress bar on stderr yielding advance(n); a no-op when disabled."""
    if not enabled:
        yield lambda n: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(f"importing {label}", total=total)
        yield lambda n: bar.advance(task, n)
