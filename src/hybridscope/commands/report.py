"""`hybridscope report`: the dashboard contrast, decomposition, steps, experts, overlap and advice."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hybridscope.commands._common import (
    DbOption,
    RunOption,
    WaitOption,
    WarmupOption,
    keep_freed_memory,
    stdout_console,
    wrote,
)

HtmlOption = Annotated[
    Path | None, typer.Option("--html", help="Also write a self-contained HTML report (opens offline).")
]

JsonOption = Annotated[
    Path | None, typer.Option("--json", help="Also write every table of the report as one JSON file.")
]


def report(db: DbOption, run: RunOption = None, html: HtmlOption = None, json: JsonOption = None,
           warmup: WarmupOption = "auto", wait: WaitOption = 5.0) -> None:
    """Print the report of one run: what a dashboard shows beside the per-layer-type decomposition,
    the per-rank view, steps, experts, overlap and gaps, stream conflicts, and ranked advice with the
    numbers behind each recommendation; the tails without the run's warm-up, which has its own row
    (--warmup). Definitions: docs/analyses.md; the report: docs/report.md.
    """
    from hybridscope.analyze.warmup import parse

    keep_freed_memory()
    write_report(db, run, html=html, json=json, warmup=parse(warmup), wait=wait)


def write_report(db: Path, run: int | None = None, *, html: Path | None = None, json: Path | None = None,
                 console=None, warmup: int | None = None, wait: float = 5.0):
    """Build the report of `run` (latest when None) in store `db`, print it on `console` (stdout by
    default) and, when `html` / `json` are given, write those files. Returns the `Report`.
    `warmup`: analyze/warmup.py (None: the rule). `hybridscope demo` calls this.
    """
    from hybridscope import api
    from hybridscope.errors import BadInput
    from hybridscope.present import terminal

    for target in (html, json):
        if target is not None and not Path(target).parent.is_dir():
            raise BadInput(f"cannot write {target}: no directory {Path(target).parent}")
    with api.open(db, wait=wait) as store:
        rep = store.report(run, warmup=warmup)
    terminal.render(rep, console or stdout_console())
    if html is not None:
        from hybridscope.present import html as html_renderer

        write_text(html, html_renderer.render(rep))
        wrote(html)
    if json is not None:
        write_text(json, report_json(rep))
        wrote(json)
    return rep


def report_json(rep) -> str:
    """{"run_id", "run", "tables": {name: the table as `present.table.to_json` writes it}}."""
    import orjson

    from hybridscope.present.table import to_json

    doc = {"run_id": rep.run_id, "run": rep.run,
           "tables": {name: orjson.loads(to_json(t)) for name, t in rep.tables.items()}}
    return orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode() + "\n"


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
