"""live.graphs on the CPU with a fake CUDA (events on a fake clock, graphs that re-record their
events at each replay): replays as steps, the instrumented variant and inline timing, what is
counted when a graph cannot be instrumented. The real thing runs in test_live_graphs_gpu.py (GPU)."""

from __future__ import annotations

import json

import pytest
import torch
from capture_models import latest_run, rows
from test_live_graphs_gpu import ToyModel

import hybridscope
from hybridscope.live import arm

TICK = 1_000  # ns between two consecutive event records on the fake device


class Clock:
    t = 0

    @classmethod
    def tick(cls) -> int:
        cls.t += TICK
        return cls.t


class FakeEvent:
    def __init__(self, enable_timing=False, blocking=False, interprocess=False, external=False):
        self.t = None

    def record(self, stream=None):
        if FakeGraph.capturing is not None:
            FakeGraph.capturing.events.append(self)  # recorded at each replay
        else:
            self.t = Clock.tick()

    def query(self):
        return True

    def synchronize(self):
        return None

    def elapsed_time(self, end) -> float:
        return (end.t - self.t) / 1e6


class FakeGraph:
    capturing = None

    def __init__(self, *a, **kw):
        self.events: list = []
        self.replays = 0

    def capture_begin(self, pool=None, capture_error_mode="global"):
        FakeGraph.capturing = self

    def capture_end(self):
        FakeGraph.capturing = None

    def replay(self):
        self.replays += 1
        for ev in self.events:
            ev.t = Clock.tick()


class fake_graph:  # torch.cuda.graph is a lower-case class too
    def __init__(self, graph, pool=None, stream=None, **kw):
        self.graph, self.pool = graph, pool

    def __enter__(self):
        self.graph.capture_begin(*((self.pool,) if self.pool is not None else ()))

    def __exit__(self, *exc):
        self.graph.capture_end()


class FakeDevice:
    type, index = "cuda", 0


@pytest.fixture
def fake_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "Event", FakeEvent)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", FakeGraph)
    monkeypatch.setattr(torch.cuda, "graph", fake_graph)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a, **k: None)
    monkeypatch.setattr(arm, "_device_of", lambda model: FakeDevice())
    monkeypatch.setattr(arm.Armed, "_uuids", lambda self: None)
    monkeypatch.setattr(arm.Armed, "_device_name", lambda self: "fake GPU")
    monkeypatch.setattr(arm.Routing, "prewarm", lambda self, device, n_experts: None)  # no blocks on a fake device
    from hybridscope.live import layers

    monkeypatch.setattr(layers, "SHARED_POOL", [])
    monkeypatch.setattr(layers, "_fast_record", lambda torch, probe: None)
    FakeGraph.capturing = None
    yield


def _captured(tmp_path, name, body, **kw):
    model = ToyModel(d=8)
    x = torch.randn(2, 8)
    db = tmp_path / f"{name}.duckdb"
    with torch.no_grad(), hybridscope.capture(db=db, model=model, quiet=True, **kw) as cap:
        graph = torch.cuda.CUDAGraph()
        out = body(model, x, graph)
    con, run = latest_run(db)
    note = json.loads(rows(con, "SELECT notes->'$.ranks.\"0\".cuda_graphs' FROM runs WHERE run_id = ?", [run])[0][0])
    return cap.summary, con, run, note, graph, out, model, x


def _model_only(replays):
    def body(model, x, graph):
        with torch.cuda.graph(graph):
            out = model(x)
        for _ in range(replays):
            graph.replay()
        return out
    return body


def test_variant_replayed_one_step_in_n_and_timed_per_block(fake_cuda, tmp_path):
    summary, con, run, note, graph, out, model, x = _captured(tmp_path, "v", _model_only(6), graph_every=3)
    assert summary.faults == {}, summary.faults
    assert note["instrumented"] == 1 and note["replays"] == 6 and note["timed_replays"] == 2
    assert note["events_per_timed_replay"] == {"1": 4}  # 3 blocks: one event per boundary
    assert graph.replays == 4  # the other two ran the variant
    torch.testing.assert_close(out, model(x))  # the variant wrote the program's output tensor
    assert rows(con, "SELECT step, sampled, graph_replay FROM steps WHERE run_id = ? ORDER BY step", [run]) == [
        (s, s % 3 == 0, True) for s in range(6)]
    layer = rows(con, "SELECT step, module, duration_ns, graph_id, args->>'$.replay' FROM events "
                      "WHERE run_id = ? AND source = 'layer' ORDER BY step, ts_ns", [run])
    # blocks only (graph_marks='blocks'): start and end of each block one tick apart
    assert layer == [(s, f"layers.{i}", TICK, 1, "true") for s in (0, 3) for i in range(3)]


