"""`layers` mode on CPU: scopes, per-layer exclusive times, steps, limits; the exclusive-time algebra."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from capture_models import (
    ENGINE_PATTERN,
    ToyModel,
    captured_engine_run,
    engine_tiny,
    latest_run,
    rows,
    run_engine,
)

import hybridscope
from hybridscope.errors import UsageError
from hybridscope.live.layers import exclusive_times

TYPES_BY_CHAR = {"M": {"mamba"}, "E": {"moe_router", "moe_experts"}, "*": {"attention"},
                 "P": {"mamba", "attention"}, "-": {"mlp"}}


def test_exclusive_times_by_hand():
    # instance 0 = [0, 100) holding 1 = [10, 40) and 2 = [50, 90); 2 holds 3 = [60, 70)
    t = np.array([0, 10, 40, 50, 60, 70, 90, 100])
    inst = np.array([0, 1, 1, 2, 3, 3, 2, 0])
    start = np.array([1, 1, 0, 1, 1, 0, 0, 0], bool)
    parent = np.array([-1, 0, 0, 2])
    ids, ts, excl, incl = exclusive_times(t, inst, start, parent)
    assert ids.tolist() == [0, 1, 2, 3]
    assert ts.tolist() == [0, 10, 50, 60]
    assert incl.tolist() == [100, 30, 40, 10]
    assert excl.tolist() == [100 - 30 - 40, 30, 40 - 10, 10]
    assert excl.sum() == incl[0]


def test_exclusive_times_drops_unclosed_instances():
    t = np.array([0, 5, 20])
    inst = np.array([0, 1, 0])
    start = np.array([1, 1, 0], bool)  # instance 1 never ended (dropped end mark)
    ids, _, excl, _ = exclusive_times(t, inst, start, np.array([-1, 0]))
    assert ids.tolist() == [0]
    assert excl.tolist() == [5]  # the 15 ns after 1 started belong to 1, which is left out


@pytest.fixture(scope="module")
def engine_run(tmp_path_factory):
    return captured_engine_run(tmp_path_factory, "layers")


def test_layers_mode_leaves_output_identical_and_reports(engine_run):
    _, reference, out, summary = engine_run
    assert out == reference
    assert summary.run_id == 1 and summary.faults == {} and not any(summary.drops.values())
    assert summary.steps == 3 and summary.layer_events > 0


def test_layer_rows_match_the_pattern(engine_run):
    con, run = latest_run(engine_run[0])
    got = rows(con, "SELECT layer_index, list(DISTINCT layer_type) FROM events WHERE run_id = ? "
                    "AND source = 'layer' AND layer_index IS NOT NULL GROUP BY 1", [run])
    found = {i: set(types) for i, types in got}
    assert sorted(found) == list(range(len(ENGINE_PATTERN)))
    for i, ch in enumerate(ENGINE_PATTERN):
        assert TYPES_BY_CHAR[ch] <= found[i], (i, ch, found[i])
    heads = {r[0] for r in rows(con, "SELECT DISTINCT layer_type FROM events WHERE run_id = ? AND "
                                     "source = 'layer' AND layer_index IS NULL", [run])}
    assert heads == {"embedding", "lm_head"}


def test_exclusive_rows_add_up_to_each_block(engine_run):
    """Per step and layer, the exclusive rows sum to the block's inclusive time exactly (CPU marks)."""
    con, run = latest_run(engine_run[0])
    blocks = rows(con, "SELECT step, layer_index, args FROM events WHERE run_id = ? AND source = 'layer' "
                       "AND name = 'HybridBlock' ORDER BY step, layer_index", [run])
    sums = {(s, i): v for s, i, v in rows(
        con, "SELECT step, layer_index, sum(duration_ns) FROM events WHERE run_id = ? AND source = 'layer' "
             "AND layer_index IS NOT NULL GROUP BY 1, 2", [run])}
    assert len(blocks) == 3 * len(ENGINE_PATTERN)
    for step, index, args in blocks:
        assert sums[(step, index)] == json.loads(args)["inclusive_ns"]


def test_steps_table_and_layer_time_within_steps(engine_run):
    con, run = latest_run(engine_run[0])
    steps = rows(con, "SELECT step, phase, n_tokens, n_requests, duration_ns FROM steps WHERE run_id = ? "
                      "ORDER BY step", [run])
    # 3 requests of 6 prompt tokens: one prefill step (18 tokens), then two dense decode steps over
    # slots 0..3 (the engine's batch bucket covering 3 requests: rows computed, padding included)
    assert [s[:4] for s in steps] == [(0, "prefill", 18, 3), (1, "decode", 4, 4), (2, "decode", 4, 4)]
    per_step = dict(rows(con, "SELECT step, sum(duration_ns) FROM events WHERE run_id = ? AND "
                              "source = 'layer' GROUP BY 1", [run]))
    for step, *_, duration in steps:
        assert 0 < per_step[step] <= duration
    phases = rows(con, "SELECT DISTINCT step, phase FROM events WHERE run_id = ? AND source = 'layer' "
                       "ORDER BY 1", [run])
    assert phases == [(0, "prefill"), (1, "decode"), (2, "decode")]
    metrics = dict(rows(con, "SELECT metric, count(*) FROM samples WHERE run_id = ? GROUP BY 1", [run]))
    assert metrics["step_ms"] == 3 and metrics["tokens_per_s"] == 3


