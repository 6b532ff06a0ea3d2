"""Errors that say what to do (issue 13 item 5, issue 16): folders given to `import`, a trace given as
--db, a store another process holds (which process, bounded --wait), a failed first import leaving no
store behind, a re-import that writes nothing, a 0-byte store, and Ingero sources opened read-only."""

from __future__ import annotations

import gzip
import os
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import orjson
import pytest
from nsys_fixtures import as_kineto, hybrid_model
from paths import EXTERNAL

from hybridscope.cli import main

ROOT = Path(__file__).resolve().parents[1]
INGERO = ("ingero_sample-cluster.db", "ingero_vllm-37343-logprobs-amplification.db")


def _cli(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exc:
        main([str(a) for a in argv])
    return exc.value.code


def _kineto(path: Path, rank: int | None = None, world: int = 2) -> Path:
    doc = as_kineto(hybrid_model())
    if rank is not None:
        doc["distributedInfo"] = {"rank": rank, "world_size": world, "backend": "nccl"}
    path.write_bytes(gzip.compress(orjson.dumps(doc)) if path.suffix == ".gz" else orjson.dumps(doc))
    return path


def _one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    assert err[0].startswith("hybridscope: error: ")
    return err[0]


def test_folder_imports_the_trace_files_in_it(tmp_path, capsys):
    run_dir = tmp_path / "profile"
    run_dir.mkdir()
    _kineto(run_dir / "rank0.pt.trace.json.gz", rank=0)
    _kineto(run_dir / "rank1.pt.trace.json", rank=1)
    (run_dir / "README.txt").write_text("how these traces were taken\n")
    db = tmp_path / "s.duckdb"
    assert _cli(["import", run_dir, "--db", db, "--no-progress"]) == 0
    cap = capsys.readouterr()
    assert "rank0.pt.trace.json.gz: run 1 rank 0" in cap.out and "rank1.pt.trace.json: run 1 rank 1" in cap.out
    assert "1 file that are not traces left out" in cap.err and f"Wrote {db}" in cap.err
    import duckdb

    with duckdb.connect(str(db), read_only=True) as con:
        assert con.execute("SELECT count(*) FROM run_ranks").fetchall()[0][0] == 2


def test_folder_without_traces_is_one_line_and_leaves_no_store(tmp_path, capsys):
    empty = tmp_path / "notes"
    empty.mkdir()
    (empty / "a.txt").write_text("not a trace")
    db = tmp_path / "s.duckdb"
    assert _cli(["import", empty, "--db", db]) == 1
    assert "a folder with no trace files in it" in _one_error_line(capsys)
    assert not db.exists()


def test_failed_first_import_leaves_no_store_behind(tmp_path, capsys):
    bad = tmp_path / "bad.json"
    bad.write_text('{"traceEvents": [{"ph": "X", "cat": "kernel"')  # truncated
    db = tmp_path / "new.duckdb"
    assert _cli(["import", bad, "--db", db, "--no-progress"]) == 1
    _one_error_line(capsys)
    assert not db.exists() and not Path(f"{db}.wal").exists()


def test_reimport_does_not_say_wrote(tmp_path, capsys):
    trace = _kineto(tmp_path / "t.json")
    db = tmp_path / "s.duckdb"
    assert _cli(["import", trace, "--db", db, "--no-progress"]) == 0
    assert f"Wrote {db}" in capsys.readouterr().err
    assert _cli(["import", trace, "--db", db, "--no-progress"]) == 0
    cap = capsys.readouterr()
    assert "already imported as run 1 rank 0" in cap.out
    assert "Wrote" not in cap.err and f"nothing new to import: {db} is unchanged" in cap.err


@pytest.mark.parametrize("verb", [["runs"], ["decompose"], ["report"], ["query", "SELECT 1"], ["import", "TRACE"]])
def test_trace_given_as_db_says_it_is_a_trace(tmp_path, capsys, verb):
    trace = _kineto(tmp_path / "t.pt.trace.json.gz")
    before = trace.read_bytes()
    assert _cli([*[trace if a == "TRACE" else a for a in verb], "--db", trace]) == 1
    line = _one_error_line(capsys)
    assert "is a gzip file (a Kineto trace?), not a hybridscope store" in line
    assert f"hybridscope import {trace} --db STORE.duckdb" in line
    assert trace.read_bytes() == before


def test_zero_byte_store_is_replaced_by_import(tmp_path, capsys):
    db = tmp_path / "s.duckdb"
    db.touch()  # a store whose creation never completed (killed, disk full)
    assert _cli(["runs", "--db", db]) == 1
    assert "never completed" in _one_error_line(capsys)
    assert _cli(["import", _kineto(tmp_path / "t.json"), "--db", db, "--no-progress"]) == 0
    capsys.readouterr()
    assert _cli(["runs", "--db", db, "--format", "csv"]) == 0
    assert capsys.readouterr().out.count("\n") == 2  # header and the run


HOLD = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1])
print("held", flush=True)
time.sleep(float(sys.argv[2]))
con.close()
"""


def _imported(tmp_path: Path, capsys) -> tuple[Path, Path]:
    """(trace, store) with the trace imported, the import's output read away."""
    trace = _kineto(tmp_path / "t.json")
    db = tmp_path / "s.duckdb"
    assert _cli(["import", trace, "--db", db, "--no-progress"]) == 0
    capsys.readouterr()
    return trace, db


