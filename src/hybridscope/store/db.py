"""Opening the store, transactions, run ids and columnar inserts.

The store is one DuckDB file holding many runs (schema.sql, docs/schema.md). Writers work inside
`transaction()`: an import or a capture flush lands whole or not at all. Readers that run user SQL
use `open_readonly()`, which cannot write.
"""

from __future__ import annotations

import contextlib
import fcntl
import re
import time
import weakref
from collections.abc import Iterator, Mapping, Sequence
from importlib import resources
from pathlib import Path

import duckdb
import numpy as np

from hybridscope.errors import BadInput, NotFound, StoreBusy

SCHEMA_VERSION = "1"
LOCK_WAIT_S = 5.0  # how long a command waits for a store another process holds (--wait)

# What the store calls a GPU event (docs/schema.md): the GPU timeline's kernels and memory
# operations. One definition, used as an SQL predicate over `events` (our constant, never user input).
GPU_KINDS: tuple[str, ...] = ("kernel", "memcpy", "memset")
GPU_EVENTS = "source = 'cuda' AND kind IN (" + ", ".join(f"'{k}'" for k in GPU_KINDS) + ")"


def schema_sql() -> str:
    return resources.files("hybridscope.store").joinpath("schema.sql").read_text()


def open_store(path: str | Path, *, create: bool = True, wait: float = LOCK_WAIT_S) -> duckdb.DuckDBPyConnection:
    """Open (and, when `create`, initialise) a store for writing.

    A store file another process holds is waited for up to `wait` seconds (then StoreBusy names
    that process); a 0-byte file (a store whose creation never completed) is replaced. Raises
    BadInput when the file is a trace or not a DuckDB database; NotFound when it does not exist
    and `create` is false.
    """
    path = Path(path)
    if not create and not path.exists():
        raise NotFound(f"no database at {path}: import a trace or capture a run first")
    _check_not_a_trace(path)
    _replace_unfinished(path)
    con = _connect(path, read_only=False, wait=wait)
    _ensure_schema(con, path)
    return con


def open_readonly(path: str | Path, *, wait: float = LOCK_WAIT_S) -> duckdb.DuckDBPyConnection:
    """A connection that cannot write: for analyses and user SQL. Waits up to `wait` seconds for
    a writer (an import) to finish."""
    path = Path(path)
    if not path.exists():
        raise NotFound(f"no database at {path}: import a trace or capture a run first")
    _check_not_a_trace(path)
    if path.is_file() and path.stat().st_size == 0:
        raise BadInput(f"{path} is empty (a store whose creation never completed): import a trace into it again")
    con = _connect(path, read_only=True, wait=wait)
    try:
        version = _one(con, "SELECT value FROM meta WHERE key = 'schema_version'")
    except duckdb.CatalogException:
        con.close()
        raise BadInput(f"{path} is a DuckDB file but not a hybridscope store (no meta table)") from None
    if version is None or version[0] != SCHEMA_VERSION:
        con.close()
        found = version[0] if version else "none"
        raise BadInput(f"{path} has store schema version {found}; this hybridscope reads {SCHEMA_VERSION}")
    return con


def _connect(path: Path, *, read_only: bool, wait: float) -> duckdb.DuckDBPyConnection:
    """duckdb.connect, retried while another process holds the file's lock, for up to `wait` s."""
    deadline = time.monotonic() + max(wait, 0.0)
    pause = 0.05
    while True:
        try:
            con = duckdb.connect(str(path), read_only=read_only)
            _OPEN.add(con)
            return con
        except duckdb.IOException as e:
            holder = _lock_holder(str(e))
            if holder is None:
                raise BadInput(f"cannot open {path} as a hybridscope database: {_first_line(e)}") from None
            if time.monotonic() >= deadline:
                raise StoreBusy(f"{path} is busy: {holder} holds it; waited {wait:g} s "
                                "(try again when it has finished, or give --wait SECONDS)") from None
        except duckdb.Error as e:
            raise BadInput(f"cannot open {path}: {_first_line(e)}") from None
        time.sleep(min(pause, max(deadline - time.monotonic(), 0.0)))
        pause = min(pause * 2, 0.5)


# The store connections this process has open, for `interrupt_all` (Ctrl-C).
_OPEN: weakref.WeakSet = weakref.WeakSet()


def interrupt_all() -> None:
    """Interrupt the statement every open store connection is running: DuckDB does not stop for a
    Python exception raised in a signal handler (Ctrl-C would wait for the statement to end)."""
    for con in list(_OPEN):
        try:
            con.interrupt()
        except duckdb.Error:  # closed
            pass


_LOCK_HELD = re.compile(r"Conflicting lock is held in (.*?) \(PID (\d+)\)")


