"""Merging per-rank stores into one run; clock alignment across hosts."""

from __future__ import annotations

import pytest
from factories import add_events, add_run, add_steps, new_store

from hybridscope.analyze.collectives import rank_waits
from hybridscope.cli import main
from hybridscope.store import db

NCCL = "ncclDevKernel_SendRecv(ncclDevKernelArgsStorage<4096ul>)"


def rank_store(path, rank, host, shift):
    """A per-rank store: three collectives ending at 1000, 2000, 3000 (+ shift) on that rank's clock."""
    con = new_store(path)
    run = add_run(con, ranks=(rank,), world_size=2, host=host)
    starts = [900, 1900, 2900] if rank == 0 else [600, 1800, 2950]
    add_events(con, run, [1000 * (k + 1) - s for k, s in enumerate(starts)], rank=rank, name=NCCL,
               ts_ns=[s + shift for s in starts])
    add_events(con, run, [50], rank=rank, name="gemm", ts_ns=[100 + shift])
    add_steps(con, run, [3000], rank=rank, start_ns=shift, n_tokens=[64])
    con.close()
    return path


def run_cli(*args):
    with pytest.raises(SystemExit) as e:
        main([str(a) for a in args])
    return e.value.code


def test_merge_two_hosts_aligns_clocks(tmp_path):
    a = rank_store(tmp_path / "r0.duckdb", 0, "hostA", 0)
    b = rank_store(tmp_path / "r1.duckdb", 1, "hostB", 7_000_000)
    out = tmp_path / "merged.duckdb"
    assert run_cli("merge", a, b, "--db", out) == 0
    con = db.open_readonly(out)
    run = db.resolve_run(con, None)
    ranks = con.execute("SELECT rank, host, clock_offset_ns FROM run_ranks WHERE run_id = ? ORDER BY rank",
                        [run]).fetchall()
    assert ranks == [(0, "hostA", 0), (1, "hostB", -7_000_000)]
    assert con.execute("SELECT world_size, rank FROM runs WHERE run_id = ?", [run]).fetchall() == [(2, None)]
    assert con.execute("SELECT count(*) FROM events WHERE run_id = ?", [run]).fetchall()[0][0] == 8
    assert con.execute("SELECT min(ts_ns) FROM events WHERE run_id = ? AND rank = 1", [run]).fetchall()[0][0] == 100
    assert con.execute("SELECT ts_ns FROM steps WHERE run_id = ? AND rank = 1", [run]).fetchall()[0][0] == 0
    w = rank_waits(con, run)
    # arrivals: rank 0 at 900/1900/2900, rank 1 at 600/1800/2950 after alignment
    assert w.record(rank=1)["wait_ns"] == 300 + 100 and w.record(rank=0)["wait_ns"] == 50
    con.close()


def test_merge_one_host_keeps_clock_and_refuses_bad_sets(tmp_path):
    a = rank_store(tmp_path / "r0.duckdb", 0, "h", 0)
    b = rank_store(tmp_path / "r1.duckdb", 1, "h", 5)
    out = tmp_path / "m.duckdb"
    assert run_cli("merge", a, b, "--db", out) == 0
    con = db.open_readonly(out)
    assert con.execute("SELECT min(ts_ns) FROM events WHERE rank = 1").fetchall()[0][0] == 105
    con.close()
    assert run_cli("merge", a, a, "--db", out) == 1  # same rank twice
    assert run_cli("merge", a, tmp_path / "nope.duckdb", "--db", out) == 1
    assert run_cli("merge", a, b, "--db", out, "--align", "sometimes") == 2
