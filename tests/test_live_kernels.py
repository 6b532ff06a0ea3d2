"""`kernels` mode on CPU: torch.profiler's CPU ops, attributed through the capture's scopes; windows."""

from __future__ import annotations

import pytest
import torch
from capture_models import (
    ToyModel,
    captured_engine_run,
    latest_run,
    rows,
)

import hybridscope


@pytest.fixture(scope="module")
def kernel_run(tmp_path_factory):
    return captured_engine_run(tmp_path_factory, "kernels")


def test_kernel_mode_output_identical_and_ops_recorded(kernel_run):
    db, reference, out, summary = kernel_run
    assert out == reference
    assert summary.faults == {} and summary.kernel_events > 100
    con, run = latest_run(db)
    kinds = dict(rows(con, "SELECT kind, count(*) FROM events WHERE run_id = ? AND source = 'cpu' GROUP BY 1", [run]))
    assert set(kinds) == {"cpu_op"}


def test_ops_are_attributed_to_the_scopes_around_them(kernel_run):
    con, run = latest_run(kernel_run[0])
    by_type = dict(rows(con, "SELECT layer_type, count(*) FROM events WHERE run_id = ? AND source = 'cpu' "
                             "GROUP BY 1", [run]))
    assert {"mamba", "attention", "moe_router", "moe_experts", "mlp", "lm_head"} <= set(by_type)
    # each attributed op lies inside its scope, on the same thread
    outside = rows(con, """SELECT count(*) FROM events e JOIN scopes s ON s.run_id = e.run_id AND s.scope_id = e.scope_id
                           WHERE e.run_id = ? AND e.source = 'cpu'
                             AND NOT (e.ts_ns >= s.ts_ns AND e.ts_ns < s.end_ns AND e.tid = s.tid)""", [run])
    assert outside == [(0,)]
    # router ops sit in the routers of MoE layers 1, 3, 7 (innermost module: the router's path, or
    # the engine's own record_function range inside it)
    got = rows(con, "SELECT DISTINCT layer_index, module FROM events WHERE run_id = ? AND "
                    "layer_type = 'moe_router' AND source = 'cpu' ORDER BY ALL", [run])
    assert {i for i, _ in got} == {1, 3, 7}
    assert {m for _, m in got} >= {"layers.1.moe.router", "layers.3.moe.router", "layers.7.moe.router"}
    steps = {s for (s,) in rows(con, "SELECT DISTINCT step FROM events WHERE run_id = ? AND source = 'cpu' "
                                     "AND layer_type IS NOT NULL", [run])}
    assert steps == {0, 1, 2}


@pytest.mark.parametrize("strategy", ["schedule", "toggle"])
def test_windowed_sampling_profiles_only_its_steps(tmp_path, monkeypatch, strategy):
    from hybridscope.live import kernels

    monkeypatch.setattr(kernels, "WINDOW_STRATEGY", strategy)  # 'auto' is 'toggle' on CUDA only
    model = ToyModel(torch.tensor([[0, 1]]), num_experts=2)
    with hybridscope.capture(db=tmp_path / "w.duckdb", model=model, mode="kernels", sample_every=2,
                             sample_steps=1, quiet=True) as cap:
        for _ in range(6):
            model(torch.ones(1, 2))
    con, run = latest_run(tmp_path / "w.duckdb")
    # the first step of every 2 is profiled
    steps = {s for (s,) in rows(con, "SELECT DISTINCT step FROM events WHERE run_id = ? AND source = 'cpu' "
                                     "AND step IS NOT NULL", [run])}
    assert steps == {0, 2, 4}
    # the last step (5) is not sampled: 'toggle' switches collection on again at stop, and cuts
    # off what it records from then on
    late = rows(con, "SELECT count(*) FROM events WHERE run_id = ? AND ts_ns >= (SELECT max(ts_ns + duration_ns) "
                     "FROM steps WHERE run_id = ?)", [run, run])
    assert late == [(0,)]
    scoped = {s for (s,) in rows(con, "SELECT DISTINCT step FROM scopes WHERE run_id = ? AND kind != 'step'", [run])}
    assert scoped == {0, 2, 4}  # module hooks only on the profiled steps
    assert rows(con, "SELECT count(*) FROM steps WHERE run_id = ?", [run]) == [(6,)]
    assert cap.summary.faults == {}


def test_profiler_schedule_follows_the_sampled_steps():
    from torch.profiler import ProfilerAction as A

    from hybridscope.live.kernels import _schedule

    got = [_schedule(2, 5)(s) for s in range(11)]
    assert got == [A.RECORD, A.RECORD_AND_SAVE, A.NONE, A.NONE, A.WARMUP,
                   A.RECORD, A.RECORD_AND_SAVE, A.NONE, A.NONE, A.WARMUP, A.RECORD]
    assert [_schedule(1, 2)(s) for s in range(4)] == [A.RECORD_AND_SAVE, A.WARMUP, A.RECORD_AND_SAVE, A.WARMUP]


def test_default_sampling_per_mode(tmp_path):
    assert hybridscope.capture(db=tmp_path / "a.duckdb").window == (1, 8)
    assert hybridscope.capture(db=tmp_path / "a.duckdb", mode="kernels").window == (2, 64)
    assert hybridscope.capture(db=tmp_path / "a.duckdb", mode="kernels", sample_every=1).window == (1, 1)
    assert hybridscope.capture(db=tmp_path / "a.duckdb", sample_every=4, sample_steps=3).window == (3, 4)


def test_toggled_windows_stop_at_max_windows_and_count_the_rest(monkeypatch):
    from hybridscope.live import kernels

    monkeypatch.setattr(kernels, "WINDOW_STRATEGY", "toggle")
    calls = []

    class Profiler:  # stands in for torch.profiler.profile after start()
        def toggle_collection_dynamic(self, on, activities):
            calls.append(on)

    backend = kernels.KernelBackend(cuda=False, window=(1, 2), max_windows=2, faults=None)
    assert backend.strategy == "toggle"
    backend.prof, backend.collecting, backend.windows = Profiler(), True, 1  # as start() leaves it
    for step in range(1, 8):  # windows start at steps 0, 2, 4, 6; only two are allowed
        backend.step(step)
    assert calls == [False, True, False]
    assert (backend.windows, backend.dropped_windows, backend.collecting) == (2, 2, False)