def _lock_holder(message: str) -> str | None:
    """'process 1234 (hybridscope import ...)' from DuckDB's lock error, None for other errors."""
    if "Could not set lock" not in message:
        return None
    m = _LOCK_HELD.search(message)
    if m is None:
        return "another process"
    pid, exe = int(m.group(2)), m.group(1)
    try:
        cmd = " ".join(Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").replace("\0", " ").split())
    except OSError:
        cmd = ""
    cmd = cmd or exe
    cmd = cmd if len(cmd) <= 80 else cmd[:77] + "..."
    return f"process {pid} ({cmd})"


# The first bytes of files people mistake for a store, and what to do with them.
_NOT_A_STORE: tuple[tuple[bytes, str], ...] = (
    (b"\x1f\x8b", "a gzip file (a Kineto trace?)"),
    (b"SQLite format 3\x00", "an SQLite file (an nsys export or Ingero database?)"),
    (b"{", "a JSON file (a Kineto trace?)"),
    (b"[", "a JSON file (a Chrome trace?)"),
)


def _check_not_a_trace(path: Path) -> None:
    """BadInput when `path` is a trace or another non-DuckDB file given as --db."""
    try:
        with open(path, "rb") as f:
            head = f.read(16)
    except IsADirectoryError:
        raise BadInput(f"{path} is a directory, not a hybridscope store (a .duckdb file)") from None
    except OSError:
        return  # missing (created later) or unreadable (DuckDB says why)
    if head[8:12] == b"DUCK":  # DuckDB's magic (the first 8 bytes are a checksum: any value)
        return
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    for magic, what in _NOT_A_STORE:
        if text.startswith(magic):
            raise BadInput(f"{path} is {what}, not a hybridscope store: import it with "
                           f"`hybridscope import {path} --db STORE.duckdb`")
    if len(head) >= 12:
        raise BadInput(f"cannot open {path}: not a DuckDB file, so not a hybridscope store")


def remove_store(path: str | Path) -> None:
    """Delete a store file and its WAL (a store this process created and left empty)."""
    for p in (Path(path), Path(f"{path}.wal")):
        p.unlink(missing_ok=True)


def _replace_unfinished(path: Path) -> None:
    """Remove a 0-byte store file (and its WAL) that no process holds: a creation that never
    completed (killed, or out of disk space) is replaced instead of failing every later import."""
    try:
        if not path.is_file() or path.stat().st_size != 0:
            return
        with open(path, "rb+") as f:
            try:
                fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # DuckDB locks the same way
            except OSError:
                return  # another process is creating it right now
            path.unlink()
        Path(f"{path}.wal").unlink(missing_ok=True)
    except OSError:
        return  # DuckDB's own error will say what is wrong


def _ensure_schema(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    try:
        with transaction(con):
            con.execute(schema_sql())
            con.execute(
                "INSERT INTO meta VALUES ('schema_version', ?) ON CONFLICT DO NOTHING", [SCHEMA_VERSION]
            )
    except duckdb.Error as e:
        con.close()
        raise BadInput(f"{path} cannot hold a hybridscope store: {_first_line(e)}") from None
    found = _one(con, "SELECT value FROM meta WHERE key = 'schema_version'")[0]
    if found != SCHEMA_VERSION:
        con.close()
        raise BadInput(f"{path} has store schema version {found}; this hybridscope writes {SCHEMA_VERSION}")


@contextlib.contextmanager
def transaction(con: duckdb.DuckDBPyConnection) -> Iterator[duckdb.DuckDBPyConnection]:
    """BEGIN ... COMMIT, or ROLLBACK on any exception (which is re-raised)."""
    con.execute("BEGIN TRANSACTION")
    try:
        yield con
    except BaseException:
        try:
            con.execute("ROLLBACK")
        except duckdb.Error:  # already rolled back by DuckDB (an interrupt, a failed write)
            pass
        raise
    con.execute("COMMIT")


def next_run_id(con: duckdb.DuckDBPyConnection) -> int:
    """The id a new run gets. Call inside the transaction that inserts the run."""
    return _one(con, "SELECT coalesce(max(run_id), 0) + 1 FROM runs")[0]


def resolve_run(con: duckdb.DuckDBPyConnection, run: int | None) -> int:
    """`run` if it exists, the latest run when None; NotFound otherwise."""
    if run is None:
        row = _one(con, "SELECT max(run_id) FROM runs")
        if row[0] is None:
            raise NotFound("the database holds no runs yet: import a trace or capture a run first")
        return row[0]
    if _one(con, "SELECT 1 FROM runs WHERE run_id = ?", [run]) is None:
        raise NotFound(f"no run {run} in this database (see `hybridscope runs --db FILE`)")
    return run


def insert_columns(
    con: duckdb.DuckDBPyConnection, table: str, columns: Mapping[str, Sequence | object]
) -> None:
    """Append rows given as equal-length columns (lists or numpy arrays) to `table`.

    Columns not named keep their defaults. `table` and the column names are ours, never a user's.
    """
    if not columns:
        return
    names = list(columns)
    frame = {n: _as_array(columns[n]) for n in names}  # DuckDB scans a dict of numpy arrays in place
    con.register("_hs_insert", frame)
    try:
        cols = ", ".join(f'"{n}"' for n in names)
        con.execute(f"INSERT INTO {table} ({cols}) SELECT {cols} FROM _hs_insert")
    finally:
        unregister(con, "_hs_insert")


def unregister(con: duckdb.DuckDBPyConnection, name: str) -> None:
    """`con.unregister(name)` for a `finally`: after a failed statement DuckDB refuses it (the
    transaction is aborted), and that second error must not hide the first one's clean message."""
    try:
        con.unregister(name)
    except duckdb.Error:
        pass


def sql_path(path: str | Path) -> str:
    """A path as the body of a SQL string literal, for the statements that cannot bind it as a
    parameter (ATTACH, COPY ... TO, read_parquet globs): single quotes doubled."""
    return str(path).replace("'", "''")


def _one(con: duckdb.DuckDBPyConnection, sql: str, params: Sequence | None = None) -> tuple | None:
    """The first row of a query, or None; the result is fully consumed (DuckDB 2 requires it)."""
    rows = con.execute(sql, params or []).fetchall()
    return rows[0] if rows else None


def _as_array(col) -> np.ndarray:
    if isinstance(col, np.ndarray):
        return col
    arr = np.asarray(col)
    if arr.dtype.kind in "UO":  # strings, or values mixed with None: objects map to VARCHAR/NULL
        arr = np.asarray(col, dtype=object)
    return arr


def _first_line(e: BaseException) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
