"""MoE: grouped compute against the naive per-expert loop, capacity dropping, skew, penalty hook."""

from __future__ import annotations

import pytest
import torch

from hybridscope.engine.config import EngineConfig
from hybridscope.engine.model import build_model
from hybridscope.engine.moe import MoE, Routing, moe_ref


def make_moe(seed: int = 0, **overrides) -> MoE:
    cfg = EngineConfig.from_preset("tiny", pattern="E", seed=seed, **overrides)
    return build_model(cfg).layers[0].moe


def tokens(T: int, d: int = 64, seed: int = 1) -> torch.Tensor:
    return torch.randn(T, d, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"router": "softmax", "norm_topk": False},
        {"activation": "swiglu", "d_shared": 0},
        {"top_k": 3, "routed_scale": 2.5},
    ],
)
def test_grouped_equals_naive_loop(overrides):
    moe = make_moe(**overrides)
    x = tokens(37)
    torch.testing.assert_close(moe(x), moe_ref(moe, x), rtol=1e-4, atol=1e-5)


def test_capacity_drops_count_and_match_reference():
    moe = make_moe(capacity_factor=0.5)  # capacity = ceil(0.5 * 40 * 2 / 8) = 5 rows per expert
    x = tokens(40)
    out = moe(x)
    load = moe.router.load.long()
    expected_dropped = int((load - load.clamp(max=5)).sum())
    assert expected_dropped > 0
    assert int(moe.dropped) == expected_dropped
    torch.testing.assert_close(out, moe_ref(moe, x), rtol=1e-4, atol=1e-5)


def test_per_expert_capacity_override_drops_only_that_expert():
    moe = make_moe()
    x = tokens(40)
    moe(x)
    load = moe.router.load.long()
    hot = int(load.argmax())
    moe.set_capacity(None, {hot: 0.5})  # only the busiest expert is capped, at 5 rows
    out = moe(x)
    assert int(moe.dropped) == int(load[hot]) - 5
    torch.testing.assert_close(out, moe_ref(moe, x), rtol=1e-4, atol=1e-5)


def test_dropped_token_keeps_only_shared_and_other_experts():
    moe = make_moe(top_k=1, d_shared=0, capacity_factor=1.0)  # top-1: a dropped token's output is 0
    x = tokens(64)
    moe.router.set_skew(30.0, [3])  # every token wants expert 3; capacity = 64 / 8 = 8
    out = moe(x)
    zero_rows = int((out.abs().sum(dim=1) == 0).sum())
    assert zero_rows == 64 - 8
    assert int(moe.dropped) == 56


def test_skew_injection_produces_intended_imbalance():
    moe = make_moe()
    x = tokens(256)
    moe(x)
    base = moe.router.load.clone()
    assert base.max() / base.mean() < 3  # random routing is roughly balanced
    moe.router.set_skew(30.0, [5, 6])  # top-2 with two hot experts: every token picks both
    moe(x)
    load = moe.router.load
    assert load[5] == 256 and load[6] == 256 and load.sum() == 512
    moe.router.set_skew(1.0, [5])  # a mild bias raises the hot expert's share without taking all
    moe(x)
    assert base[5] < moe.router.load[5] < 256


def test_router_forward_returns_topk_ids_for_hooks():
    moe = make_moe()
    seen = []
    moe.router.register_forward_hook(lambda mod, inp, out: seen.append(out.ids.clone()))
    moe(tokens(10))
    assert isinstance(seen[0], torch.Tensor) and seen[0].shape == (10, 2)
    assert torch.equal(torch.bincount(seen[0].flatten(), minlength=8).float(), moe.router.load)


def test_routing_penalty_hook_sees_previous_load_and_moves_tokens():
    moe = make_moe()
    x = tokens(128)
    moe(x)
    first_load = moe.router.load.clone()
    received = []

    def penalty(logits, load):
        received.append(load.clone())
        return logits - 100.0 * (load > load.mean()).float()  # push tokens off overloaded experts

    moe.router.penalty = penalty
    r = moe.router(x)
    assert isinstance(r, Routing)
    torch.testing.assert_close(received[0], first_load)
    overloaded = (first_load > first_load.mean()).nonzero().flatten()
    assert not torch.isin(r.ids, overloaded).any()
