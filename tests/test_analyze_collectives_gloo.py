"""Two gloo processes on CPU: each rank captures its own store, `merge` joins them, and the
straggler analysis names the rank that computed longer before every all-to-all."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from hybridscope.analyze import collectives as col
from hybridscope.cli import main
from hybridscope.store import db

WORKER = Path(__file__).parent / "workers" / "gloo_exchange.py"
STEPS = 4
DELAY_NS = 100_000_000  # tests/workers/gloo_exchange.DELAY_S


def test_two_gloo_ranks_merge_and_name_the_straggler(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
         str(WORKER), str(tmp_path / "run.duckdb"), str(STEPS)],
        check=False, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stderr[-3000:]
    parts = sorted(tmp_path.glob("run.rank*.duckdb"))
    assert [p.name for p in parts] == ["run.rank0.duckdb", "run.rank1.duckdb"]
    merged = tmp_path / "merged.duckdb"
    with pytest.raises(SystemExit) as e:
        main(["merge", *map(str, parts), "--db", str(merged)])
    assert e.value.code == 0

    con = db.open_readonly(merged)
    try:
        run = db.resolve_run(con, None)
        assert con.execute("SELECT count(*) FROM run_ranks WHERE run_id = ?", [run]).fetchall()[0][0] == 2
        steps = col.stragglers(con, run).to_records()
        calls = col.collectives(con, run).to_records()
    finally:
        con.close()
    assert [s["step"] for s in steps] == list(range(STEPS))
    # step 0 also holds the ranks' different capture start-up; from step 1 on, only the workload
    steady = [s for s in steps if s["step"] >= 1]
    assert all(s["straggler"] == 1 for s in steady)
    wait = {(c["seq"], c["rank"]): c["wait_ns"] for c in calls}
    for seq in range(1, STEPS):
        # rank 0 waited for rank 1's extra 100 ms (scheduling noise adds, never removes); rank 1 not at all
        assert DELAY_NS * 0.8 < wait[(seq, 0)] < DELAY_NS * 3, wait
        assert wait[(seq, 1)] == 0
        assert [c["straggler"] for c in calls if c["seq"] == seq] == ["", "yes"]
