"""`hybridscope runs`: the runs a store holds."""

from __future__ import annotations

import typer

from hybridscope.commands._common import DbOption, FormatOption, WaitOption, check_format, print_table


def runs(db: DbOption, fmt: FormatOption = "table", wait: WaitOption = 5.0) -> None:
    """List the runs: id, label, source, ranks, device, window, events."""
    check_format(fmt)
    from hybridscope import api

    with api.open(db, wait=wait) as store:
        table = store.runs()
    print_table(table, fmt)


def register(app: typer.Typer) -> None:
    app.command("runs")(runs)
