"""Opening the store, transactions, run ids and columnar inserts.

The store is one DuckDB file holding many runs (schema.sql, docs/schema.md). Writers work inside
`transaction()`: an import or a capture flush lands whole or not at all. Readers that run user SQL
use `open_readonly()`, which cannot write.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping, Sequence
from importlib import resources
from pathlib import Path

import duckdb
import numpy as np

from hybridscope.errors import BadInput, NotFound

SCHEMA_VERSION = "1"

# What the store calls a GPU event (docs/schema.md): the GPU timeline's kernels and memory
# operations. One definition, used as an SQL predicate over `events` (our constant, never user input).
GPU_KINDS: tuple[str, ...] = ("kernel", "memcpy", "memset")
GPU_EVENTS = "source = 'cuda' AND kind IN (" + ", ".join(f"'{k}'" for k in GPU_KINDS) + ")"


def schema_sql() -> str:
    return resources.files("hybridscope.store").joinpath("schema.sql").read_text()


def open_store(path: str | Path, *, create: bool = True) -> duckdb.DuckDBPyConnection:
    """Open (and, when `create`, initialise) a store for writing.

    Raises BadInput when the file exists but is not a DuckDB database, or is locked by another
    process; NotFound when it does not exist and `create` is false.
    """
    path = Path(path)
    if not create and not path.exists():
        raise NotFound(f"no database at {path}: import a trace or capture a run first")
    try:
        con = duckdb.connect(str(path))
    except duckdb.IOException as e:
        raise BadInput(f"cannot open {path} as a hybridscope database: {_first_line(e)}") from None
    except duckdb.Error as e:
        raise BadInput(f"cannot open {path}: {_first_line(e)}") from None
    _ensure_schema(con, path)
    return con


def open_readonly(path: str | Path) -> duckdb.DuckDBPyConnection:
    """A connection that cannot write: for analyses and user SQL."""
    path = Path(path)
    if not path.exists():
        raise NotFound(f"no database at {path}: import a trace or capture a run first")
    try:
        con = duckdb.connect(str(path), read_only=True)
    except duckdb.Error as e:
        raise BadInput(f"cannot open {path} as a hybridscope database: {_first_line(e)}") from None
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
        con.execute("ROLLBACK")
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
        con.unregister("_hs_insert")


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
