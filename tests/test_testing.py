"""The pytest plugin (hybridscope.testing): capture inside a test, assert on the decomposition."""

from __future__ import annotations

import pytest
from capture_models import engine_tiny, run_engine


def test_fixture_captures_the_engine_and_checks_against_a_baseline(hybridscope_capture, tmp_path):
    model = engine_tiny()
    with hybridscope_capture(model, mode="layers") as cap:
        run_engine(model, n_requests=3, prompt=8, new_tokens=4)
    d = cap.result
    assert {"mamba", "attention", "moe_router", "moe_experts"} <= set(d.layer_types())
    assert d.n("mamba") > 0 and d.p99("mamba") >= d.p50("mamba") > 0
    assert sum(d.share(t) for t in d.layer_types()) == pytest.approx(1.0)
    d.save_baseline(tmp_path / "base.duckdb", "main")
    table = d.check(tmp_path / "base.duckdb", "main")  # a run against itself never regresses
    assert table.meta["regressed"] == 0
    with pytest.raises(AssertionError, match="no 'moe_comm' row"):
        d.p99("moe_comm")
