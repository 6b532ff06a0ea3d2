"""The shared result type and its renderers: formatting by kind, stable order, JSON/CSV round trips."""

from __future__ import annotations

import csv
import io

import orjson
import pytest

from hybridscope.present.table import render, to_csv, to_json, to_text
from hybridscope.table import Column, Table
from hybridscope.units import format_float, format_ns, format_value

COLUMNS = (Column("layer_type"), Column("n", "int"), Column("p99_ns", "ns", "99th percentile", "p99"),
           Column("tail_ratio", "ratio", label="p99/p50"), Column("gpu_pct", "pct", label="% GPU"),
           Column("x", "float"))
ROWS = [("all", 1234567, 97_600.0, 24.4, 100.0, 0.5), ("moe_comm", 2, 1_234_567_890.0, 69.0, 0.25, None)]


def _table() -> Table:
    return Table("t", COLUMNS, ROWS, {"title": "run 1", "notes": ["a note"], "summary_rows": 1})


@pytest.mark.parametrize("ns, text", [
    (0, "0 ns"), (850, "850 ns"), (12.5, "12.5 ns"), (999, "999 ns"), (1_000, "1.00 µs"), (12_345, "12.3 µs"),
    (999_499, "999 µs"), (4_560_000, "4.56 ms"), (1_234_567_890, "1.23 s"), (1_234e9, "1,234 s"), (-2_500, "-2.50 µs"),
])
def test_format_ns(ns, text):
    assert format_ns(ns) == text


@pytest.mark.parametrize("value, kind, text", [
    (None, "ns", "-"), (float("nan"), "float", "-"), (42.25, "pct", "42.2%"), (0.256, "pct", "0.26%"),
    (999.94, "pct", "999.9%"), (1772.2, "pct", "1,772%"), (-26310052.5, "pct", "-26,310,052%"),
    (69.0, "ratio", "69.0×"), (1.0234, "ratio", "1.02×"), (150.0, "ratio", "150×"), (1234567, "int", "1,234,567"),
    ("mamba", "str", "mamba"), (96.16, "float", "96.16"), (3, "float", "3"),
])
def test_format_value(value, kind, text):
    assert format_value(value, kind) == text


def test_format_float():
    assert format_float(1234567.891) == "1,234,568"
    assert format_float(0.000012) == "1.2e-05"
    assert format_float(-0.5) == "-0.5"


def test_text_keeps_column_and_row_order():
    text = to_text(_table())
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    assert lines[0] == "run 1"
    assert lines[1].split() == ["layer_type", "n", "p99", "p99/p50", "%", "GPU", "x"]
    assert lines[3].split() == ["all", "1,234,567", "97.6", "µs", "24.4×", "100.0%", "0.5"]
    assert lines[4].split() == ["moe_comm", "2", "1.23", "s", "69.0×", "0.25%", "-"]
    assert lines[-1] == "a note"
    assert render(_table(), "table") == text


def test_json_and_csv_keep_raw_values():
    doc = orjson.loads(to_json(_table()))
    assert doc["name"] == "t" and doc["meta"]["title"] == "run 1"
    assert [c["name"] for c in doc["columns"]] == [c.name for c in COLUMNS]
    assert doc["columns"][2] == {"name": "p99_ns", "kind": "ns", "doc": "99th percentile"}
    assert doc["rows"] == [dict(zip([c.name for c in COLUMNS], r)) for r in ROWS]
    rows = list(csv.reader(io.StringIO(to_csv(_table()))))
    assert rows[0] == [c.name for c in COLUMNS]
    assert rows[1] == ["all", "1234567", "97600.0", "24.4", "100.0", "0.5"]
    assert rows[2][-1] == ""  # None
    assert render(_table(), "csv") == to_csv(_table())
    with pytest.raises(ValueError):
        render(_table(), "xml")


def test_table_contract():
    t = _table()
    assert t.column("n") == [1234567, 2]
    assert t.record(layer_type="moe_comm")["tail_ratio"] == 69.0
    assert t.to_records()[0]["layer_type"] == "all"
    with pytest.raises(KeyError):
        t.record(layer_type="mamba")
    with pytest.raises(KeyError, match="no column"):
        t.column("p50_ns")
    with pytest.raises(TypeError):
        t.meta["title"] = "changed"  # read-only
    assert t.with_rows(ROWS[:1], title="x").meta["title"] == "x" and len(t) == 2
    with pytest.raises(ValueError, match="kind"):
        Column("a", "seconds")
    with pytest.raises(ValueError, match="duplicate"):
        Table("bad", (Column("a"), Column("a")))
    with pytest.raises(ValueError, match="row 0"):
        Table("bad", (Column("a"),), [("x", "y")])
