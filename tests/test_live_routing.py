"""MoE routing counts: hand-written router ids, the engine's router, ids out of range."""

from __future__ import annotations

import numpy as np
import torch
from capture_models import ToyModel, engine_tiny, latest_run, rows, run_engine

import hybridscope
from hybridscope.live.routing import topk_ids


def test_counts_equal_a_hand_computed_bincount(tmp_path):
    ids = torch.tensor([[0, 2], [2, 3], [2, 0]])  # expert 0: 2 tokens, 1: 0, 2: 3, 3: 1
    model = ToyModel(ids, num_experts=4)
    with hybridscope.capture(db=tmp_path / "r.duckdb", model=model, sample_every=1, quiet=True):
        for _ in range(3):
            model(torch.ones(3, 2))
    con, run = latest_run(tmp_path / "r.duckdb")
    got = rows(con, "SELECT step, layer_index, list(tokens ORDER BY expert) FROM routing WHERE run_id = ? "
                    "GROUP BY 1, 2 ORDER BY 1", [run])
    assert got == [(s, 0, [2, 0, 3, 1]) for s in range(3)]


def test_ids_out_of_range_are_counted_apart_not_fatal(tmp_path):
    ids = torch.tensor([[0, 7], [-1, 1]])  # 7 and -1 are not experts of a 4-expert router
    model = ToyModel(ids, num_experts=4)
    with hybridscope.capture(db=tmp_path / "o.duckdb", model=model, quiet=True) as cap:
        model(torch.ones(2, 2))
    con, run = latest_run(tmp_path / "o.duckdb")
    assert rows(con, "SELECT list(tokens ORDER BY expert) FROM routing WHERE run_id = ?", [run]) == [([1, 1, 0, 0],)]
    notes = rows(con, "SELECT notes->'$.ranks.\"0\".routing_out_of_range' FROM runs WHERE run_id = ?", [run])
    assert notes == [("2",)]
    assert cap.summary.faults == {}


def test_engine_router_counts_match_its_outputs(tmp_path):
    """Each (step, MoE layer) row equals np.bincount of the ids the router returned in that step."""
    model = engine_tiny()
    seen: dict[tuple[int, int], np.ndarray] = {}
    step = [-1]

    def count_step(module, args):
        step[0] += 1

    def record(layer):
        def hook(module, args, out):
            key = (step[0], layer)
            seen[key] = np.bincount(out.ids.reshape(-1).numpy(), minlength=8)
        return hook

    for i, block in enumerate(model.layers):
        if hasattr(block, "moe"):
            block.moe.router.register_forward_hook(record(i))
    model.register_forward_pre_hook(count_step)
    with hybridscope.capture(db=tmp_path / "e.duckdb", model=model, sample_every=1, quiet=True):
        run_engine(model)
    con, run = latest_run(tmp_path / "e.duckdb")
    got = {(s, layer): np.array(t) for s, layer, t in rows(
        con, "SELECT step, layer_index, list(tokens ORDER BY expert) FROM routing WHERE run_id = ? GROUP BY 1, 2",
        [run])}
    assert set(got) == set(seen) and len(got) == 3 * 3  # 3 steps x MoE layers 1, 3, 7
    for key, counts in seen.items():
        np.testing.assert_array_equal(got[key], counts)


def test_topk_ids_finds_the_integer_tensor():
    ids = torch.tensor([[1, 2]])
    assert topk_ids((torch.zeros(1, 2), ids)) is ids
    assert topk_ids({"weights": torch.zeros(1), "ids": ids}) is ids
    assert topk_ids(torch.zeros(2, dtype=torch.bool)) is None
    assert topk_ids(torch.zeros(2)) is None


