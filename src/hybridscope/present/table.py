"""Render any `hybridscope.table.Table` as a terminal table, JSON or CSV.

Pure functions: a Table in, a str (or a rich renderable) out; nothing here computes a statistic.
Column order is the Table's; row order is the Table's.

- Terminal (`to_rich`, `to_text`): values formatted by kind - 'ns' scaled per cell to ns / µs /
  ms / s with three significant digits, 'pct' with %, 'ratio' with ×, 'int' with thousands
  separators, None as '-'. `meta['title']` is the title, `meta['notes']` (list of str) the
  caption, and the first `meta['summary_rows']` rows (e.g. the `all` row) are bold and set apart.
- JSON (`to_json`): {"name", "meta", "columns": [{"name","kind","doc"}], "rows": [{col: value}]}
  with raw values (ns stay ns, pct stay on the 0-100 scale); NaN becomes null.
- CSV (`to_csv`): a header of column names, raw values, floats at full precision, None empty.
"""

from __future__ import annotations

import csv
import io
import math
from typing import Any

from rich import box
from rich.console import Console
from rich.table import Table as RichTable

from hybridscope.table import Table
from hybridscope.units import format_value

NUMERIC_KINDS = ("int", "float", "ns", "pct", "ratio")


def render(table: Table, fmt: str, *, width: int | None = None) -> str:
    """`fmt` is 'table', 'json' or 'csv'."""
    if fmt == "table":
        return to_text(table, width=width)
    if fmt == "json":
        return to_json(table)
    if fmt == "csv":
        return to_csv(table)
    raise ValueError(f"unknown format {fmt!r}")


# -- terminal -----------------------------------------------------------------------------------


def to_rich(table: Table) -> RichTable:
    """A rich Table ready to print on any console."""
    notes = table.meta.get("notes") or ()
    rt = RichTable(
        title=table.meta.get("title"),
        caption="\n".join(str(n) for n in notes) or None,
        box=box.SIMPLE_HEAD,
        title_justify="left",
        caption_justify="left",
    )
    for col in table.columns:
        numeric = col.kind in NUMERIC_KINDS
        rt.add_column(col.header, justify="right" if numeric else "left", no_wrap=numeric)
    n_summary = int(table.meta.get("summary_rows", 0) or 0)
    for i, row in enumerate(table.rows):
        cells = [format_value(v, c.kind) for v, c in zip(row, table.columns)]
        rt.add_row(*cells, style="bold" if i < n_summary else None, end_section=(i == n_summary - 1))
    return rt


def to_text(table: Table, *, width: int | None = None) -> str:
    """The terminal table as plain text (no colour codes), `width` columns wide at most."""
    buf = io.StringIO()
    console = Console(file=buf, width=width or 160, color_system=None, force_terminal=False,
                      highlight=False, emoji=False, markup=False)
    console.print(to_rich(table))
    return buf.getvalue()


# -- JSON and CSV --------------------------------------------------------------------------------


def to_json(table: Table) -> str:
    """The table as one JSON document (see the module doc); ends with a newline."""
    import orjson

    doc = {
        "name": table.name,
        "meta": dict(table.meta),
        "columns": [{"name": c.name, "kind": c.kind, "doc": c.doc} for c in table.columns],
        "rows": table.to_records(),
    }
    opts = orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
    return orjson.dumps(doc, option=opts, default=_json_default).decode() + "\n"


def _json_default(value: Any) -> Any:
    from decimal import Decimal

    if isinstance(value, Decimal):
        return float(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).hex()
    return str(value)  # intervals, UUIDs, DuckDB structs: their text form


def to_csv(table: Table) -> str:
    """RFC 4180 CSV with a header row; '\\n' line ends."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(table.column_names)
    for row in table.rows:
        writer.writerow([_csv_cell(v) for v in row])
    return buf.getvalue()


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    return value
