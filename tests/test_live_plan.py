"""live.plan / live.structure / live.layout on hand-built toy models: what a module is decided by what
it holds, not by its class name (the class names below mean nothing to the name rules)."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn

from hybridscope.live.layout import kind_mixers, mixer_kinds
from hybridscope.live.plan import plan

H, E = 8, 4


class Decay(nn.Module):  # a recurrent mixer: a decay parameter of its own
    def __init__(self):
        super().__init__()
        self.A_log = nn.Parameter(torch.zeros(2))
        self.inp, self.out = nn.Linear(H, H), nn.Linear(H, H)

    def forward(self, x):
        return self.out(self.inp(x))


class Softmax(nn.Module):  # attention: q/k/v projections
    def __init__(self):
        super().__init__()
        self.q_proj, self.k_proj, self.v_proj = nn.Linear(H, H), nn.Linear(H, H), nn.Linear(H, H)

    def forward(self, x):
        return self.v_proj(x)


class Ffn(nn.Module):
    def __init__(self):
        super().__init__()
        self.up, self.down = nn.Linear(H, H), nn.Linear(H, H)

    def forward(self, x):
        return self.down(self.up(x))


class Routed(nn.Module):  # MoE: a router [E, H] and 3-D experts
    def __init__(self):
        super().__init__()
        self.pick = nn.Linear(H, E, bias=False)
        self.bank = SimpleBank()

    def forward(self, x):
        return x + self.pick(x).sum() * 0 + self.bank(x)


class SimpleBank(nn.Module):
    def __init__(self):
        super().__init__()
        self.w = nn.Parameter(torch.zeros(E, H, H))

    def forward(self, x):
        return x @ self.w[0]


class Opaque(nn.Module):  # a mixer nothing structural can tell (no parameters it recognizes)
    def forward(self, x):
        return x.cumsum(-1)


class Layer(nn.Module):
    def __init__(self, *mods):
        super().__init__()
        for k, m in enumerate(mods):
            self.add_module(f"part{k}", m)

    def forward(self, x):
        for m in self.children():
            x = x + m(x)
        return x


class Toy(nn.Module):
    def __init__(self, layers, layer_types=None):
        super().__init__()
        self.stack = nn.ModuleList(layers)
        self.config = SimpleNamespace(layer_types=layer_types, num_experts=E, hidden_size=H)

    def forward(self, x):
        for layer in self.stack:
            x = layer(x)
        return x


def _specs(model):
    return {s.path: (s.role, s.layer_type, s.layer_index) for s, _ in plan(model, prune=False)}


def test_roles_come_from_parameters_and_children():
    got = _specs(Toy([Layer(Decay(), Ffn()), Layer(Softmax(), Routed())]))
    assert got["stack.0"] == ("block", "mamba", 0) and got["stack.1"] == ("block", "attention", 1)
    assert got["stack.0.part0"] == ("mixer", "mamba", 0) and got["stack.0.part1"] == ("mlp", "mlp", 0)
    assert got["stack.1.part0"] == ("attention", "attention", 1)
    assert got["stack.1.part1"] == ("moe", "moe_experts", 1)
    assert got["stack.1.part1.pick"] == ("router", "moe_router", 1)
    assert got["stack.1.part1.bank"] == ("experts", "moe_experts", 1)
    assert not any(p.startswith("stack.1.part0.") for p in got)  # nothing inside attention


def test_a_dense_mlp_beside_an_moe_is_the_shared_expert():
    got = _specs(Toy([Layer(Softmax(), Routed(), Ffn())]))
    assert got["stack.0.part2"] == ("experts", "moe_experts", 0)


def test_a_shared_block_is_named_for_every_layer_and_takes_no_index():
    shared = Layer(Softmax(), Ffn())
    got = _specs(Toy([Layer(Decay(), shared), Layer(Decay(), shared)]))
    assert got["stack.*.part1"] == ("block", "attention", None)  # a fused block: attention + MLP, hooked whole
    assert got["stack.*.part1.part1"] == ("mlp", "mlp", None)
    assert "stack.1.part1" not in got


def test_a_block_without_a_known_mixer_takes_its_configs_kind():
    got = _specs(Toy([Layer(Softmax(), Ffn()), Layer(Opaque(), Ffn())], ["full_attention", "linear_attention"]))
    assert got["stack.1"] == ("mixer", "mamba", 1)
    assert _specs(Toy([Layer(Softmax(), Ffn()), Layer(Opaque(), Ffn())]))["stack.1"] == ("block", "mlp", 1)


def test_layout_kinds():
    assert [kind_mixers(k) for k in ("full_attention", "sliding_attention", "linear_attention", "conv", "hybrid",
                                     "moe", "recurrent")] == [
        {"attention"}, {"attention"}, {"mamba"}, {"mamba"}, {"mamba", "attention"}, set(), {"mamba"}]
    assert mixer_kinds(SimpleNamespace(hybrid_override_pattern="M*-E")) == [{"mamba"}, {"attention"}, set(), set()]
    assert mixer_kinds(SimpleNamespace()) is None
