"""Render any `hybridscope.table.Table` as a terminal table, JSON or CSV.

Pure functions: a Table in, a str (or a rich renderable) out; nothing here computes a statistic.
Column order is the Table's; row order is the Table's.

- Terminal (`to_rich`, `to_text`): values formatted by kind - 'ns' scaled per cell to ns / µs /
  ms / s with three significant digits, 'pct' with %, 'ratio' with ×, 'int' with thousands
  separators, 'float' with the same number of decimals down a column (enough for four
  significant digits of every value), 'kernel' names shortened (`units.short_kernel_name`), None as '-'.
  `meta['warnings']` (list of str) are the first lines, then `meta['title']` the title,
  `meta['notes']` (list of str) the caption, and the first
  `meta['summary_rows']` rows (e.g. the `all` row) are bold and set apart.
- Fitting a width (`fit`): the label columns (column 0, and when it is a number the text columns
  right after it) are never hidden nor cut, and no number is cut: when the table is wider than the
  terminal, whole columns are hidden, the highest `Column.optional` first, then the others from
  the right; a caption line names what was hidden. Kernel labels take at most 45% of the width.
- JSON (`to_json`): {"name", "meta", "columns": [{"name","kind","doc"}], "rows": [{col: value}]}
  with raw values (ns stay ns, pct stay on the 0-100 scale); NaN becomes null.
- CSV (`to_csv`): a header of column names, raw values, floats at full precision, None empty.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from rich import box
from rich.cells import cell_len
from rich.console import Console
from rich.table import Table as RichTable

from hybridscope.table import TEXT_KINDS, Table
from hybridscope.units import format_value, short_kernel_name

NUMERIC_KINDS = ("int", "float", "ns", "pct", "ratio")
LABEL_SHARE = 0.45  # of the width, at most, for a kernel-name label
WIDE = 100  # kernel labels are cut at this many characters when no width is asked for


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


@dataclass(frozen=True)
class Fitted:
    """What a terminal of some width shows of a table: column indices, their cells, what is hidden."""

    shown: tuple[int, ...]
    cells: tuple[tuple[str, ...], ...]  # every row, every column of the table, formatted
    natural: tuple[int, ...]  # each column's width in cells, header included
    hidden: tuple[str, ...]  # headers of the hidden columns, in table order


def label_columns(table: Table) -> tuple[int, ...]:
    """The columns that name a row: column 0, and when it is a number (run 3, layer 12) the text
    columns right after it."""
    if not table.columns:
        return ()
    labels = [0]
    if table.columns[0].kind not in TEXT_KINDS:
        for i, col in enumerate(table.columns[1:], start=1):
            if col.kind not in TEXT_KINDS:
                break
            labels.append(i)
    return tuple(labels)


def fit(table: Table, width: int | None = None) -> Fitted:
    """The columns of `table` a `width`-column terminal shows (all of them when `width` is None)."""
    labels = label_columns(table)
    kernel_width = WIDE if width is None else max(24, min(WIDE, int(width * LABEL_SHARE)))
    cells = format_cells(table, kernel_width)
    natural = tuple(max([cell_len(c.header)] + [cell_len(r[i]) for r in cells])
                    for i, c in enumerate(table.columns))
    shown = list(range(len(table.columns)))
    for i in _drop_order(table, labels) if width is not None else ():
        if table_width([natural[j] for j in shown]) <= width:
            break
        shown.remove(i)
    hidden = tuple(c.header for i, c in enumerate(table.columns) if i not in shown)
    return Fitted(tuple(shown), cells, natural, hidden)


def table_width(column_widths: list[int]) -> int:
    """Cells a SIMPLE_HEAD rich table takes: each column padded by one on each side, one edge."""
    return sum(column_widths) + 3 * len(column_widths) + 1


def _drop_order(table: Table, labels: tuple[int, ...]) -> list[int]:
    """Columns in the order a narrow terminal hides them (see `fit`)."""
    cols = table.columns
    optional = sorted((i for i, c in enumerate(cols) if c.optional > 0 and i not in labels),
                      key=lambda i: (-cols[i].optional, -i))
    rest = [i for i in reversed(range(len(cols))) if i not in labels and i not in optional]
    return optional + rest


def format_cells(table: Table, kernel_width: int = WIDE) -> tuple[tuple[str, ...], ...]:
    """Every cell as the terminal shows it (see the module doc)."""
    decimals = {i: float_decimals(table.column(c.name)) for i, c in enumerate(table.columns) if c.kind == "float"}
    rows = []
    for row in table.rows:
        cells = []
        for i, (value, col) in enumerate(zip(row, table.columns)):
            if col.kind == "kernel" and value is not None:
                cells.append(short_kernel_name(str(value), kernel_width))
            elif i in decimals and _finite(value) and decimals[i] is not None:
                cells.append(f"{value:,.{decimals[i]}f}")
            else:
                cells.append(format_value(value, col.kind))
        rows.append(tuple(cells))
    return tuple(rows)


def float_decimals(values: list) -> int | None:
    """The decimals a 'float' column shows in every row: as many as the value that needs the most
    to show four significant digits (trailing zeros dropped), at most six. None (each value on its
    own, `units.format_float`) when the column's median magnitude is below 1e-4 or from 1e15 up."""
    nonzero = sorted(abs(v) for v in values if _finite(v) and v)
    if not nonzero:
        return 0
    typical = nonzero[len(nonzero) // 2]
    if typical < 1e-4 or typical >= 1e15:
        return None
    needed = 0
    for v in nonzero:
        text = f"{v:.{max(0, 3 - math.floor(math.log10(v)))}f}"
        needed = max(needed, len(text.rstrip("0").partition(".")[2]))
    return min(6, needed)


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def to_rich(table: Table, *, width: int | None = None) -> RichTable:
    """A rich Table; with `width`, the columns that fit it (see `fit`)."""
    fitted = fit(table, width)
    notes = [str(n) for n in table.meta.get("notes") or ()]
    if fitted.hidden:
        notes.append(f"not shown at {width} columns: {', '.join(fitted.hidden)} (a wider terminal shows them)")
    title = "\n".join([f"warning: {w}" for w in table.meta.get("warnings") or ()] +
                      ([str(table.meta["title"])] if table.meta.get("title") else [])) or None
    rt = RichTable(
        title=title,
        caption="\n".join(notes) or None,
        box=box.SIMPLE_HEAD,
        title_justify="left",
        caption_justify="left",
    )
    labels = label_columns(table)
    for i in fitted.shown:
        col = table.columns[i]
        numeric = col.kind in NUMERIC_KINDS
        whole = numeric or i == labels[0]  # numbers and the row's name are never wrapped nor cut
        fits = width is None or fitted.natural[i] <= width - 4
        rt.add_column(col.header, justify="right" if numeric else "left", no_wrap=whole and fits,
                      min_width=fitted.natural[i] if whole and fits else None,
                      overflow="fold")
    n_summary = int(table.meta.get("summary_rows", 0) or 0)
    for r, cells in enumerate(fitted.cells):
        rt.add_row(*(cells[i] for i in fitted.shown), style="bold" if r < n_summary else None,
                   end_section=(r == n_summary - 1))
    return rt


def to_text(table: Table, *, width: int | None = None) -> str:
    """The terminal table as plain text (no colour codes), fitted to `width` columns (default 160)."""
    width = width or 160
    buf = io.StringIO()
    console = Console(file=buf, width=width, color_system=None, force_terminal=False,
                      highlight=False, emoji=False, markup=False)
    console.print(to_rich(table, width=width))
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


def csv_chunks(columns, batches) -> Iterator[str]:
    """`to_csv` of a table whose rows come in batches, as text chunks: one per batch (the header
    first), so that a result of any size is written in constant memory."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow([c.name for c in columns])
    yield buf.getvalue()
    for rows in batches:
        buf.seek(0)
        buf.truncate()
        writer.writerows([_csv_cell(v) for v in row] for row in rows)
        yield buf.getvalue()


def json_chunks(name: str, meta: dict, columns, batches) -> Iterator[str]:
    """`to_json` of a table whose rows come in batches, as text chunks (the same document)."""
    import orjson

    opts = orjson.OPT_INDENT_2 | orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
    head = orjson.dumps({"name": name, "meta": dict(meta),
                         "columns": [{"name": c.name, "kind": c.kind, "doc": c.doc} for c in columns],
                         "rows": []}, option=opts, default=_json_default).decode()
    assert head.endswith('"rows": []\n}')
    yield head[: -len("[]\n}")]
    names = [c.name for c in columns]
    first = True
    for rows in batches:
        parts = []
        for row in rows:
            text = orjson.dumps(dict(zip(names, row)), option=opts, default=_json_default).decode()
            parts.append(("[\n    " if first else ",\n    ") + text.replace("\n", "\n    "))
            first = False
        yield "".join(parts)
    yield "[]\n}\n" if first else "\n  ]\n}\n"


def _csv_cell(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    return value
