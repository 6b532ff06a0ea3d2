"""`hybridscope query` streams CSV/JSON (the same text as the whole-table renderers, constant memory),
stops at --timeout with one line, and takes SQL that starts with a `-- comment`."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import orjson
import pytest
from factories import new_store

from hybridscope.cli import main
from hybridscope.present.table import to_csv, to_json
from hybridscope.store.query import open_query, run_query

ROOT = Path(__file__).resolve().parents[1]
MIXED = ("SELECT range AS i, range / 3 AS x, 'r' || range AS s, CASE WHEN range % 3 = 0 THEN NULL END AS n, "
         "[range, 2] AS l, {'a': range} AS st, range % 2 = 0 AS b FROM range(25000)")


@pytest.fixture
def store(tmp_path) -> Path:
    db = tmp_path / "s.duckdb"
    new_store(db).close()
    return db


def _cli(argv) -> int:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    return exc.value.code


@pytest.mark.parametrize("fmt, render", [("csv", to_csv), ("json", to_json)])
def test_streamed_output_is_the_whole_table_rendering(store, capsys, fmt, render):
    """25,000 rows (more than one batch) of every kind of value: the streamed text equals what the
    whole-table renderer makes of the same result."""
    con = open_query(store)
    try:
        table = run_query(con, MIXED)
    finally:
        con.close()
    assert _cli(["query", MIXED, "--db", store, "--format", fmt]) == 0
    assert capsys.readouterr().out == render(table)


def test_streamed_json_of_no_rows_is_the_whole_table_rendering(store, capsys):
    sql = "SELECT 1 AS a WHERE false"
    con = open_query(store)
    table = run_query(con, sql)
    con.close()
    assert _cli(["query", sql, "--db", store, "--format", "json"]) == 0
    out = capsys.readouterr().out
    assert out == to_json(table) and orjson.loads(out)["rows"] == []


def test_sql_may_start_with_a_comment(store, capsys):
    sql = "-- runs per source\nSELECT 41 + 1 AS answer"
    assert _cli(["query", sql, "--db", store, "--format", "csv"]) == 0
    assert capsys.readouterr().out == "answer\n42\n"
    assert _cli(["query", "--db", store, "--format", "csv", sql]) == 0  # SQL after the options too
    assert capsys.readouterr().out == "answer\n42\n"


def test_a_comment_only_is_one_line(store, capsys):
    assert _cli(["query", "-- nothing here\n", "--db", store]) == 1
    assert capsys.readouterr().err.strip() == "hybridscope: error: no SQL statement given"


@pytest.mark.parametrize("fmt", ["table", "csv"])
def test_timeout_stops_a_long_query_with_one_line(store, capsys, fmt):
    slow = "SELECT sum(hash(a.range * b.range)) FROM range(300000) a, range(300000) b"
    assert _cli(["query", slow, "--db", store, "--format", fmt, "--timeout", "0.5"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["hybridscope: error: the query ran longer than --timeout 0.5 s and was stopped"]


def test_timeout_leaves_a_quick_query_alone(store, capsys):
    assert _cli(["query", "SELECT 7 AS x", "--db", store, "--format", "csv", "--timeout", "30"]) == 0
    assert capsys.readouterr().out == "x\n7\n"


MEASURE = """
import resource, subprocess, sys
with open(sys.argv[1], "wb") as sink:
    done = subprocess.run(sys.argv[2:], stdout=sink)
print(done.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
"""


@pytest.mark.slow
@pytest.mark.parametrize("fmt, n", [("csv", 10_000_000), ("json", 2_000_000)])
def test_rows_stream_under_200_mib(store, tmp_path, fmt, n):
    """Peak RSS of the `query` process (measured by its parent) while it writes 10M rows of CSV
    (2M of JSON, five times the bytes a row) to a file."""
    sink = tmp_path / f"out.{fmt}"
    cmd = [sys.executable, "-m", "hybridscope", "query", f"SELECT range AS i FROM range({n})",
           "--db", str(store), "--format", fmt]
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, "-c", MEASURE, str(sink), *cmd], check=True, capture_output=True,
                          text=True, env=env, timeout=900)
    rc, peak_kib = map(int, done.stdout.split())
    assert rc == 0
    with open(sink, "rb") as f:
        f.seek(-40, os.SEEK_END)
        tail = f.read()
    last = str(n - 1).encode()
    assert tail.endswith(b"\n" + last + b"\n" if fmt == "csv" else b'"i": ' + last + b'\n    }\n  ]\n}\n')
    assert peak_kib < 200 * 1024, f"peak RSS {peak_kib / 1024:.0f} MiB"
