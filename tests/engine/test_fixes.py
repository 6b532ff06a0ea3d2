"""The engine fixes (docs/engine.md, "Fixes"): each knob's mechanism, on CPU.

- route_imbalance_cap: no expert takes more than cap_rows of a call's rows; moved rows go to the
  token's best expert with room; weights follow the final choice; the re-routed share is counted.
- a2a_separate_streams: under expert parallelism (2 gloo ranks) no two all-to-alls that can be in
  flight together share a communicator, and the outputs equal the single-communicator run.
- capacity_overrides per (layer, expert): honoured in that layer only.
"""

from __future__ import annotations

import itertools
import os

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hybridscope.demo import free_port
from hybridscope.engine.config import EngineConfig, load_fixes
from hybridscope.engine.model import Batch, build_model
from hybridscope.engine.moe import MoE, cap_choices, cap_rows, moe_ref


def tokens(T: int, d: int = 64, seed: int = 1) -> torch.Tensor:
    return torch.randn(T, d, generator=torch.Generator().manual_seed(seed))


def make_moe(**overrides) -> MoE:
    return build_model(EngineConfig.from_preset("tiny", pattern="E", **overrides)).layers[0].moe


def test_cap_rows_is_floor_of_cap_times_mean_never_below_even_share():
    assert cap_rows(80, 8, 1.5) == 15  # mean 10
    assert cap_rows(80, 8, 1.0) == 10
    assert cap_rows(6, 8, 1.5) == 1  # mean 0.75: the even share ceil(0.75) = 1 wins
    assert cap_rows(12, 8, 2.0) == 3  # floor(2 * 1.5)


def test_cap_choices_hand_computed():
    # 4 tokens, k=1, 3 experts, cap 2: everyone prefers expert 0; the latest two tokens move.
    sel = torch.tensor([[0.9, 0.5, 0.1],
                        [0.9, 0.1, 0.5],
                        [0.9, 0.5, 0.1],   # second choice 1
                        [0.9, 0.1, 0.5]])  # second choice 2
    ids = torch.tensor([[0], [0], [0], [0]])
    out, moved = cap_choices(sel, ids, cap=2)
    assert out.flatten().tolist() == [0, 0, 1, 2]
    assert int(moved) == 2


def test_cap_choices_second_choice_that_fills_moves_on_to_the_third():
    # cap 1, k=1: the latest row at expert 0 (token 1) moves; its second choice (1) is full, so 2.
    sel = torch.tensor([[0.9, 0.8, 0.1],
                        [0.9, 0.8, 0.1],
                        [0.1, 0.9, 0.8]])
    ids = torch.tensor([[0], [0], [1]])
    out, _ = cap_choices(sel, ids, cap=1)
    counts = torch.bincount(out.flatten(), minlength=3)
    assert counts.max() == 1 and sorted(out.flatten().tolist()) == [0, 1, 2]
    assert out[0, 0] == 0  # the earliest token keeps its choice


@pytest.mark.parametrize("router", ["sigmoid", "softmax"])
@pytest.mark.parametrize("cap", [1.0, 1.25, 2.0])
def test_imbalance_capped_at_threshold(router, cap):
    moe = make_moe(router=router, skew=3.0, skew_experts=(0, 1), route_imbalance_cap=cap)
    T, k, E = 64, moe.top_k, moe.n_experts
    x = tokens(T)
    r = moe.router(x)
    load = torch.bincount(r.ids.flatten(), minlength=E)
    assert int(load.max()) <= cap_rows(T * k, E, cap)
    assert float(load.max()) / (T * k / E) <= cap + 1e-9
    assert torch.equal(moe.router.load.long(), load)  # load follows the final choice (dispatch reads it)
    # every token still has k distinct experts
    assert all(len(set(row)) == k for row in r.ids.tolist())
    # and the skew really was there: without the cap, the hot experts take far more
    free = make_moe(router=router, skew=3.0, skew_experts=(0, 1))
    assert float(torch.bincount(free.router(x).ids.flatten(), minlength=E).max()) / (T * k / E) > cap
    assert 0 < int(moe.router.rerouted_rows) <= T * k and int(moe.router.routed_rows) == T * k


def test_capped_moe_equals_reference_and_weights_follow_the_choice():
    moe = make_moe(router="softmax", norm_topk=True, skew=3.0, skew_experts=(0,), route_imbalance_cap=1.5)
    x = tokens(40)
    torch.testing.assert_close(moe(x), moe_ref(moe, x), rtol=1e-4, atol=1e-5)
    r = moe.router(x)
    probs = r.logits.softmax(-1).gather(1, r.ids)
    torch.testing.assert_close(r.weights, probs / probs.sum(-1, keepdim=True))


@pytest.mark.parametrize("router", ["sigmoid", "softmax"])
def test_a_call_under_the_cap_keeps_its_routing_exactly(router):
    # no skew: the call's imbalance is under a cap of 3, so the capped router returns what the
    # router without a cap returns, bit for bit, and re-routes nothing
    x = tokens(48)
    capped, free = make_moe(router=router, route_imbalance_cap=3.0), make_moe(router=router)
    r, f = capped.router(x), free.router(x)
    assert not capped.router.over_cap(r.ids)
    assert torch.equal(r.ids, f.ids) and torch.equal(r.weights, f.weights)
    assert int(capped.router.rerouted_rows) == 0 and int(capped.router.routed_rows) == r.ids.numel()
    # the same call with the cap at 1 (an even share): random routing is over it, so the cap's passes
    # run and move rows
    tight = make_moe(router=router, route_imbalance_cap=1.0)
    t = tight.router(x)
    assert int(torch.bincount(f.ids.flatten()).max()) > cap_rows(f.ids.numel(), tight.n_experts, 1.0)
    assert int(tight.router.rerouted_rows) > 0 and tight.router.over_cap(f.ids) is False  # load now capped
    assert int(torch.bincount(t.ids.flatten()).max()) <= cap_rows(t.ids.numel(), tight.n_experts, 1.0)


