"""Interrupts and disks, as a user meets them: Ctrl-C anywhere in an import or inside a DuckDB call is
one line and exit 130 with the store unchanged; a full disk (a file-size limit: writes fail with
EFBIG) is one line with the store unchanged; slice folders are removed on every exit path and those
of killed imports are cleaned at the next start."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest
from damage import TABLES
from paths import TRACES

ROOT = Path(__file__).resolve().parents[1]
BIG = TRACES / "granitemoehybrid.pt.trace.json.gz"  # 180K events: several seconds to import
SMALL = TRACES / "external" / "hta_triton_example_triton_example.json.gz"


def _env(tmp: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT / "src"), "TMPDIR": str(tmp)}


def _cli(*args, tmp: Path, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "hybridscope", *map(str, args)], env=_env(tmp),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _counts(db: Path) -> dict[str, int]:
    with duckdb.connect(str(db), read_only=True) as con:
        return {t: con.execute(f"SELECT count(*) FROM {t}").fetchall()[0][0] for t in TABLES}


@pytest.fixture
def store(tmp_path) -> Path:
    if not BIG.exists() or not SMALL.exists():
        pytest.skip("../shared/traces not present")
    db = tmp_path / "s.duckdb"
    done = _cli("import", SMALL, "--db", db, "--no-progress", tmp=tmp_path)
    assert done.wait(timeout=300) == 0, done.stderr.read()
    return db


def _slice_folders(tmp: Path) -> list[Path]:
    return list(tmp.glob("hybridscope-import-*"))


@pytest.mark.slow
def test_ctrl_c_during_an_import_is_one_line_and_leaves_the_store_unchanged(store, tmp_path):
    """SIGINT at several moments of a large import (reading, parsing, inserting, attributing)."""
    before = _counts(store)
    interrupted = 0
    for delay in (0.4, 0.55, 0.7, 0.85, 1.0, 1.5, 2.5, 4.0):  # through the import, fast or slow
        proc = _cli("import", BIG, "--db", store, "--no-progress", tmp=tmp_path)
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=300)
        after = _counts(store)
        if "run 2 rank 0" in out or after["runs"] > before["runs"]:
            # the file was committed before the signal took effect: the store holds it whole (an
            # import is one transaction), never part of it
            assert after["runs"] == before["runs"] + 1 and after["events"] > before["events"]
            break
        interrupted += 1
        assert proc.returncode == 130, err
        assert err == "hybridscope: error: interrupted\n"
        assert _counts(store) == before
        assert _slice_folders(tmp_path) == []
    assert interrupted >= 2


SLOW_QUERY = "SELECT sum(hash(a.range * b.range)) FROM range(400000) a, range(400000) b"
SELF_INTERRUPT = """
import os, signal, sys, threading
from hybridscope.cli import main
threading.Timer(float(sys.argv[1]), os.kill, (os.getpid(), signal.SIGINT)).start()
main(sys.argv[2:])
"""


def test_ctrl_c_inside_a_duckdb_call_is_one_line(store, tmp_path):
    """The SIGINT lands while DuckDB runs a long query: DuckDB raises its own 'Query interrupted'
    (not KeyboardInterrupt); the user still sees one line and exit 130."""
    proc = subprocess.run([sys.executable, "-c", SELF_INTERRUPT, "1.0", "query", SLOW_QUERY, "--db", str(store)],
                          env=_env(tmp_path), capture_output=True, text=True, timeout=300, check=False)
    assert (proc.returncode, proc.stderr) == (130, "hybridscope: error: interrupted\n")


def _limit_file_size(limit: int):
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return apply


@pytest.mark.slow
@pytest.mark.parametrize("limit_mb", [1, 4, 12])
def test_full_disk_is_one_line_and_leaves_the_store_usable(store, tmp_path, limit_mb):
    """Writes fail past `limit_mb` (slices, the store's WAL or its checkpoint, whichever comes
    first): one line naming the disk, exit 1, the store unchanged and still readable."""
    before = _counts(store)
    proc = _cli("import", BIG, "--db", store, "--no-progress", tmp=tmp_path,
                preexec_fn=_limit_file_size(limit_mb << 20))
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 1, err
    assert err.startswith("hybridscope: error: out of disk space") and err.count("\n") == 1, err
    assert _counts(store) == before
    assert _slice_folders(tmp_path) == []


def test_full_disk_on_a_new_store_leaves_no_file(tmp_path):
    if not BIG.exists():
        pytest.skip("../shared/traces not present")
    db = tmp_path / "new.duckdb"
    proc = _cli("import", BIG, "--db", db, "--no-progress", tmp=tmp_path, preexec_fn=_limit_file_size(1 << 20))
    _, err = proc.communicate(timeout=600)
    assert proc.returncode == 1 and err.startswith("hybridscope: error: out of disk space"), err
    assert not db.exists()


def test_slice_folders_of_killed_imports_are_removed_at_the_next_start(store, tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = tmp_path / f"hybridscope-import-{dead.pid}-x1y2"
    stale.mkdir()
    (stale / "slice3.json").write_bytes(b"[" + b" " * 4096 + b"]")
    alive = tmp_path / f"hybridscope-import-{os.getpid()}-a1b2"  # a running import's: kept
    alive.mkdir()
    other = tmp_path / "hybridscope-demo-keep"
    other.mkdir()
    proc = _cli("import", SMALL, "--db", store, "--no-progress", tmp=tmp_path)
    assert proc.wait(timeout=300) == 0
    assert not stale.exists() and alive.exists() and other.exists()