def _hold(db: Path, seconds: float) -> subprocess.Popen:
    """Another process that opens the store for writing and keeps it for `seconds`."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(db), str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.mark.parametrize("verb", [["runs"], ["decompose"], ["query", "SELECT 1"], ["import", "TRACE"]])
def test_store_held_by_another_process_names_it(tmp_path, capsys, verb):
    trace, db = _imported(tmp_path, capsys)
    holder = _hold(db, 30)
    try:
        t0 = time.monotonic()
        argv = [trace if a == "TRACE" else a for a in verb]
        assert _cli([*argv, "--db", db, "--wait", "0.5"]) == 1
        waited = time.monotonic() - t0
        line = _one_error_line(capsys)
    finally:
        holder.kill()
        holder.wait()
    assert f"{db} is busy: process {holder.pid} (" in line and "waited 0.5 s" in line and "--wait" in line
    assert 0.5 <= waited < 5


def test_reader_waits_for_the_writer_to_finish(tmp_path, capsys):
    _, db = _imported(tmp_path, capsys)
    holder = _hold(db, 1.5)
    try:
        assert _cli(["runs", "--db", db, "--format", "csv", "--wait", "20"]) == 0
    finally:
        holder.wait()
    assert capsys.readouterr().out.startswith("run_id,")


def _quiet_report(db: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "COLUMNS": "120"}
    return subprocess.run([sys.executable, "-m", "hybridscope", "report", "--db", str(db), "--html",
                           str(db.with_suffix(".html"))], check=False, capture_output=True, text=True, env=env, timeout=300)


@pytest.mark.parametrize("name", INGERO)
def test_ingero_imports_from_a_read_only_folder_and_reports(tmp_path, name):
    src = EXTERNAL / name
    if not src.exists():
        pytest.skip(f"{src} not present")
    folder = tmp_path / "ro"
    folder.mkdir()
    shutil.copy2(src, folder / name)
    folder.chmod(stat.S_IRUSR | stat.S_IXUSR)
    before = sorted(os.listdir(folder))
    db = tmp_path / "s.duckdb"
    try:
        env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
        done = subprocess.run([sys.executable, "-m", "hybridscope", "import", str(folder / name), "--db", str(db),
                               "--no-progress"], check=False, capture_output=True, text=True, env=env, timeout=300)
        assert done.returncode == 0, done.stderr
        assert sorted(os.listdir(folder)) == before  # no -wal / -shm beside the source
    finally:
        folder.chmod(stat.S_IRWXU)
    rep = _quiet_report(db)
    assert rep.returncode == 0, rep.stderr
    assert "Traceback" not in rep.stderr
    assert "host API call" in rep.stdout and "all host API calls pooled" in rep.stdout
    assert "host API timings (Ingero uprobes), not GPU kernels" in rep.stdout
    assert "Decomposition" in db.with_suffix(".html").read_text()


def test_nsys_import_reports(tmp_path):
    """An nsys export (kernels, runtime API calls, NVTX ranges) imports and reports without a traceback."""
    from nsys_fixtures import write

    export = write(tmp_path / "run.sqlite", hybrid_model())
    db = tmp_path / "s.duckdb"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    done = subprocess.run([sys.executable, "-m", "hybridscope", "import", str(export), "--db", str(db), "--no-progress"],
                          check=False, capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr
    rep = _quiet_report(db)
    assert rep.returncode == 0 and "Traceback" not in rep.stderr, rep.stderr
    assert "all kernels pooled" in rep.stdout