def test_no_cap_leaves_routing_untouched():
    moe = make_moe(skew=3.0, skew_experts=(0,))
    moe.router(tokens(32))
    assert int(moe.router.rerouted_rows) == 0 and int(moe.router.routed_rows) == 64


def test_capacity_override_per_layer_and_expert():
    cfg = EngineConfig.from_preset("tiny", pattern="EE", capacity_overrides={(1, 3): 0.5})
    model = build_model(cfg)
    first, second = (blk.moe for blk in model.layers)
    assert float(first.capacity_factors.sum()) == 0.0 and not first.drops
    assert second.drops and second.capacity_factors.tolist() == [0, 0, 0, 0.5, 0, 0, 0, 0]
    x = tokens(40)
    second.router(x)
    load = second.router.load.long()
    second(x)
    assert int(second.dropped) == max(0, int(load[3]) - 5)  # ceil(0.5 * 80 / 8) = 5 rows for expert 3 only
    torch.testing.assert_close(second(x), moe_ref(second, x), rtol=1e-4, atol=1e-5)


def test_fixes_file_round_trip(tmp_path):
    f = tmp_path / "fixes.toml"
    f.write_text('[engine]\nroute_imbalance_cap = 1.75\na2a_separate_streams = true\n'
                 '[engine.capacity_overrides]\n"3/0" = 2.5\n"1" = 1.5\n')
    fx = load_fixes(f)
    assert fx == {"route_imbalance_cap": 1.75, "a2a_separate_streams": True,
                  "capacity_overrides": {(3, 0): 2.5, 1: 1.5}}
    cfg = EngineConfig.from_preset("tiny", **fx)
    assert cfg.capacity_for_layer(3) == {1: 1.5, 0: 2.5} and cfg.capacity_for_layer(1) == {1: 1.5}


@pytest.mark.parametrize("text,msg", [("[engine]\nwarp = 1\n", "unknown engine knobs"),
                                      ('[engine.capacity_overrides]\n"a/b" = 1\n', "not 'LAYER/EXPERT'"),
                                      ("[engine\n", "cannot read")])
def test_fixes_file_errors_are_one_line(tmp_path, text, msg):
    f = tmp_path / "fixes.toml"
    f.write_text(text)
    with pytest.raises(ValueError, match=msg):
        load_fixes(f)


def test_bad_cap_refused():
    with pytest.raises(ValueError, match="route_imbalance_cap"):
        EngineConfig.from_preset("tiny", route_imbalance_cap=0.5)


# --- separate communicators under expert parallelism (2 gloo ranks) ---------------------------------

WORLD = 2



def _worker(rank: int, port: int, out_dir: str) -> None:
    from hybridscope.engine.ep import AllToAllCombine, AllToAllDispatch, AllToAllWait, apply_ep

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        res = {}
        ids = torch.randint(0, 256, (2, 16), generator=torch.Generator().manual_seed(rank))
        for separate in (False, True):
            cfg = EngineConfig.from_preset("tiny", skew=1.0, skew_experts=(1,), a2a_separate_streams=separate)
            model = apply_ep(build_model(cfg))
            order: list = []  # (module, group) in call order
            waits: list = []

            def record(mod, args, output, name, order=order):
                order.append((name, id(mod.group)))

            for name, m in model.named_modules():
                if isinstance(m, (AllToAllDispatch, AllToAllCombine)):
                    m.register_forward_hook(lambda mod, a, o, name=name: record(mod, a, o, name))
                if isinstance(m, AllToAllWait):  # overlapped dispatch: its wait between dispatch and combine
                    m.register_forward_hook(lambda mod, a, o, name=name, waits=waits: waits.append(name))
            out = model(ids.reshape(-1), Batch.packed([0, 1], [0, 0], [16, 16], "cpu"), model.new_cache())
            res[separate] = {"out": out, "order": order, "waits": waits}
        torch.save(res, os.path.join(out_dir, f"r{rank}.pt"))
    finally:
        dist.destroy_process_group()


def test_separate_streams_no_two_consecutive_all_to_alls_share_a_communicator(tmp_path):
    """And the overlapped dispatch (shared expert while the rows travel) gives the same outputs."""
    mp.start_processes(_worker, args=(free_port(), str(tmp_path)), nprocs=WORLD, join=True, start_method="fork")
    for r in range(WORLD):
        res = torch.load(tmp_path / f"r{r}.pt")
        one, sep = res[False]["order"], res[True]["order"]
        assert len(one) == len(sep) == 2 * EngineConfig.from_preset("tiny").count("E")
        assert len({g for _, g in one}) == 1  # the default: every all-to-all on one communicator
        groups = [g for _, g in sep]
        assert all(a != b for a, b in itertools.pairwise(groups))  # never two in a row on one communicator
        assert len(set(groups)) == 4
        # the dispatch overlapped with the shared expert: one wait per MoE layer, none without the fix
        assert len(res[True]["waits"]) == len(sep) // 2 and res[False]["waits"] == []
        torch.testing.assert_close(res[True]["out"], res[False]["out"], rtol=1e-5, atol=1e-6)
