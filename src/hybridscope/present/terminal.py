"""The terminal report: a `Report` (analyze/report.py) rendered with rich. Formatting only.

What is shown, and in which order, is the `terminal` views of the report's sections (analyze/report.py SECTIONS): the
contrast (dashboard vs decomposition), the decomposition, the per-rank view (runs with several
ranks), steps, experts, overlap and gaps, stream conflicts, advice. Long tables are cut to their
first rows (the analyses sort them most-important first) with a note saying so.
"""

from __future__ import annotations

from rich.console import Console, Group
from rich.panel import Panel
from rich.table import Table as RichTable
from rich.text import Text

from hybridscope.analyze.report import Report, View
from hybridscope.present import sentences
from hybridscope.present.table import to_rich
from hybridscope.table import Table
from hybridscope.units import format_ns, format_value


def render(report: Report, console: Console, *, max_rows: int = 12) -> None:
    """Print the whole report on `console`: a header line, then each section's terminal views."""
    info = report.run
    ranks = info.get("ranks") or []
    console.print(Text(f"hybridscope report · run {report.run_id} · {info.get('label') or ''} · "
                       f"{info.get('source')} · {len(ranks)} rank{'s' if len(ranks) != 1 else ''} · "
                       f"{info.get('device_name') or 'device unknown'}", style="bold"))
    for warning in report.warnings:
        console.print(Text(f"warning: {warning}", style="bold yellow"))
    said: set[str] = set()  # a reason shared by several tables is said once
    for section in report.sections:
        for view in section.terminal:
            shown = _view(report, view, max_rows, console.width) or _why(report, view, said)
            if shown is not None:
                console.print(shown)


def _why(report: Report, view: View, said: set[str]):
    """The one line saying why a table of this view is missing (`analyze.report.absent`), once."""
    reason = report.why(view.name) if view.kind in ("table", "sentence") else None
    if reason is None or reason in said:
        return None
    said.add(reason)
    return Text(f"  {reason}", style="italic")


def _view(report: Report, view: View, max_rows: int, width: int):
    """The rich renderable of one view, or None when there is nothing to show; tables fit `width`."""
    if view.kind == "table":
        table = report.get(view.name)
        return _cut(table, view.max_rows or max_rows, width) if table is not None and len(table) else None
    if view.kind == "sentence" and report.why(view.name) is None:
        line = sentences.sentence(view.name, report.get(view.name))
        return Text(f"  {line}", style="italic") if line else None
    if view.kind == "panel":
        return PANELS[view.name](report[view.name])
    return None  # charts are HTML only


def _contrast(contrast: Table):
    dash, dec = sentences.contrast_lines(contrast)
    grid = RichTable.grid(expand=True, padding=(0, 2))
    grid.add_column(ratio=1)
    grid.add_column(ratio=1)
    grid.add_row(Panel("\n".join(dash) or "no dashboard data", title="dashboard", border_style="green"),
                 Panel("\n".join(dec) or "no GPU kernels", title="decomposition", border_style="red"))
    return grid


def _cut(table: Table, max_rows: int, width: int):
    table = table.with_rows(table.rows, warnings=[])  # the report says them once, first
    if len(table) <= max_rows:
        return to_rich(table, width=width)
    notes = list(table.meta.get("notes") or []) + [f"first {max_rows} of {len(table)} rows"]
    return to_rich(table.with_rows(table.rows[:max_rows], notes=notes), width=width)


def advice_panel(table: Table) -> Panel:
    """The advice, one item a paragraph: rule, recommendation, its expected gain, the evidence
    (prose wraps to the terminal; `report` and `advise` both print it)."""
    notes = [Text(n, style="dim") for n in table.meta.get("notes") or []]
    if not len(table):
        return Panel(Group(Text("No rule fired: no recommendation with a material gain has data behind it in "
                                "this run."), *notes), title="advice", border_style="blue")
    parts = []
    for r in table.to_records():
        stake = (f" — expected gain up to {format_ns(r['at_stake_ns'])} "
                 f"({format_value(r['at_stake_pct'], 'pct')} of wall time)" if r["at_stake_ns"] is not None else "")
        parts.append(Text.assemble((f"{r['rank']}. [{r['rule']}] ", "bold"), r["recommendation"], stake))
        parts.append(Text(f"   evidence: {r['evidence']}", style="dim"))
    return Panel(Group(*parts, *notes), title="advice", border_style="blue")


PANELS = {"contrast": _contrast, "advice": advice_panel}
