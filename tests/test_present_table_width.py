"""Every table command at 80 and 100 columns: no line wider than the terminal, the label column of
every row whole (kernel names shortened the one way), no number cut, and what was left out named."""

from __future__ import annotations

import re

import orjson
import pytest
import report_scenario
from factories import add_events, add_run
from rich.cells import cell_len

from hybridscope.cli import main
from hybridscope.present.table import LABEL_SHARE, fit, float_decimals, label_columns, to_text
from hybridscope.table import Column, Table
from hybridscope.units import format_value, short_kernel_name

LONG = ("void at::native::elementwise_kernel<128, 2, at::native::gpu_kernel_impl_nocast<at::native::"
        "BinaryFunctor<c10::BFloat16, c10::BFloat16, c10::BFloat16, at::native::binary_internal::"
        "MulFunctor<float> > >(at::TensorIteratorBase&, at::native::BinaryFunctor<c10::BFloat16, "
        "c10::BFloat16, c10::BFloat16, at::native::binary_internal::MulFunctor<float> > const&)::"
        "{lambda(int)#1}>(int, at::native::gpu_kernel_impl_nocast<…>)")
COPY = "Memcpy DtoD (Device -> Device)"


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """Run 1: the two-rank report scenario; run 2: a kernel with a long C++ name (other), a copy."""
    path = tmp_path_factory.mktemp("width") / "s.duckdb"
    con, _ = report_scenario.build(path)
    run = add_run(con, label="long-kernels")
    add_events(con, run, [5_000, 7_000, 90_000], layer_type="other", name=LONG)
    add_events(con, run, [2_000], layer_type="memory", name=COPY, kind="memcpy")
    con.close()
    assert _cli(["baseline", "save", "--db", str(path), "--name", "main", "--run", "1"])[0] == 0
    return path


def _cli(args, capsys=None):
    with pytest.raises(SystemExit) as e:
        main(list(args))
    return e.value.code, (capsys.readouterr().out if capsys else "")


COMMANDS = {
    "decompose": (["decompose", "--run", "1"], ["--format", "json"]),
    "decompose-layer": (["decompose", "--run", "1", "--by", "layer"], ["--format", "json"]),
    "decompose-kernel": (["decompose", "--run", "2", "--by", "kernel"], ["--format", "json"]),
    "report": (["report", "--run", "1"], None),
    "check": (["check", "--run", "1", "--baseline", "main"], ["--format", "json"]),
    "diff": (["diff", "1", "1"], ["--format", "json"]),
    "diff-kernel": (["diff", "2", "2", "--by", "kernel"], ["--format", "json"]),
    "ranks": (["ranks", "--run", "1"], ["--format", "json"]),
    "attribution": (["attribution", "--run", "2"], ["--format", "json"]),
    "runs": (["runs"], ["--format", "json"]),
    "query": (["query", ("SELECT layer_type, count(*) AS n, avg(duration_ns) / 7 AS mean_ns_over_7 "
                        "FROM events WHERE run_id = 1 GROUP BY ALL ORDER BY 1")], ["--format", "json"]),
}


def _tables(doc) -> list[dict]:
    """Every table document ({"columns", "rows"}) inside a JSON answer."""
    if isinstance(doc, dict) and "columns" in doc and "rows" in doc:
        return [doc]
    if isinstance(doc, dict):
        return [t for v in doc.values() for t in _tables(v)]
    return []


def _label(value, kind: str, width: int) -> str:
    if kind == "kernel":
        return short_kernel_name(str(value), max(24, min(100, int(width * LABEL_SHARE))))
    return format_value(value, kind)


@pytest.mark.parametrize("width", [80, 100])
@pytest.mark.parametrize("name", list(COMMANDS))
def test_every_table_command_fits_and_keeps_its_labels(store, name, width, capsys, monkeypatch, tmp_path):
    args, json_args = COMMANDS[name]
    db = ["--db", str(store)]
    if json_args is None:  # report: its tables as one JSON file
        assert _cli(args + db + ["--json", str(tmp_path / "r.json")])[0] == 0
        tables = [t for n, t in orjson.loads((tmp_path / "r.json").read_bytes())["tables"].items()
                  if n in ("decompose_layer_type", "per_rank")]
        capsys.readouterr()
    else:
        code, text = _cli(args + db + json_args, capsys)
        assert code == 0, text
        tables = _tables(orjson.loads(text))
    assert tables
    monkeypatch.setenv("COLUMNS", str(width))
    code, text = _cli(args + db, capsys)
    assert code == 0, text
    lines = text.splitlines()
    assert all(cell_len(ln) <= width for ln in lines), "\n".join(ln for ln in lines if cell_len(ln) > width)
    labels = []
    for t in tables:
        col = t["columns"][0]
        labels += [_label(r[col["name"]], col["kind"], width) for r in t["rows"][:12]]
    for label in labels:  # whole, on one line, as its own cell
        assert any(re.search(rf"(^|\s){re.escape(label)}(\s|$)", ln) for ln in lines), f"{label!r} cut:\n{text}"
    rest = text
    for label in sorted(set(labels), key=len, reverse=True):
        rest = rest.replace(label, "")
    assert not re.search(r"…(\s|$)", rest), text  # no number, header or note was cut (a range a…b may stay)


def test_narrow_terminal_hides_optional_columns_first_and_says_so():
    cols = (Column("layer_type"), Column("n", "int"), Column("p50_ns", "ns", label="p50"),
            Column("p90_ns", "ns", label="p90", optional=2), Column("p99_ns", "ns", label="p99"),
            Column("max_ns", "ns", label="max", optional=1), Column("gpu_pct", "pct", label="% GPU"))
    t = Table("t", cols, [("moe_experts", 12_345, 1_500.0, 2_500.0, 9_000.0, 12_000.0, 55.5)])
    # natural widths 11 6 7 7 7 7 5 -> 50 + 3 x 7 + 1 = 72; without p90 62, without max too 52
    assert fit(t, 72).hidden == ()
    assert fit(t, 71).hidden == fit(t, 62).hidden == ("p90",)  # highest `optional` first
    assert fit(t, 61).hidden == fit(t, 52).hidden == ("p90", "max")
    assert fit(t, 51).hidden == ("p90", "max", "% GPU")  # then the others, from the right
    assert fit(t, 10).shown == (0,)  # the label column is never hidden
    text = to_text(t, width=51)
    assert "moe_experts" in text and "not shown at 51 columns: p90, max, % GPU" in text


def test_label_columns_and_float_precision():
    t = Table("t", (Column("run_id", "int"), Column("label"), Column("source"), Column("x", "float")), [])
    assert label_columns(t) == (0, 1, 2)
    assert label_columns(Table("t", (Column("rank", "int"), Column("n", "int")), [])) == (0,)
    assert float_decimals([854.444, 48.22, 786.218]) == 2  # 48.22 needs two for four digits
    assert float_decimals([0.5, 0.25]) == 2 and float_decimals([1.0, 12.0]) == 0
    assert float_decimals([1e-9, 2e-9]) is None
    q = Table("q", (Column("name"), Column("us", "float")), [("a", 854.444), ("b", 48.22), ("c", 7.0)])
    assert [ln.split()[-1] for ln in to_text(q).splitlines()[3:6]] == ["854.44", "48.22", "7.00"]
