"""The report declared once (analyze/report.py SECTIONS): every view has a renderer and a table
behind it, and adding an analysis to the report is one more Section, shown by both renderers."""

from __future__ import annotations

import io
import re

import pytest
import report_scenario
from rich.console import Console

from hybridscope.analyze.report import SECTIONS, Section, build_report, table
from hybridscope.present import html, sentences, terminal
from hybridscope.table import Column, Table


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    con, run = report_scenario.build(tmp_path_factory.mktemp("sections") / "run.duckdb")
    yield con, run
    con.close()


def _views(section: Section):
    for item in (*section.terminal, *section.html):
        yield from (item if isinstance(item, tuple) else (item,))


def test_every_view_has_a_renderer_and_a_table(store):
    con, run = store
    rep = build_report(con, run)  # two ranks: the per-rank tables are there too
    assert rep.sections == SECTIONS
    for section in SECTIONS:
        for view in _views(section):
            if view.kind == "chart":
                assert view.name in html.CHARTS and view.name in rep.tables, view
            elif view.kind == "panel":
                assert view.name in terminal.PANELS and view.name in html.PANELS, view
            elif view.kind == "sentence":
                assert view.name in sentences.SENTENCES and view.name in rep.tables, view
            else:
                assert view.kind == "table" and view.name in rep.tables, view


def mamba_kernels_per_rank(con, run_id: int) -> Table:
    """A new analysis, as a module would define it."""
    rows = con.execute("SELECT rank, count(*) FROM events WHERE run_id = ? AND layer_type = 'mamba' "
                       "GROUP BY rank ORDER BY rank", [run_id]).fetchall()
    return Table("mamba_kernels", (Column("rank", "int"), Column("kernels", "int")), rows,
                 {"title": "Mamba kernels per rank"})


def test_adding_an_analysis_is_one_section(store):
    con, run = store
    extra = Section("Mamba per rank", (lambda c: mamba_kernels_per_rank(c.con, c.run_id),),
                    terminal=(table("mamba_kernels"),), html=(table("mamba_kernels"),))
    rep = build_report(con, run, SECTIONS + (extra,))
    # 30 steps x the 2 mamba layers of the scenario's pattern, on each rank
    assert rep["mamba_kernels"].rows == ((0, 60), (1, 60))
    buf = io.StringIO()
    terminal.render(rep, Console(file=buf, width=200, color_system=None))
    text = buf.getvalue()
    shown = re.search(r"rank\s+kernels\s*\n.*\n\s+0\s+60\s*\n\s+1\s+60", text)
    assert shown and shown.start() > text.index("advice")  # after the last section, as declared
    doc = html.render(rep)
    assert "<h2>Mamba per rank</h2>" in doc and 'data-table="mamba_kernels"' in doc
    assert doc.index("<h2>Advice</h2>") < doc.index("<h2>Mamba per rank</h2>")
