"""`hybridscope advise`: what to change, ranked by time at stake; `--emit` writes it as engine knobs."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hybridscope.commands._common import (
    DbOption,
    FormatOption,
    RunOption,
    check_format,
    err,
    print_table,
    stdout_console,
    wrote,
)


def advise(
    db: DbOption,
    run: RunOption = None,
    emit: Annotated[Path | None, typer.Option(
        "--emit", help="Write the recommended engine knobs (TOML, evidence as comments) to this file.")] = None,
    force: Annotated[bool, typer.Option("--force", help="Overwrite the --emit file if it exists.")] = False,
    fmt: FormatOption = "table",
) -> None:
    """Print the advice for a run (each item with the numbers behind it and the time at stake); with
    --emit, write the knobs the reference engine reads with --fixes (demo, engine bench)."""
    check_format(fmt)
    from hybridscope.analyze.fixes import fixes_from_advice
    from hybridscope.analyze.report import build_report
    from hybridscope.errors import UsageError
    from hybridscope.present.fixes import render_toml
    from hybridscope.store import db as store

    if emit is not None and emit.exists() and not force:
        raise UsageError(f"{emit} exists; will not overwrite without --force")
    con = store.open_readonly(db)
    try:
        run_id = store.resolve_run(con, run)
        report = build_report(con, run_id)
    finally:
        con.close()
    table = report["advice"]
    if fmt == "table":  # prose: the report's advice panel, wrapped to the terminal, gain in each item
        from hybridscope.present.terminal import advice_panel

        stdout_console().print(advice_panel(table))
    else:
        print_table(table, fmt)
    if not len(table) and fmt != "table":  # the panel says it in a terminal
        why = "; ".join(table.meta.get("notes") or []) or "no rule found its evidence in this run"
        err.print(f"No advice for run {run_id}: {why} (the rules: docs/analyses.md, \"advice\").", markup=False)
    if emit is not None:
        label = report.run.get("label") or "no label"
        header = [f"hybridscope advise: engine fixes for run {run_id} ({label}) of {db}"]
        emit.write_text(render_toml(fixes_from_advice(table), header))
        wrote(emit)


def register(app: typer.Typer) -> None:
    app.command("advise")(advise)