def test_scopes_built_by_attribution(engine_run):
    con, run = latest_run(engine_run[0])
    n_layer = rows(con, "SELECT count(*) FROM events WHERE run_id = ? AND source = 'layer'", [run])[0][0]
    kinds = dict(rows(con, "SELECT kind, count(*) FROM scopes WHERE run_id = ? GROUP BY 1", [run]))
    assert kinds["step"] == 3
    assert sum(kinds.values()) - kinds["step"] == n_layer  # one scope per module call
    # every layer row points at its scope, which has the same module and index
    bad = rows(con, """SELECT count(*) FROM events e JOIN scopes s ON s.run_id = e.run_id AND s.scope_id = e.scope_id
                       WHERE e.run_id = ? AND e.source = 'layer'
                         AND (s.module_path <> e.module OR s.layer_index IS DISTINCT FROM e.layer_index)""", [run])
    assert bad == [(0,)]
    depth = rows(con, "SELECT max(depth) FROM scopes WHERE run_id = ? AND name LIKE 'Router:%'", [run])[0][0]
    assert depth == 2  # step > block > router (the MoE module is its block's only child: not hooked)


def test_explicit_steps_and_step_limit(tmp_path):
    model = engine_tiny()
    x = torch.arange(5)
    calls = []
    with hybridscope.capture(db=tmp_path / "a.duckdb", model=model.layers[0], mode="layers", sample_every=1,
                             quiet=True) as cap:
        from hybridscope.engine.model import Batch

        batch = Batch.packed([0], [0], [5], "cpu")
        cache = model.new_cache(1, 16)
        h = model.embed(x)
        for i in range(4):
            calls.append(model.layers[0](h, batch, cache))
            cap.step(n_tokens=5, phase="prefill", n_requests=1)
    con, run = latest_run(tmp_path / "a.duckdb")
    assert rows(con, "SELECT step, n_tokens, phase FROM steps WHERE run_id = ? ORDER BY step", [run]) == [
        (i, 5, "prefill") for i in range(4)]
    assert rows(con, "SELECT DISTINCT step FROM events WHERE run_id = ? AND source = 'layer' ORDER BY 1",
                [run]) == [(i,) for i in range(4)]


def test_steps_limit_stops_capture_and_workload_goes_on(tmp_path):
    model = ToyModel(torch.tensor([[0, 1]]), num_experts=2)
    with hybridscope.capture(db=tmp_path / "b.duckdb", model=model, steps=2, sample_every=1, quiet=True) as cap:
        ys = [model(torch.ones(1, 2)) for _ in range(5)]
        assert cap.summary is not None and cap.summary.steps == 2  # written at the limit, mid-run
    assert all(torch.equal(y, torch.full((1, 2), 2.0)) for y in ys)
    con, run = latest_run(tmp_path / "b.duckdb")
    assert rows(con, "SELECT count(*), max(step) FROM steps WHERE run_id = ?", [run]) == [(2, 1)]
    assert rows(con, "SELECT count(*) FROM routing WHERE run_id = ?", [run]) == [(4,)]  # 2 steps x 2 experts
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("kwargs", [{"mode": "fast"}, {"steps": 0}, {"duration": -1},
                                    {"sample_every": 2, "sample_steps": 3}, {"max_events": 0}])
def test_bad_arguments_raise_one_line_usage_errors(kwargs, tmp_path):
    with pytest.raises(UsageError) as e:
        hybridscope.capture(db=tmp_path / "x.duckdb", **kwargs)
    assert "\n" not in e.value.message


def test_not_a_module_is_a_usage_error(tmp_path):
    with pytest.raises(UsageError, match="torch.nn.Module"), \
            hybridscope.capture(db=tmp_path / "x.duckdb", model=object(), quiet=True):
        pass


class _FakeCuda:
    """Stand-in for torch.cuda: events stamped with a settable device clock (ns); `done` says
    up to which device time work has completed."""

    now = 0
    done = 0

    class Event:
        def __init__(self, enable_timing=True):
            self.t = None

        def record(self):
            self.t = _FakeCuda.now

        def query(self):
            return self.t <= _FakeCuda.done

        def elapsed_time(self, other):  # ms, as torch returns it
            return (other.t - self.t) / 1e6

    @staticmethod
    def synchronize():
        _FakeCuda.done = _FakeCuda.now


