"""Read-only SQL over a store, and the run catalog.

`open_query(path)` gives a connection that cannot change anything: the database is opened
read-only, then locked down before any user SQL runs:

    enable_external_access = false        no file, URL, ATTACH of another file, COPY, EXPORT
    autoinstall_known_extensions = false  no extension download
    autoload_known_extensions = false     no extension loading behind a function call
    allow_community_extensions = false
    python_enable_replacements = false    user SQL cannot read Python variables of this process
    lock_configuration = true             no SET / RESET / PRAGMA changes the above

On top of that, `check_sql` lets through exactly one statement of type SELECT (which covers
WITH, FROM-first, VALUES, DESCRIBE, SHOW and SUMMARIZE) or EXPLAIN [ANALYZE] of one; everything
else (INSERT, CREATE, ATTACH, COPY, INSTALL/LOAD, SET, PRAGMA, CALL, EXPORT, ...) is refused
with one line saying why. `run_query` returns an `hybridscope.table.Table`.
"""

from __future__ import annotations

import contextlib
import re
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import duckdb

from hybridscope.errors import BadInput
from hybridscope.store import db
from hybridscope.table import Column, Table, plain

LOCKDOWN: tuple[tuple[str, object], ...] = (
    ("enable_external_access", False),
    ("autoinstall_known_extensions", False),
    ("autoload_known_extensions", False),
    ("allow_community_extensions", False),
    ("python_enable_replacements", False),
    ("enable_progress_bar", False),  # DuckDB would draw it on stdout, inside the CSV/JSON
    ("lock_configuration", True),  # last: nothing can be SET after it
)

ALLOWED = "SELECT (also WITH, FROM, VALUES, DESCRIBE, SHOW, SUMMARIZE) or EXPLAIN of one"

# Why a statement type is refused, in the words a user searches for.
_REFUSED: dict[str, str] = {
    "INSERT": "it writes", "UPDATE": "it writes", "DELETE": "it writes", "CREATE": "it writes",
    "DROP": "it writes", "ALTER": "it writes", "MERGE_INTO": "it writes", "VACUUM": "it writes",
    "ATTACH": "it attaches another database", "DETACH": "it detaches a database",
    "COPY": "it reads or writes files", "COPY_DATABASE": "it copies a database",
    "EXPORT": "it writes files", "LOAD": "it installs or loads extensions",
    "SET": "it changes the configuration", "VARIABLE_SET": "it changes the configuration",
    "PRAGMA": "PRAGMA can change the configuration (use DESCRIBE, SHOW or SELECT * FROM pragma_...())",
    "CALL": "CALL can run procedures (use SELECT * FROM the_function())",
    "TRANSACTION": "transactions are not needed to read", "PREPARE": "use a plain SELECT",
    "EXECUTE": "use a plain SELECT",
}

_EXPLAIN = re.compile(r"^\s*EXPLAIN(\s+ANALYZE)?\s+", re.IGNORECASE)
_ZONED = "WITH TIME ZONE"  # fetching these needs pytz; they are shown as text instead


def open_query(path: str | Path, *, wait: float = db.LOCK_WAIT_S) -> duckdb.DuckDBPyConnection:
    """A read-only, locked-down connection to the store at `path` (see the module doc)."""
    con = db.open_readonly(path, wait=wait)
    for name, value in LOCKDOWN:
        con.execute(f"SET {name} = {'true' if value else 'false'}")  # our constants
    return con


def check_sql(con: duckdb.DuckDBPyConnection, sql: str) -> None:
    """Raise BadInput unless `sql` is one read-only statement (see the module doc)."""
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as e:
        raise BadInput(f"SQL error: {_message(e)}") from None
    if not statements:
        raise BadInput("no SQL statement given")
    if len(statements) > 1:
        raise BadInput(f"one statement at a time, got {len(statements)}")
    kind = statements[0].type.name
    if kind == "EXPLAIN":
        inner = _EXPLAIN.sub("", sql, count=1)
        if inner != sql:
            return check_sql(con, inner)
    if kind != "SELECT":
        why = _REFUSED.get(kind, "only reading is allowed")
        raise BadInput(f"refused: {kind} statement ({why}); hybridscope query runs {ALLOWED}")


