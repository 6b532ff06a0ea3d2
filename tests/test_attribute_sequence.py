"""Sequence attribution on synthetic replays with hand-made answers (attribute/sequence.py) and the
layer patterns it reads (attribute/pattern.py)."""

from __future__ import annotations

import json

import pytest

from hybridscope.attribute.pattern import load_model_config, parse_pattern, pattern_from_config
from hybridscope.attribute.sequence import segment
from hybridscope.errors import BadInput

N, G = "norm", None  # a norm kernel, a generic kernel (no name rule)
M, A, R, X = "mamba", "attention", "moe_router", "moe_experts"


def test_nemotron_replay_with_named_norms():
    # embedding | L0 mamba: norm gemm conv ssd gated-norm gemm | L1 attention | L2 MoE | final norm, lm_head, argmax
    types = ["embedding", N, G, M, M, N, G, N, G, A, G, N, G, R, X, G, N, G, "sampling"]
    seg = segment(types, parse_pattern("M*E"))
    assert seg.layer.tolist() == [-1, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2, 2, -1, -1, -1]
    assert seg.layer_type == [None, M, M, M, M, M, M, A, A, A, A, X, X, R, X, X, None, None, None]
    assert not seg.guessed.any()


def test_same_family_run_split_at_norm_gaps_with_an_mlp_between():
    # M - M: the two Mamba layers form one anchor run; the MLP layer has no anchor
    types = [N, G, M, M, N, G, N, G, G, N, G, M, M, N, G, N, G]
    seg = segment(types, parse_pattern("M-M"))
    assert seg.layer.tolist() == [0, 0, 0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2, 2, 2, -1, -1]
    assert seg.layer_type[6:9] == ["mlp"] * 3
    assert not seg.guessed.any()


def test_gaps_without_norm_kernels_are_guessed_and_marked():
    # HF eager: norms run as generic kernels, so no boundary is known; missing boundaries go to the
    # start of their gap and every kernel of such a gap is marked
    types = ["embedding", G, M, M, G, G, A, G, G]
    seg = segment(types, parse_pattern("M*"))
    assert seg.layer.tolist() == [0, 0, 0, 0, 1, 1, 1, -1, -1]
    assert seg.guessed.tolist() == [True, True, False, False, True, True, False, True, True]


def test_run_without_norms_split_evenly_and_marked():
    types = [N, M, M, G, M, M, N, G]
    seg = segment(types, parse_pattern("MM"))
    assert seg.layer.tolist() == [0, 0, 0, 1, 1, 1, -1, -1]
    assert seg.guessed[1:6].all() and not seg.guessed[0]


def test_unsegmentable_replays():
    assert segment([N, M, G, X, N], parse_pattern("M*")) is None  # an MoE anchor the pattern lacks
    assert segment([N, M, M, M, N], parse_pattern("MM")) is None  # 3 anchors, 2 layers, no norm gap
    assert segment([N, G, G], parse_pattern("M")) is None  # no anchor at all


def test_parallel_layer_in_either_order():
    seg = segment([N, A, M, N, G, G, N], parse_pattern("P-"))  # the engine runs attention first
    assert seg.layer.tolist() == [0, 0, 0, 1, 1, 1, -1]
    assert seg.layer_type[:3] == [A, A, M]
    seg = segment([N, M, A, N, G, N], parse_pattern("P-"))  # Falcon-H1 runs Mamba first
    assert seg.layer.tolist() == [0, 0, 0, 1, 1, -1]
    seg = segment([N, M, A, N, G], parse_pattern("P-"))  # no final norm: the MLP's end is a guess
    assert seg.layer.tolist() == [0, 0, 0, -1, -1] and seg.guessed[3:].all()


def test_collective_keeps_its_rule_inside_a_layer():
    seg = segment([N, G, "comm", A, N], parse_pattern("*"))
    assert seg.layer_type == [A, A, "comm", A, None]


@pytest.mark.parametrize("text", ["", "M*X", "m*e"])
def test_bad_pattern(text):
    with pytest.raises(BadInput, match="one character per layer"):
        parse_pattern(text)


def test_patterns_from_configs(tmp_path):
    assert pattern_from_config({"hybrid_override_pattern": "M-*E"}).layers == (("M",), (), ("A",), ("E",))
    granite = {"layer_types": ["mamba", "attention"], "num_local_experts": 4}
    assert pattern_from_config(granite).layers == (("M", "E"), ("A", "E"))
    qwen = {"layer_types": ["linear_attention", "full_attention"], "num_experts": 8, "mlp_only_layers": [1]}
    assert pattern_from_config(qwen).layers == (("M", "E"), ("A",))
    jamba = {"num_hidden_layers": 4, "attn_layer_period": 4, "attn_layer_offset": 2, "num_experts": 16,
             "expert_layer_period": 2, "expert_layer_offset": 1}
    assert pattern_from_config(jamba).layers == (("M",), ("M", "E"), ("A",), ("M", "E"))
    nemo = {"layers_block_type": ["mamba", "moe", "attention", "mlp"]}
    assert pattern_from_config(nemo).layers == (("M",), ("E",), ("A",), ())
    path = tmp_path / "config.json"
    path.write_text(json.dumps({"text_config": {"hybrid_override_pattern": "ME"}}))
    assert load_model_config(path).layers == (("M",), ("E",))


def test_bad_configs(tmp_path):
    path = tmp_path / "config.json"
    path.write_text("{not json")
    with pytest.raises(BadInput, match="not a readable JSON"):
        load_model_config(path)
    with pytest.raises(BadInput, match="no layer pattern"):
        pattern_from_config({"hidden_size": 8})
    with pytest.raises(BadInput, match="unknown type"):
        pattern_from_config({"layer_types": ["mamba", "conv"]})