def test_inline_times_every_replay_with_every_module(fake_cuda, tmp_path):
    summary, con, run, note, graph, *_ = _captured(tmp_path, "i", _model_only(3), graph_timing="inline",
                                                    graph_marks="all")
    assert summary.faults == {} and graph.replays == 3 and note["timed_replays"] == 3
    assert note["events_per_timed_replay"] == {"1": 6}  # 'all': a start and an end event per module
    per = rows(con, "SELECT step, module, duration_ns FROM events WHERE run_id = ? AND source = 'layer' "
                    "ORDER BY step, ts_ns", [run])
    # layers mode hooks a block, not its only mixer (hooks.plan): one tick per block, every replay
    assert per == [(s, f"layers.{i}", TICK) for s in range(3) for i in range(3)]


def test_a_capture_with_work_beside_the_model_call_is_not_instrumented(fake_cuda, tmp_path):
    def body(model, x, graph):
        with torch.cuda.graph(graph):
            out = model(x) * 2  # work after the model call: a variant would leave it out
        for _ in range(4):
            graph.replay()
        return out

    summary, con, run, note, graph, *_ = _captured(tmp_path, "o", body, graph_every=2)
    assert summary.faults == {}
    assert note["instrumented"] == 0 and graph.replays == 4
    assert list(note["not_instrumented"]) == ["1 tensor ops in the capture outside the model call (mul.Tensor)"]
    assert rows(con, "SELECT count(*) FROM events WHERE run_id = ? AND source = 'layer'", [run]) == [(0,)]


def test_graphs_captured_before_arming_are_counted(fake_cuda, tmp_path):
    model, x = ToyModel(d=8), torch.randn(2, 8)
    graph = torch.cuda.CUDAGraph()
    with torch.no_grad(), torch.cuda.graph(graph):
        model(x)
    with hybridscope.capture(db=tmp_path / "b.duckdb", model=model, quiet=True):
        for _ in range(3):
            graph.replay()
    con, run = latest_run(tmp_path / "b.duckdb")
    note = json.loads(rows(con, "SELECT notes->'$.ranks.\"0\".cuda_graphs' FROM runs WHERE run_id = ?", [run])[0][0])
    assert note["graphs_captured_before_arming"] == 1 and note["replays_of_graphs_captured_before_arming"] == 3
    assert rows(con, "SELECT count(*) FROM steps WHERE run_id = ? AND graph_replay AND NOT sampled", [run]) == [(3,)]
    assert torch.cuda.CUDAGraph.replay is FakeGraph.__dict__["replay"]  # disarmed: the class is as it was


def test_a_variant_that_fails_to_replay_is_dropped_and_the_program_graph_runs(fake_cuda, tmp_path, monkeypatch):
    calls = {"n": 0}
    plain = FakeGraph.replay

    def flaky(self):
        calls["n"] += 1
        if len(self.events) and calls["n"] == 1:  # the variant (it holds the events): fails once
            raise RuntimeError("replay failed")
        plain(self)

    monkeypatch.setattr(FakeGraph, "replay", flaky)
    summary, con, run, note, graph, out, model, x = _captured(tmp_path, "f", _model_only(4), graph_every=2)
    assert graph.replays == 4 and note["instrumented"] == 0
    assert note["not_instrumented"] == {"variant replay failed: RuntimeError": 1}
    assert summary.faults["graphs.variant_replay"]["count"] == 1
    assert rows(con, "SELECT count(*) FROM events WHERE run_id = ? AND source = 'layer'", [run]) == [(0,)]
    torch.testing.assert_close(out, model(x))