def test_counts_survive_full_blocks_and_mixed_widths():
    from hybridscope.live.hooks import Spec
    from hybridscope.live.routing import Routing

    r = Routing(capacity=100, batch=2)
    wide = Spec(0, "layers.0.router", "Router", "router", "moe_router", 0, None, n_experts=4)
    narrow = Spec(1, "layers.1.router", "Router", "router", "moe_router", 1, None, n_experts=2)
    for step in range(5):  # 5 rows in blocks of 2 for one width, interleaved with another width
        r.add(step, wide, torch.tensor([[step % 4, 3]]))
        r.add(step, narrow, torch.tensor([[1, 1, 0]], dtype=torch.int32))
    cols = r.columns(rank=0)
    got = {}
    for s, layer, e, t in zip(cols["step"], cols["layer_index"], cols["expert"], cols["tokens"]):
        got.setdefault((int(s), int(layer)), []).append((int(e), int(t)))
    for step in range(5):
        expected = [0, 0, 0, 1]
        expected[step % 4] += 1
        assert sorted(got[(step, 0)]) == list(enumerate(expected))
        assert sorted(got[(step, 1)]) == [(0, 1), (1, 2)]
    assert r.out_of_range == 0 and r.n_rows == 10


def test_held_ids_of_a_graph_replay_count_like_router_calls():
    """Routing.add_held (the routers of one timed CUDA-graph replay, live.graphs) counts several
    routers with one scatter: the same rows as one `add` per router, ids out of range apart."""
    from hybridscope.live.hooks import Spec
    from hybridscope.live.routing import Routing

    specs = [Spec(i, f"layers.{i}.router", "Router", "router", "moe_router", i, None, n_experts=4) for i in (1, 3, 5)]
    narrow = Spec(7, "layers.7.router", "Router", "router", "moe_router", 7, None, n_experts=2)
    ids = [torch.tensor([[0, 2], [2, 3]]), torch.tensor([[1, 1], [1, 9]]), torch.tensor([[3, 0], [-2, 0]])]
    held = [*zip(specs, ids), (narrow, torch.tensor([1, 0, 1], dtype=torch.int32))]
    r = Routing(capacity=100, batch=5)  # 3 rows then 1: the next replay's 3 rows do not fit a block of 5
    r.add_held(4, held)
    r.add_held(5, held[:3])
    cols = r.columns(rank=0)
    got: dict = {}
    for s, layer, e, t in zip(cols["step"], cols["layer_index"], cols["expert"], cols["tokens"]):
        got.setdefault((int(s), int(layer)), [0] * (4 if layer != 7 else 2))[int(e)] = int(t)
    expect = {1: [1, 0, 2, 1], 3: [0, 3, 0, 0], 5: [2, 0, 0, 1]}  # 9 and -2: out of range
    assert got == {**{(4, k): v for k, v in expect.items()}, (4, 7): [1, 2], **{(5, k): v for k, v in expect.items()}}
    assert r.out_of_range == 4 and r.n_rows == 7


def test_held_ids_past_capacity_are_dropped_and_counted():
    from hybridscope.live.hooks import Spec
    from hybridscope.live.routing import Routing

    specs = [Spec(i, f"r{i}", "Router", "router", "moe_router", i, None, n_experts=2) for i in range(3)]
    r = Routing(capacity=4, batch=8)
    held = [(s, torch.tensor([0, 1])) for s in specs]
    r.add_held(0, held)
    r.add_held(1, held)  # 3 rows more than the 1 left: all 3 dropped
    assert r.n_rows == 3 and r.drops == 3
    assert sorted(set(r.columns(rank=0)["step"].tolist())) == [0]


def test_prewarmed_blocks_take_the_first_rows():
    """Blocks allocated at arm (`prewarm`) are the ones the first router calls write into."""
    from hybridscope.live.hooks import Spec
    from hybridscope.live.routing import Routing

    r = Routing(capacity=10, batch=4)
    dev = torch.device("cpu")
    r.prewarm(dev, [4])  # 4 experts: rows of 6 bins
    block = r.blocks[(dev, 6)][0]
    spec = Spec(0, "layers.0.router", "Router", "router", "moe_router", 0, None, n_experts=4)
    r.add(0, spec, torch.tensor([[1, 3]]))
    assert r.blocks[(dev, 6)][0] is block and block[0].tolist() == [0, 0, 1, 0, 1, 0]
    assert r.columns(rank=0)["tokens"].tolist() == [0, 1, 0, 1]
