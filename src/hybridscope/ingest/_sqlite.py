"""Reading foreign SQLite files (Nsight Systems exports, Ingero databases) column-wise.

Shared by `ingest.nsys` and `ingest.ingero`. The file is opened read-only and immutable (it may
sit on a read-only mount, and a profiler's WAL must never be touched); every SQLite error, from
the header check to a page that a truncation cut off mid-read, becomes one `BadInput` line.
Rows come out in chunks of numpy columns (`column_chunks`), parsed in C; `EventWriter` maps them
to `events` in DuckDB SQL (names joined from small lookup tables, JSON args built there), so no
Python code runs per event.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator, Sequence
from pathlib import Path
from urllib.parse import quote

import numpy as np

from hybridscope.errors import BadInput
from hybridscope.store.db import unregister

SQLITE_MAGIC = b"SQLite format 3\x00"
CHUNK_ROWS = 1 << 18
NULL_INT = -(2**63)  # integer columns' NULL on the way from SQLite to DuckDB
_NULL_SQL = "(-9223372036854775807 - 1)"  # the same, as an integer literal (SQLite and DuckDB)
TEXT_SEP = "\x1f"


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
            self.con = connect_readonly(self.path)
            self.tables = {
                r[0] for r in self.con.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
            }
            (check,) = self.con.execute("PRAGMA quick_check(1)").fetchall()[0]
        except (sqlite3.Error, UnicodeDecodeError) as e:
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
        except (sqlite3.DatabaseError, UnicodeDecodeError) as e:  # damaged text is not UTF-8
            raise self.error(e) from None

    def lookup(self, sql: str, params: Sequence = ()) -> tuple[np.ndarray, np.ndarray]:
        """(sorted int64 keys, object values) from a two-column (id, text) query: a lookup table."""
        rows = sorted((r for r in self.query_rows(sql, params)  # a damaged key (text, REAL, NULL) finds nothing
                       if isinstance(r[0], int) and -(2**63) < r[0] < 2**63), key=lambda r: r[0])
        keys = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        values = np.empty(len(rows), dtype=object)
        values[:] = ["" if r[1] is None else str(r[1]) for r in rows]  # damaged rows may hold NULL/blobs
        return keys, values

    def column_chunks(self, table: str, ints: dict[str, str], texts: dict[str, str] | None = None,
                      where: str = "1", rows: int = CHUNK_ROWS) -> Iterator[dict[str, np.ndarray]]:
        """Columns of the rows of `table` passing `where`, in rowid order, `rows` at a time.

        `ints` and `texts` map an output name to an SQL expression over the table. Integer columns
        come back as int64 arrays (NULL -> NULL_INT), text columns as object arrays (NULL -> None).
        Each chunk is ONE row from SQLite: group_concat of every column over the chunk's rows, which
        numpy parses in C (a few Python objects per chunk instead of one per value: ~3x faster than
        fetching tuples).
        """
        texts = texts or {}
        inner = [f"CAST(coalesce({e}, {_NULL_SQL}) AS INTEGER) AS {_q(n)}" for n, e in ints.items()]
        inner += [f"replace({e}, char(31), ' ') AS {_q(n)}" for n, e in texts.items()]
        outer = [f"group_concat({_q(n)}, ',')" for n in ints]
        outer += [f"group_concat(coalesce({_q(n)}, ''), char(31)), group_concat({_q(n)} IS NULL, ',')" for n in texts]
        sql = (f"SELECT count(*), max(_r), {', '.join(outer)} FROM (SELECT rowid AS _r, {', '.join(inner)} "
               f"FROM {_q(table)} WHERE rowid > ? AND ({where}) ORDER BY rowid LIMIT ?)")
        last = NULL_INT
        while True:
            row = self.query_rows(sql, (last, rows))[0]
            if not row[0]:
                return
            last, values = row[1], iter(row[2:])
            out = {n: _parse_ints(next(values), row[0]) for n in ints}
            for n in texts:
                col = np.array(next(values).split(TEXT_SEP), dtype=object)
                col[_parse_ints(next(values), row[0]).astype(bool)] = None
                out[n] = col
            yield out


def _parse_ints(text: str, n: int) -> np.ndarray:
    arr = np.fromstring(text, dtype=np.int64, sep=",")
    if len(arr) != n:  # a value that is not an integer (REAL, text) in an integer column
        raise BadInput(f"a column that should hold integers holds something else ({text[:40]}...)")
    return arr


def _q(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def connect_readonly(path: Path) -> sqlite3.Connection:
    """The source opened read-only and immutable: SQLite writes nothing beside it (no -wal or -shm
    of a WAL-mode database such as Ingero's), so it imports from a read-only directory too."""
    uri = f"file:{quote(str(Path(path).resolve()))}?mode=ro&immutable=1"
    return sqlite3.connect(uri, uri=True, check_same_thread=False)


PROGRESS_MIN_ROWS = 200_000  # below this an import is too quick for a bar to help
DEVICE_COLUMNS = frozenset({"device", "gpu"})  # chunk columns that become events.device
EVENT_COLUMNS = ("source", "kind", "name", "device", "stream", "pid", "tid", "correlation", "graph_id", "args")


class EventWriter:
    """Appends chunks to `events` of (run_id, rank): numbering event ids, tracking the window.

    `write(frame, select, joins)` registers the chunk (a dict of numpy columns with at least `ts`
    and `dur`, both without NULLs) as `c` and inserts one event per row; `select` maps events
    columns (EVENT_COLUMNS) to DuckDB expressions over `c` and the joined tables, absent ones are
    NULL. Use inside the import's transaction and `progress()` context.
    """

    def __init__(self, con, run_id: int, rank: int, path: Path):
        self.con, self.run_id, self.rank, self.path = con, run_id, rank, path
        self.n, self.t_start, self.t_end = 0, None, None
        self.advance = lambda n: None

    def write(self, frame: dict[str, np.ndarray], select: dict[str, str], joins: str = "") -> int:
        m = len(frame["ts"])
        if m == 0:
            return 0
        ts, dur = frame["ts"], frame["dur"]
        for col in DEVICE_COLUMNS & frame.keys():  # events.device is an INTEGER
            bad = (frame[col] != NULL_INT) & ((frame[col] < -(2**31)) | (frame[col] >= 2**31))
            if bad.any():
                raise BadInput(f"{self.path}: a GPU device id out of range ({int(frame[col][bad][0])}); "
                               "nothing was imported")
        frame = {**frame, "eid": np.arange(self.n, self.n + m, dtype=np.int64)}
        exprs = ", ".join(select.get(c, "NULL") for c in EVENT_COLUMNS)
        self.con.register("c", frame)
        try:
            self._insert(exprs, joins)
        finally:
            unregister(self.con, "c")
        lo, hi = int(ts.min()), int((ts + dur).max())
        self.t_start = lo if self.t_start is None else min(self.t_start, lo)
        self.t_end = hi if self.t_end is None else max(self.t_end, hi)
        self.n += m
        self.advance(m)
        return m

    def _insert(self, exprs: str, joins: str) -> None:
        import duckdb

        try:
            self.con.execute(
                f"INSERT INTO events (run_id, rank, event_id, ts_ns, duration_ns, duration_us, "
                f"{', '.join(EVENT_COLUMNS)}) SELECT $run, $rank, c.eid, c.ts, c.dur, c.dur / 1000.0, {exprs} "
                f"FROM c {joins}", {"run": self.run_id, "rank": self.rank})
        except (duckdb.ConversionException, duckdb.OutOfRangeException) as e:  # values no export writes
            raise BadInput(f"{self.path} holds values that cannot be events ({str(e).splitlines()[0]}); "
                           "nothing was imported") from None

    @contextlib.contextmanager
    def progress(self, ctx, total: int, label: str) -> Iterator[None]:
        """Report the rows written to the import's reporter (`ImportContext.reporting`)."""
        with ctx.reporting(label, total, "rows", worth_it=total >= PROGRESS_MIN_ROWS) as report:
            done = 0

            def advance(n: int) -> None:
                nonlocal done
                done += n
                report(done)

            self.advance = advance
            try:
                yield
            finally:
                self.advance = lambda n: None


def nn(col: str) -> str:
    """DuckDB expression: chunk column `col` with NULL_INT back to NULL."""
    return f"nullif(c.{col}, {_NULL_SQL})"


@contextlib.contextmanager
def lookup_table(con, keys: np.ndarray, view: str = "_hs_lookup", **values: np.ndarray) -> Iterator[None]:
    """`view` (id -> values): a small table for a reader's join, as a DuckDB view over numpy
    arrays while the block runs. Never empty, so that DuckDB can type its columns."""
    if len(keys) == 0:
        keys = np.array([NULL_INT + 1], dtype=np.int64)
        values = {k: np.array([""], dtype=object) for k in values}
    con.register(view, {"id": np.asarray(keys, dtype=np.int64), **values})
    try:
        yield
    finally:
        unregister(con, view)
