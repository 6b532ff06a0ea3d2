"""`hybridscope query`: read-only SQL over a store."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from hybridscope.commands._common import DbOption, FormatOption, WaitOption, check_format, print_table

SqlArgument = Annotated[str, typer.Argument(help="One SELECT statement, or - to read it from stdin.",
                                            show_default=False)]
MaxRowsOption = Annotated[int | None, typer.Option(
    "--max-rows", help="Rows to print at most (default: 1000 for --format table, all for csv/json).")]
TimeoutOption = Annotated[float | None, typer.Option(
    "--timeout", help="Stop the query after this many seconds (default: no limit).", min=0)]


def query(sql: SqlArgument, db: DbOption, fmt: FormatOption = "table", max_rows: MaxRowsOption = None,
          timeout: TimeoutOption = None, wait: WaitOption = 5.0) -> None:
    """Run one read-only SQL statement (SELECT, WITH, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN).

    Writes, ATTACH, COPY, INSTALL/LOAD, SET/PRAGMA, EXPORT and file access are refused.
    CSV and JSON are written as the rows come, in constant memory. SQL may start with a
    `-- comment` line. Tables and columns: docs/schema.md.
    """
    check_format(fmt)
    from hybridscope import api
    from hybridscope.errors import UsageError
    from hybridscope.store.query import deadline

    if sql == "-":
        sql = sys.stdin.read()
    if max_rows is not None and max_rows < 0:
        raise UsageError(f"--max-rows must be 0 or more, not {max_rows}")
    if max_rows is None and fmt == "table":
        max_rows = 1000
    with api.open(db, locked=True, wait=wait) as store, deadline(timeout, store.con):
        if max_rows is None:  # csv/json, every row: streamed
            _stream(store.con, sql, fmt)
            return
        table = store.sql(sql, max_rows=max_rows)
    print_table(table, fmt)


def _stream(con, sql: str, fmt: str) -> None:
    from hybridscope.present.table import csv_chunks, json_chunks
    from hybridscope.store.query import stream_query

    result = stream_query(con, sql)
    if fmt == "csv":
        chunks = csv_chunks(result.columns, result.batches)
    else:
        chunks = json_chunks("query", {"sql": sql, "truncated": False, "notes": []}, result.columns, result.batches)
    for chunk in chunks:
        sys.stdout.write(chunk)
    sys.stdout.flush()


def sql_after_options(argv: list[str]) -> list[str]:
    """`query` argv with SQL that starts with a `-- comment` moved after a `--` separator.

    Click reads any argument that starts with `-` as an option; one that also holds whitespace
    (a comment line, then the statement) cannot be an option, so it is the SQL.
    """
    end = argv.index("--") if "--" in argv else len(argv)
    texts = [i for i in range(1, end) if argv[i].startswith("-") and any(c.isspace() for c in argv[i])]
    if argv[:1] != ["query"] or not texts:
        return argv
    moved = [argv[i] for i in texts]
    kept = [a for i, a in enumerate(argv[:end]) if i not in texts]
    return [*kept, "--", *moved, *argv[end + 1:]]


def register(app: typer.Typer) -> None:
    app.command("query")(query)
