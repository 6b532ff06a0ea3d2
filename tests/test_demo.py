"""`hybridscope demo` end to end on CPU: two expert-parallel ranks, capture, merge, report."""

from __future__ import annotations

import subprocess
import sys

from hybridscope.store import db


def test_demo_runs_on_cpu_and_writes_the_store_and_report(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "hybridscope", "demo", "--out", str(tmp_path), "--device", "cpu",
                           "--requests", "6"], check=False, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    # the decomposition table and the dashboard contrast are printed
    assert "layer type" in out and "p99/p50" in out and "moe_comm" in out and "dashboard" in out
    assert (tmp_path / "report.html").stat().st_size > 10_000
    assert "Wrote" in proc.stderr and "report.html" in proc.stderr
    con = db.open_readonly(tmp_path / "run.duckdb")
    try:
        (world,) = con.execute("SELECT world_size FROM runs").fetchall()[0]
        ranks = con.execute("SELECT count(*) FROM run_ranks").fetchall()[0][0]
        types = {r[0] for r in con.execute("SELECT DISTINCT layer_type FROM events WHERE source = 'layer'").fetchall()}
        n_req = con.execute("SELECT count(*) FROM requests WHERE first_token_ns > arrival_ns").fetchall()[0][0]
        routed = con.execute("SELECT sum(tokens) FROM routing").fetchall()[0][0]
    finally:
        con.close()
    assert world == 2 and ranks == 2
    assert {"mamba", "attention", "moe_router", "moe_experts", "moe_comm"} <= types
    assert n_req == 6 and routed > 0


def test_demo_bad_options_are_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "hybridscope", "demo", "--out", str(tmp_path), "--mode", "deep"],
                          check=False, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith("hybridscope: error: --mode")
