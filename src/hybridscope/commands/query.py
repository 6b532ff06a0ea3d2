"""`hybridscope query`: read-only SQL over a store."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from hybridscope.commands._common import DbOption, FormatOption, check_format, print_table

SqlArgument = Annotated[str, typer.Argument(help="One SELECT statement, or - to read it from stdin.",
                                            show_default=False)]
MaxRowsOption = Annotated[int | None, typer.Option(
    "--max-rows", help="Rows to print at most (default: 1000 for --format table, all for csv/json).")]


def query(sql: SqlArgument, db: DbOption, fmt: FormatOption = "table", max_rows: MaxRowsOption = None) -> None:
    """Run one read-only SQL statement (SELECT, WITH, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN).

    Writes, ATTACH, COPY, INSTALL/LOAD, SET/PRAGMA, EXPORT and file access are refused.
    Tables and columns: docs/schema.md.
    """
    check_format(fmt)
    from hybridscope import api
    from hybridscope.errors import UsageError

    if sql == "-":
        sql = sys.stdin.read()
    if max_rows is not None and max_rows < 0:
        raise UsageError(f"--max-rows must be 0 or more, not {max_rows}")
    if max_rows is None and fmt == "table":
        max_rows = 1000
    with api.open(db, locked=True) as store:
        table = store.sql(sql, max_rows=max_rows)
    print_table(table, fmt)


def register(app: typer.Typer) -> None:
    app.command("query")(query)
