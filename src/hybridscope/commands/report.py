"""`hybridscope report`: the dashboard contrast, decomposition, steps, experts, overlap and advice."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hybridscope.commands._common import DbOption, RunOption, out, wrote

HtmlOption = Annotated[
    Path | None, typer.Option("--html", help="Also write a self-contained HTML report (opens offline).")
]


def report(db: DbOption, run: RunOption = None, html: HtmlOption = None) -> None:
    """Print the report of one run: what a dashboard shows beside the per-layer-type decomposition,
    the per-rank view, steps, experts, overlap and gaps, stream conflicts, and ranked advice with the
    numbers behind each recommendation. Definitions: docs/analyses.md; the report: docs/report.md.
    """
    write_report(db, run, html=html)


def write_report(db: Path, run: int | None = None, *, html: Path | None = None, console=None):
    """Build the report of `run` (latest when None) in store `db`, print it on `console` (stdout by
    default) and, when `html` is given, write the HTML file. Returns the `Report`. `demo` calls this.
    """
    from rich.console import Console

    from hybridscope.analyze.report import build_report
    from hybridscope.errors import BadInput
    from hybridscope.present import terminal
    from hybridscope.store import db as store

    if html is not None and not Path(html).parent.is_dir():
        raise BadInput(f"cannot write {html}: no directory {Path(html).parent}")
    con = store.open_readonly(db)
    try:
        rep = build_report(con, store.resolve_run(con, run))
    finally:
        con.close()
    if console is None:
        # piped or captured: no terminal width to squeeze the tables into (as print_table does)
        console = out if out.is_terminal else Console(width=200, highlight=False, soft_wrap=False)
    terminal.render(rep, console)
    if html is not None:
        from hybridscope.present import html as html_renderer

        write_text(html, html_renderer.render(rep))
        wrote(html)
    return rep


def write_text(path: Path, text: str) -> None:
    """Write `text` to `path` as UTF-8 (see write_bytes)."""
    write_bytes(path, text.encode("utf-8"))


def write_bytes(path: Path, data: bytes) -> None:
    """Write `data` to `path`; a directory that does not exist is a user error, not a traceback."""
    from hybridscope.errors import BadInput

    try:
        Path(path).write_bytes(data)
    except OSError as e:
        raise BadInput(f"cannot write {path}: {e.strerror or e}") from None


def register(app: typer.Typer) -> None:
    app.command("report")(report)