def test_steps_that_capture_a_graph_are_warm_up_wherever_they_fall(fake_cuda, tmp_path):
    """An engine captures a graph per batch shape when it first meets it (an eager call, then the
    capture), mid-run too: those steps are noted and the warm-up rule leaves them out."""
    from hybridscope.analyze import steps, warmup
    from hybridscope.analyze.decompose import decompose

    def body(model, x, graph):
        for _ in range(8):
            model(x)
        for g in (graph, torch.cuda.CUDAGraph()):
            model(x)  # the engine's eager call before it captures
            with torch.cuda.graph(g):
                out = model(x)
            for _ in range(6):
                g.replay()
        return out

    summary, con, run, note, *_ = _captured(tmp_path, "w", body, graph_every=2, sample_every=1)
    assert summary.faults == {}
    assert note["capture_steps"] == [8, 15]
    assert rows(con, "SELECT step FROM steps WHERE run_id = ? AND NOT graph_replay ORDER BY step", [run]) == [
        (s,) for s in range(9)] + [(15,)]
    wu = warmup.detect(con, run)
    assert wu.steps[0] <= 11  # the prefix rule: within the first half of the 22 steps
    assert wu.graph_steps == tuple((0, s) for s in (8, 15) if s >= wu.steps[0])
    step15 = set(rows(con, "SELECT rank, event_id FROM events WHERE run_id = ? AND source = 'layer' AND step = 15",
                      [run]))
    assert len(step15) == 3 and step15 <= set(wu.first)
    kept, n_warm = steps.steady_windows(con, run)
    assert 15 not in {w["step"] for w in kept} and n_warm == wu.steps[0] + len(wu.graph_steps)
    table = decompose(con, run)
    assert table.meta["warmup"]["graph_capture_steps"] == len(wu.graph_steps)
    assert "CUDA-graph capture step(s)" in " ".join(table.meta["notes"])
    # --warmup N: exactly the first N steps, no capture step
    assert warmup.detect(con, run, warmup=2).graph_steps == ()


def _routed(tmp_path, name, model, ids_per_replay, **kw):
    """Capture `model` in a fake graph, then replay it once per entry of `ids_per_replay`, writing
    those ids into the router's tensor first (what a real replay does to the graph's memory)."""
    x = torch.randn(2, 8)
    db = tmp_path / f"{name}.duckdb"
    routers = [m for m in model.modules() if hasattr(m, "num_experts")]
    with torch.no_grad(), hybridscope.capture(db=db, model=model, quiet=True, **kw) as cap:
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            model(x)
        for ids in ids_per_replay:
            routers[0].ids.copy_(torch.tensor(ids))
            graph.replay()
    con, run = latest_run(db)
    note = json.loads(rows(con, "SELECT notes->'$.ranks.\"0\".cuda_graphs' FROM runs WHERE run_id = ?", [run])[0][0])
    got = rows(con, "SELECT step, layer_index, list(tokens ORDER BY expert) FROM routing WHERE run_id = ? "
                    "GROUP BY 1, 2 ORDER BY 1, 2", [run])
    return cap.summary, note, got


def test_timed_replays_count_the_ids_their_routers_wrote(fake_cuda, tmp_path):
    from capture_models import ToyModel as RoutedModel

    per_replay = [[[0, 1], [1, 2]], [[2, 2], [2, 2]], [[3, 0], [0, 0]], [[1, 1], [3, 3]], [[0, 3], [2, 1]]]
    model = RoutedModel(torch.tensor([[0, 0], [0, 0]]), num_experts=4)
    summary, note, got = _routed(tmp_path, "r", model, per_replay, graph_every=2)
    assert summary.faults == {}, summary.faults
    assert note["routers_per_timed_replay"] == {"1": 1} and note["routing_not_counted"] == {}
    # steps 0, 2, 4 ran the variant: each counts the ids of its own replay, nothing else is counted
    assert got == [(0, 0, [1, 2, 1, 0]), (2, 0, [3, 0, 0, 1]), (4, 0, [1, 1, 1, 1])]


def test_routers_writing_one_workspace_are_not_counted(fake_cuda, tmp_path):
    from capture_models import ToyBlock

    class TwoRouters(torch.nn.Module):
        def __init__(self, ids):
            super().__init__()
            self.layers = torch.nn.ModuleList([ToyBlock(ids, 4), ToyBlock(ids, 4)])  # one tensor, both routers

        def forward(self, x):
            return self.layers[1](self.layers[0](x))

    summary, note, got = _routed(tmp_path, "w", TwoRouters(torch.tensor([[0, 1]])), [[[1, 2]]] * 3, graph_every=1)
    assert summary.faults == {} and got == []
    assert note["timed_replays"] == 3 and note["routers_per_timed_replay"] == {}
    assert note["routing_not_counted"] == {"1": "the routers' expert ids share memory (a workspace)"}
