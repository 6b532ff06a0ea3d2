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


def test_hotspots_skew_the_same_steps_on_every_rank_and_run():
    """The hotspots workload: routing skewed in a seeded 30% of the model's calls, the same calls on
    every rank (each builds its own model) and in every run with that seed."""
    from dataclasses import asdict

    import numpy as np
    import torch

    from hybridscope import demo
    from hybridscope.engine.config import EngineConfig
    from hybridscope.engine.model import Batch, build_model
    from hybridscope.engine.moe import Router

    o = asdict(demo.default_options(device="cpu", workload="hotspots", skew=10.0, seed=3))
    assert (o["burst"], o["step_tokens"], o["gen_len"], tuple(o["skew_experts"])) == (0.3, 512, 1, (0, 1, 2, 3))
    want = (np.random.default_rng(3).random(1 << 16) < 0.3)[:40]
    seen = []
    for _rank in range(2):
        model = build_model(EngineConfig.from_preset("tiny", **o["overrides"]))
        demo.skew_in_bursts(model, o)
        router = next(m for m in model.modules() if isinstance(m, Router))
        flags = []
        model.register_forward_hook(lambda m, a, out, flags=flags, router=router: flags.append(router.skewed))
        ids = torch.randint(1, 200, (4,))
        for _ in range(40):
            model(ids, Batch.packed([0], [0], [4], "cpu"), model.new_cache())
        seen.append(flags)
    assert seen[0] == seen[1] == want.tolist()
    assert 0 < sum(want) < 40