def run_query(con: duckdb.DuckDBPyConnection, sql: str, *, max_rows: int | None = None) -> Table:
    """Run one checked read-only statement; its result as a Table named 'query'.

    Columns of integer types get kind 'int', floating and decimal types 'float', the rest 'str'
    (lists and structs stay lists and dicts; timestamps with a time zone become text).
    With `max_rows`, at most that many rows are fetched and meta['truncated'] says whether more
    existed. Raises BadInput with DuckDB's first line for any SQL error or refusal.
    """
    result = stream_query(con, sql, batch_rows=max_rows + 1 if max_rows is not None else BATCH_ROWS)
    rows: list[tuple] = []
    for batch in result.batches:
        rows += batch
        if max_rows is not None:
            break  # one batch of max_rows + 1 says whether more existed
    truncated = max_rows is not None and len(rows) > max_rows
    rows = rows[:max_rows] if truncated else rows
    notes = [f"showing the first {max_rows} rows; raise --max-rows or use --format csv for all"] if truncated else []
    return Table("query", result.columns, rows, {"sql": sql, "truncated": truncated, "notes": notes})


BATCH_ROWS = 10_000  # rows fetched at a time: what a streamed result holds in Python


@dataclass
class QueryStream:
    """The columns of a checked statement and its rows, `batch_rows` tuples at a time, fetched as
    they are consumed (constant memory whatever the result size). `batches` raises BadInput for
    an SQL error met while running."""

    columns: tuple[Column, ...]
    batches: Iterator[list[tuple]]


def stream_query(con: duckdb.DuckDBPyConnection, sql: str, *, batch_rows: int = BATCH_ROWS) -> QueryStream:
    """Check and start one read-only statement (see run_query for the column kinds)."""
    check_sql(con, sql)
    with _sql_errors():
        rel = con.sql(sql)
        names, types = _unique(rel.columns), [str(t) for t in rel.types]
        if any(_ZONED in t for t in types):  # user SQL in a subquery: only SELECTs have such columns
            sql = "SELECT " + ", ".join(f"CAST(#{i + 1} AS VARCHAR)" if _ZONED in t else f"#{i + 1}"
                                        for i, t in enumerate(types)) + f" FROM ({sql}) AS q"
        cursor = con.execute(sql)  # a streaming result: rows are produced as they are fetched
    columns = tuple(Column(n, _kind(t), t) for n, t in zip(names, types))
    return QueryStream(columns, _batches(cursor, batch_rows))


def _batches(cursor: duckdb.DuckDBPyConnection, n: int) -> Iterator[list[tuple]]:
    while True:
        with _sql_errors():
            rows = cursor.fetchmany(n)
        if not rows:
            return
        yield [tuple(_value(v) for v in r) for r in rows]


@contextlib.contextmanager
def _sql_errors() -> Iterator[None]:
    """DuckDB's errors as one-line BadInput (an interrupt passes through: cli.main and `deadline`
    tell Ctrl-C from --timeout)."""
    try:
        yield
    except duckdb.InterruptException:
        raise
    except duckdb.PermissionException as e:
        raise BadInput(f"refused: {_message(e)} (hybridscope query reads only the store)") from None
    except duckdb.Error as e:
        raise BadInput(f"SQL error: {_message(e)}") from None


class _Late(Exception):
    """Raised by the --timeout alarm; DuckDB turns it into its own interrupt."""


