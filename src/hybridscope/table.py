"""The result type every analysis returns: a named, typed, ordered table of plain values.

Analyses build a `Table`; renderers (`hybridscope.present.table`) turn it into a terminal table,
JSON or CSV without computing anything. Tests assert on `rows` / `to_records()`.

Contract:
- `columns` fix the order and the meaning of every value; `rows` are tuples in that order.
- Values are plain Python scalars (str, int, float, bool) or None, never numpy scalars (`plain()`
  converts them); a 'str' column of `query` results may also hold lists and dicts (DuckDB LIST/STRUCT).
- A column's `kind` says how to read and show its values:
    'str'    text
    'int'    a count
    'float'  a plain number
    'ns'     a time in nanoseconds (int or float: interpolated percentiles are fractional)
    'pct'    a percentage on the 0-100 scale (42.5 means 42.5 %)
    'ratio'  a dimensionless ratio shown with a × (p99/p50 = 69.0 means 69×)
    'kernel' text: a GPU kernel's name as recorded; JSON/CSV keep it whole, the terminal shows it
             shortened (`units.short_kernel_name`), the HTML shortened with the whole name on hover
- `meta` carries what a reader needs to interpret the rows (run id, rank, window, notes) as
  JSON-serialisable values; renderers show `meta['title']` and `meta['notes']` when present.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

KINDS: tuple[str, ...] = ("str", "int", "float", "ns", "pct", "ratio", "kernel")
TEXT_KINDS: tuple[str, ...] = ("str", "kernel")


@dataclass(frozen=True)
class Column:
    """One column: machine name (used in JSON/CSV), kind (see module doc), one-line meaning.

    `label` is the header shown in the terminal (defaults to `name`), so that `p50_ns` can read
    as `p50` where the unit is already in every cell. `optional` ranks what a narrow terminal hides
    first: 0 (the default) is hidden only after every optional column, and higher numbers go
    before lower ones (present/table.py `fit`).
    """

    name: str
    kind: str = "str"
    doc: str = ""
    label: str | None = None
    optional: int = 0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"column {self.name!r}: kind {self.kind!r} is not one of {KINDS}")

    @property
    def header(self) -> str:
        return self.label or self.name


@dataclass(frozen=True)
class Table:
    """An analysis result. Construct with lists; it stores tuples and a read-only meta."""

    name: str
    columns: tuple[Column, ...]
    rows: tuple[tuple, ...] = ()
    meta: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        cols = tuple(self.columns)
        names = [c.name for c in cols]
        if len(set(names)) != len(names):
            raise ValueError(f"table {self.name!r}: duplicate column names in {names}")
        rows = tuple(tuple(r) for r in self.rows)
        for i, r in enumerate(rows):
            if len(r) != len(cols):
                raise ValueError(f"table {self.name!r}: row {i} has {len(r)} values for {len(cols)} columns")
        object.__setattr__(self, "columns", cols)
        object.__setattr__(self, "rows", rows)
        object.__setattr__(self, "meta", MappingProxyType(dict(self.meta)))

    @property
    def column_names(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def index(self, column: str) -> int:
        """Position of `column`; KeyError naming the known columns otherwise."""
        try:
            return self.column_names.index(column)
        except ValueError:
            raise KeyError(f"table {self.name!r} has no column {column!r}; columns: {self.column_names}") from None

    def column(self, column: str) -> list:
        """All values of one column, in row order."""
        i = self.index(column)
        return [r[i] for r in self.rows]

    def to_records(self) -> list[dict[str, Any]]:
        """Rows as dicts keyed by column name, in column order."""
        names = self.column_names
        return [dict(zip(names, r)) for r in self.rows]

    def record(self, **match: Any) -> dict[str, Any]:
        """The one row whose columns equal `match` (e.g. `record(layer_type='mamba')`), as a dict.

        KeyError when no row or more than one row matches.
        """
        idx = [(self.index(k), v) for k, v in match.items()]
        found = [r for r in self.rows if all(r[i] == v for i, v in idx)]
        if len(found) != 1:
            raise KeyError(f"table {self.name!r}: {len(found)} rows match {match}")
        return dict(zip(self.column_names, found[0]))

    def with_rows(self, rows: Iterable[Sequence], **meta: Any) -> Table:
        """A copy with other rows (and meta entries added or replaced)."""
        return Table(self.name, self.columns, tuple(tuple(r) for r in rows), {**self.meta, **meta})

    def __len__(self) -> int:
        return len(self.rows)

    def to_arrow(self):
        """The table as a `pyarrow.Table` (needs pyarrow: `pip install 'hybridscope[notebook]'`).

        Column types are inferred from the values (None becomes null); each field's metadata holds
        its kind and meaning, the schema's metadata `hybridscope` the table's name and meta as JSON.
        """
        import json

        pa = _optional("pyarrow", "to_arrow")
        fields, arrays = [], []
        for i, c in enumerate(self.columns):
            values = pa.array([r[i] for r in self.rows])
            arrays.append(values)
            fields.append(pa.field(c.name, values.type, metadata={"kind": c.kind, "doc": c.doc}))
        meta = json.dumps({"name": self.name, "meta": dict(self.meta)}, default=str)
        return pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata={"hybridscope": meta}))

    def to_pandas(self):
        """The table as a `pandas.DataFrame` in column order, `meta` in `df.attrs` (needs pandas)."""
        pd = _optional("pandas", "to_pandas")
        df = pd.DataFrame.from_records(list(self.rows), columns=list(self.column_names))
        for i, c in enumerate(self.columns):  # counts stay integers where some are missing (not NaN floats)
            if c.kind == "int" and all(r[i] is None or (isinstance(r[i], int) and not isinstance(r[i], bool))
                                       for r in self.rows):
                df[c.name] = pd.array([r[i] for r in self.rows], dtype="Int64")
        df.attrs.update({"name": self.name, "meta": dict(self.meta)})
        return df


def _optional(package: str, what: str):
    """Import an optional package, or say in one line how to get it."""
    import importlib

    try:
        return importlib.import_module(package)
    except ImportError:
        from hybridscope.errors import EnvironmentProblem

        raise EnvironmentProblem(f"Table.{what} needs {package}: pip install 'hybridscope[notebook]'") from None


def plain(value: Any) -> Any:
    """A numpy / Decimal scalar as the Python scalar it stands for; anything else unchanged."""
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item):
        return item()
    from decimal import Decimal

    if isinstance(value, Decimal):
        return float(value)
    return value