def test_cuda_timer_reads_back_lazily_chains_anchors_and_recycles_events():
    from types import SimpleNamespace

    from hybridscope.live.layers import CudaTimer

    fake = SimpleNamespace(cuda=_FakeCuda)
    _FakeCuda.now = _FakeCuda.done = 0
    timer = CudaTimer(capacity=8, torch=fake, pool=[])
    parent = np.array([-1, 0, -1, 2, -1, 4])
    marks = []  # (device ns, instance, is start): per step an outer instance holding an inner one
    for step in range(3):
        base = 1_000_000 * (step + 1)
        outer, inner = 2 * step, 2 * step + 1
        for dt, inst, start in ((0, outer, True), (100, inner, True), (400, inner, False), (1000, outer, False)):
            _FakeCuda.now = base + dt
            timer.mark(inst, start)
            marks.append((base + dt, inst, start))
        timer.step_boundary()
        got = timer.resolve(lambda: parent, final=False)
        if step == 0:
            assert got.inst == []  # under half the pool in use: no readback at all
    # step 2: 12 events live > 8 // 2, but the device has done nothing yet: nothing is read
    assert timer.n_live == 12 and got.inst == []
    _FakeCuda.done = 2_000_000 + 1000  # steps 0 and 1 complete
    got = timer.resolve(lambda: parent, final=False)
    assert np.concatenate(got.inst).tolist() == [0, 1, 2, 3]
    assert len(timer.pool) == 7 and timer.n_live == 5  # step 1's first event stays as the anchor
    rest = timer.resolve(lambda: parent, final=True)
    ts = np.concatenate(got.ts_ns + rest.ts_ns) - timer.ref_ns
    excl = np.concatenate(got.excl_ns + rest.excl_ns)
    assert ts.tolist() == [1_000_000, 1_000_100, 2_000_000, 2_000_100, 3_000_000, 3_000_100]
    assert excl.tolist() == [700, 300] * 3


# ------------------------------------------------------------------------------------------ sampling
def test_sampled_steps_only_get_hooks_scopes_and_routing(tmp_path):
    model = ToyModel(torch.tensor([[0, 1]]), num_experts=2)
    installed = []
    with hybridscope.capture(db=tmp_path / "s.duckdb", model=model, sample_every=3, quiet=True) as cap:
        for _ in range(7):
            model(torch.ones(1, 2))
            installed.append(bool(model.layers[0]._forward_pre_hooks))  # step just run: hooks still there
    assert installed == [i % 3 == 0 for i in range(7)]
    con, run = latest_run(tmp_path / "s.duckdb")
    assert rows(con, "SELECT step, sampled FROM steps WHERE run_id = ? ORDER BY step", [run]) == [
        (i, i % 3 == 0) for i in range(7)]
    for sql in ("SELECT DISTINCT step FROM events WHERE run_id = ? AND source = 'layer' ORDER BY 1",
                "SELECT DISTINCT step FROM routing WHERE run_id = ? ORDER BY 1",
                "SELECT DISTINCT step FROM scopes WHERE run_id = ? AND kind <> 'step' ORDER BY 1"):
        assert rows(con, sql, [run]) == [(0,), (3,), (6,)], sql
    note = json.loads(rows(con, "SELECT notes->'$.ranks.\"0\".sampling' FROM runs WHERE run_id = ?", [run])[0][0])
    assert note["sample_every"] == 3 and note["sample_steps"] == 1
    assert note["steps"] == 7 and note["sampled_steps"] == 3 and note["hook_installs"] == 3
    assert cap.summary.lines()[1].startswith("  7 steps (3 recorded in full: 1 of every 3), ")
    assert cap.summary.faults == {}
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in model.modules())


def test_default_sampling_records_the_first_step_of_a_short_run(tmp_path):
    model = engine_tiny()
    with hybridscope.capture(db=tmp_path / "d.duckdb", model=model, quiet=True):
        run_engine(model)
    con, run = latest_run(tmp_path / "d.duckdb")
    assert rows(con, "SELECT count(*), count(*) FILTER (WHERE sampled) FROM steps WHERE run_id = ?", [run]) == [(3, 1)]
    types = {t for (t,) in rows(con, "SELECT DISTINCT layer_type FROM events WHERE run_id = ? AND source = 'layer' "
                                     "AND step = 0", [run])}
    assert {"mamba", "attention", "moe_router", "moe_experts", "mlp"} <= types
    assert rows(con, "SELECT count(*) FROM events WHERE run_id = ? AND source = 'layer' AND step > 0", [run]) == [(0,)]


def test_plan_leaves_out_a_blocks_only_strong_child():
    from hybridscope.live.hooks import plan

    model = engine_tiny()
    pruned = {s.path for s, _ in plan(model)}
    full = {s.path for s, _ in plan(model, prune=False)}
    assert full - pruned == {"layers.0.mixer", "layers.1.moe", "layers.2.mixer", "layers.3.moe", "layers.4.mixer",
                             "layers.6.mixer", "layers.7.moe"}
    assert {"layers.4.mixer.attn", "layers.4.mixer.mamba", "layers.5.mlp"} <= pruned  # two strong halves stay
    types = {s.path: s.layer_type for s, _ in plan(model)}
    assert types["layers.0"] == "mamba" and types["layers.2"] == "attention" and types["layers.1"] == "moe_experts"
