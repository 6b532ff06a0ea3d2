"""The CLI shell: help, version, exit codes, one-line errors, `runs`, and a real console-script run."""

from __future__ import annotations

import os
import subprocess
import sys

import orjson
import pytest
from factories import add_run, new_store, store_with

from hybridscope.cli import main

OUR_VERBS = ("runs", "decompose", "query")


def _cli(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code


def test_help_lists_our_verbs(capsys):
    assert _cli(["--help"]) == 0
    text = capsys.readouterr().out
    for verb in OUR_VERBS:
        assert verb in text


def test_version(capsys):
    from hybridscope import __version__

    assert _cli(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"hybridscope {__version__}"


def test_help_imports_no_heavy_module():
    """Registering every verb must not import duckdb, numpy or torch: `--help` stays fast."""
    code = ("import sys; from hybridscope import cli; cli._register(); "
            "print(','.join(m for m in ('duckdb', 'numpy', 'torch') if m in sys.modules))")
    done = subprocess.run([sys.executable, "-c", code], check=False, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == ""


@pytest.mark.parametrize("argv", [["no-such-verb"], ["runs"], ["decompose", "--db"], ["runs", "--db", "x", "--nope"]])
def test_usage_errors_exit_2(argv, capsys):
    assert _cli(argv) == 2


def test_runs_on_empty_and_filled_store(db_path, capsys):
    con = new_store(db_path)
    con.close()
    assert _cli(["runs", "--db", str(db_path), "-f", "json"]) == 0
    assert orjson.loads(capsys.readouterr().out)["rows"] == []
    con, _ = store_with(db_path, {"mamba": [1_000, 2_000]}, label="first")
    add_run(con, label="second", ranks=(0, 1), device_name="NVIDIA H200")
    con.close()
    assert _cli(["runs", "--db", str(db_path), "-f", "json"]) == 0
    rows = orjson.loads(capsys.readouterr().out)["rows"]
    assert [(r["run_id"], r["label"], r["ranks"], r["events"]) for r in rows] == [
        (1, "first", "0", 2), (2, "second", "0,1", 0)]
    assert rows[0]["window_ns"] == 3_000 and rows[1]["window_ns"] is None
    assert _cli(["runs", "--db", str(db_path)]) == 0
    text = capsys.readouterr().out
    assert "first" in text and "NVIDIA H200" in text and "3.00 µs" in text


def test_unusable_files_are_one_line_errors(tmp_path, capsys):
    junk = tmp_path / "junk.duckdb"
    junk.write_bytes(b"this is not a database\n" * 100)
    other = tmp_path / "other.duckdb"
    import duckdb

    duckdb.connect(str(other)).execute("CREATE TABLE t (x INT)").close()
    for path, words in ((tmp_path / "missing.duckdb", "no database"), (junk, "cannot open"),
                        (other, "not a hybridscope store")):
        for verb in (["runs"], ["decompose"], ["query", "SELECT 1"]):
            assert _cli([*verb, "--db", str(path)]) == 1
            err = capsys.readouterr().err.strip().splitlines()
            assert len(err) == 1 and words in err[0], (verb, err)
    assert junk.read_bytes() == b"this is not a database\n" * 100  # nothing written to it


def test_console_script_end_to_end(db_path):
    con, _ = store_with(db_path, {"mamba": [1_000, 3_000], "moe_comm": [40_000]})
    con.close()
    env = {**os.environ, "COLUMNS": "200"}
    exe = [sys.executable, "-m", "hybridscope"]
    done = subprocess.run([*exe, "decompose", "--db", str(db_path), "-f", "csv"],
                          check=False, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[0].startswith("layer_type,n,p50_ns")
    assert done.stdout.splitlines()[1].startswith("all,3,3000.0,")
    bad = subprocess.run([*exe, "query", "--db", str(db_path), "DROP TABLE events"],
                         check=False, capture_output=True, text=True, timeout=120, env=env)
    assert bad.returncode == 1 and "Traceback" not in bad.stderr
    assert bad.stderr.strip().splitlines() == [bad.stderr.strip()]


def test_wrote_line_keeps_a_long_path_whole_and_verbatim(capsys, monkeypatch):
    """Not a terminal (a CI log): the console is 80 columns wide; the path must stay one line,
    brackets included (no rich markup)."""
    from hybridscope.commands import _common

    monkeypatch.delenv("COLUMNS", raising=False)
    path = "/tmp/" + "a-long-directory-name/" * 6 + "run[1].duckdb"
    _common.wrote(path)
    assert capsys.readouterr().err == f"Wrote {path}\n"


def test_duckdb_out_of_memory_is_one_line_not_a_traceback():
    import duckdb

    from hybridscope.cli import _known_failure

    e = duckdb.OutOfMemoryException("Out of Memory Error: failed to allocate data of size 4.0 KiB "
                                    "(960.9 MiB/953.6 MiB used)\n\nPossible solutions: ...")
    line, code = _known_failure(e)
    assert code == 1 and "\n" not in line
    assert line.startswith("out of memory in DuckDB (960.9 MiB/953.6 MiB used)")
    assert _known_failure(MemoryError()) is None  # Python's own: not DuckDB's, not ours to word


def test_ctrl_c_while_duckdb_reads_a_python_object_is_an_interrupt():
    """Ctrl-C while DuckDB reads an import's Arrow rows (a replacement scan calls back into Python):
    DuckDB wraps the KeyboardInterrupt in its own error; the user still sees 'interrupted', 130."""
    import duckdb

    from hybridscope.cli import _known_failure

    e = duckdb.InvalidInputException("Invalid Input Error: reading the schema of the Python object "
                                     "'slice_events' failed: KeyboardInterrupt: ")
    assert _known_failure(e) == ("interrupted", 130)
    assert _known_failure(duckdb.InvalidInputException("Invalid Input Error: bad value")) is None


def test_report_keeps_freed_memory_through_mallopt(monkeypatch):
    """`report` asks glibc (mallopt) to serve buffers up to 256 MiB from the heap and keep 1 GiB of
    freed heap; without mallopt (macOS, old musl) it does nothing and does not fail."""
    import ctypes

    from hybridscope.commands._common import keep_freed_memory

    calls = []

    class Libc:
        def mallopt(self, option, value):
            calls.append((option, value))
            return 1

    monkeypatch.setattr(ctypes, "CDLL", lambda name: Libc())
    keep_freed_memory()
    assert calls == [(-3, 256 << 20), (-1, 1 << 30)]  # M_MMAP_THRESHOLD, M_TRIM_THRESHOLD

    class NoMallopt:
        pass

    monkeypatch.setattr(ctypes, "CDLL", lambda name: NoMallopt())
    keep_freed_memory()  # no AttributeError