@contextlib.contextmanager
def deadline(seconds: float | None, con: duckdb.DuckDBPyConnection) -> Iterator[None]:
    """Stop what `con` runs inside the block after `seconds` (None: no limit) with one BadInput.

    A SIGALRM timer whose handler interrupts `con` (DuckDB does not stop a statement for a Python
    exception raised in a signal handler; `con.interrupt()` stops it) and raises, for the case
    where the block is in Python code at that moment. Only in the main thread; elsewhere the
    block runs without a limit.
    """
    if seconds is None or threading.current_thread() is not threading.main_thread():
        yield
        return
    fired = threading.Event()

    def alarm(signum, frame):
        fired.set()
        con.interrupt()
        raise _Late()

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, max(seconds, 1e-3))
    try:
        yield
    except (_Late, duckdb.InterruptException, RuntimeError) as e:
        if not fired.is_set() or (isinstance(e, RuntimeError) and "interrupted" not in str(e)):
            raise
        raise BadInput(f"the query ran longer than --timeout {seconds:g} s and was stopped") from None
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def list_runs(con: duckdb.DuckDBPyConnection) -> Table:
    """The runs of a store: id, label, source, ranks, device, window, events, created."""
    rows = con.execute(f"""
        SELECT r.run_id, r.label, r.source, coalesce(k.ranks, ''), r.world_size, r.device_name,
               r.t_end_ns - r.t_start_ns, coalesce(e.n, 0), coalesce(e.gpu, 0), CAST(r.created_at AS VARCHAR)
        FROM runs r
        LEFT JOIN (SELECT run_id, string_agg(CAST(rank AS VARCHAR), ',' ORDER BY rank) AS ranks
                   FROM run_ranks GROUP BY run_id) k USING (run_id)
        LEFT JOIN (SELECT run_id, count(*) AS n,
                          count(*) FILTER (WHERE {db.GPU_EVENTS}) AS gpu
                   FROM events GROUP BY run_id) e USING (run_id)
        ORDER BY r.run_id
    """).fetchall()
    columns = (
        Column("run_id", "int", "run id (--run)", "run"),
        Column("label", "str", "file stem or capture label"),
        Column("source", "str", "kineto, nsys, ingero or capture"),
        Column("ranks", "str", "ranks stored (run_ranks)", optional=3),
        Column("world_size", "int", "world size recorded", "world", optional=1),
        Column("device", "str", "device name"),
        Column("window_ns", "ns", "t_end_ns - t_start_ns of the run", "window"),
        Column("events", "int", "rows in events", optional=2),
        Column("gpu_events", "int", "kernel, memcpy and memset events", "GPU events"),
        Column("created", "str", "when the run was stored (UTC)", optional=4),
    )
    return Table("runs", columns, [tuple(plain(v) for v in r) for r in rows], {"title": "runs"})


def _kind(duckdb_type: str) -> str:
    t = duckdb_type.upper()
    if t in ("TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER",
             "UBIGINT", "UHUGEINT"):
        return "int"
    if t in ("FLOAT", "DOUBLE") or t.startswith("DECIMAL"):
        return "float"
    return "str"


def _value(v):
    """A fetched value as a plain, JSON-friendly one: Decimal -> float, dates -> ISO text."""
    v = plain(v)
    if v is None or isinstance(v, (str, int, float, bool, list, dict)):
        return v
    iso = getattr(v, "isoformat", None)
    return iso() if callable(iso) else str(v)


def _unique(names: list[str]) -> list[str]:
    """Column names made unique: a repeated `a` becomes a_1, a_2 (skipping names already taken)."""
    taken: set[str] = set()
    out = []
    for n in names:
        candidate, k = n, 0
        while candidate in taken:
            k += 1
            candidate = f"{n}_{k}"
        taken.add(candidate)
        out.append(candidate)
    return out


def _message(e: BaseException) -> str:
    """DuckDB's message on one line, without the 'LINE 1: ...' caret block."""
    text = " ".join(str(e).split("\n")[0].split())
    return text or type(e).__name__
