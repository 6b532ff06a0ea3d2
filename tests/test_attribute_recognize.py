"""Recognizers: module classes, paths and annotation names -> layer meaning."""

from __future__ import annotations

import pytest

from hybridscope.attribute.recognize import (
    FAMILIES,
    classify_annotation,
    classify_module,
    layer_index_from_path,
    parse_module_frame,
    parse_step,
)
from hybridscope.attribute.vocab import LAYER_TYPES


@pytest.mark.parametrize(
    ("cls", "role", "layer_type", "family"),
    [
        ("NemotronHMamba2Mixer", "mixer", "mamba", "nemotron_h"),
        ("NemotronHAttention", "attention", "attention", "nemotron_h"),
        ("NemotronHMoE", "moe", "moe_experts", "nemotron_h"),
        ("NemotronHTopkRouter", "router", "moe_router", "nemotron_h"),
        ("NemotronHBlock", "block", None, "nemotron_h"),
        ("JambaMambaMixer", "mixer", "mamba", "jamba"),
        ("JambaSparseMoeBlock", "moe", "moe_experts", "jamba"),
        ("JambaMambaDecoderLayer", "block", None, "jamba"),
        ("GraniteMoeHybridMambaLayer", "mixer", "mamba", "granitemoehybrid"),
        ("GraniteMoeHybridMoE", "moe", "moe_experts", "granitemoehybrid"),
        ("GraniteMoeHybridTopKRouter", "router", "moe_router", "granitemoehybrid"),
        ("GraniteMoeHybridDecoderLayer", "block", None, "granitemoehybrid"),
        ("BambaMixer", "mixer", "mamba", "bamba"),
        ("Zamba2MambaMixer", "mixer", "mamba", "zamba2"),
        ("Zamba2HybridLayer", "block", None, "zamba2"),
        ("FalconH1Mixer", "mixer", "mamba", "falcon_h1"),
        ("FalconH1Attention", "attention", "attention", "falcon_h1"),
        ("Qwen3NextGatedDeltaNet", "mixer", "mamba", "qwen3_next"),
        ("Qwen3NextSparseMoeBlock", "moe", "moe_experts", "qwen3_next"),
        ("Qwen3NextTopKRouter", "router", "moe_router", "qwen3_next"),
        ("Mamba2Mixer", "mixer", "mamba", "hybridscope"),
        ("ParallelHybridMixer", "mixer", "mamba", "hybridscope"),
        ("Router", "router", "moe_router", "hybridscope"),
        ("SharedExpert", "experts", "moe_experts", "hybridscope"),
        ("DenseMLP", "mlp", "mlp", "hybridscope"),
        ("LMHead", "lm_head", "lm_head", "hybridscope"),
    ],
)
def test_family_classes(cls, role, layer_type, family):
    info = classify_module(cls)
    assert (info.role, info.layer_type, info.family) == (role, layer_type, family)


@pytest.mark.parametrize(
    ("cls", "role", "layer_type"),
    [
        ("DeepseekV3MoE", "moe", "moe_experts"),
        ("MoEGate", "router", "moe_router"),
        ("MixtralSparseMoeBlock", "moe", "moe_experts"),
        ("LlamaDecoderLayer", "block", None),
        ("MambaMixer", "mixer", "mamba"),
        ("Qwen2Attention", "attention", "attention"),
        ("LlamaRotaryEmbedding", "rotary", "attention"),
        ("LlamaMLP", "mlp", "mlp"),
        ("LlamaRMSNorm", "norm", "norm"),
        ("VocabParallelEmbedding", "embedding", "embedding"),
        ("LlamaForCausalLM", "causal_lm", None),
    ],
)
def test_generic_class_rules(cls, role, layer_type):
    info = classify_module(cls)
    assert (info.role, info.layer_type, info.family) == (role, layer_type, None)


def test_unknown_class_is_none_and_path_gives_index():
    assert classify_module("Linear") is None
    info = classify_module("Linear", "model.layers.12.mixer.in_proj")
    assert info.layer_index == 12 and info.layer_type is None
    info = classify_module("Mamba2Mixer", "layers.4.mixer")
    assert (info.layer_type, info.layer_index, info.module_path) == ("mamba", 4, "layers.4.mixer")


def test_family_tables_use_the_vocabulary():
    for table in FAMILIES.values():
        for role, layer_type in table.values():
            assert layer_type is None or layer_type in LAYER_TYPES, role


@pytest.mark.parametrize(
    ("path", "index"),
    [("model.layers.12.mixer", 12), ("backbone.layers.3", 3), ("transformer.h.7.attn", 7),
     ("layers.0.moe.router", 0), ("layer3_fwd", 3), ("lm_head", None), ("model.norm", None), (None, None)],
)
def test_layer_index_from_path(path, index):
    assert layer_index_from_path(path) == index


def test_frames_and_steps():
    assert parse_module_frame("nn.Module: NemotronHBlock_12") == ("NemotronHBlock", 12)
    assert parse_module_frame("nn.Module: Zamba2RMSNormGated_0") == ("Zamba2RMSNormGated", 0)
    assert parse_module_frame("aten::mm") is None
    assert parse_step("step#3") == 3 and parse_step("ProfilerStep#12") == 12
    assert parse_step("step_size") is None


@pytest.mark.parametrize(
    ("name", "layer_type", "index", "role"),
    [
        ("moe.router", "moe_router", None, "router"),
        ("moe.dispatch", "moe_experts", None, "experts"),  # single-process sort/gather: expert work
        ("layers.2.moe.a2a", "moe_comm", 2, "moe_comm"),
        ("moe.experts", "moe_experts", None, "experts"),
        ("moe.combine", "moe_experts", None, "experts"),
        ("Qwen3_5MoeGatedDeltaNet: model.layers.0.linear_attn", "mamba", 0, "mixer"),
        ("Lfm2MoeRMSNorm: model.layers.0.ffn_norm", "norm", 0, "norm"),
        ("KimiLinearAttention: model.layers.3.self_attn", "attention", 3, "attention"),
        ("layers.3.mixer", None, 3, "mixer"),
        ("layers.3.moe.router", "moe_router", 3, "router"),
        ("model.layers.0.self_attn", "attention", 0, "attention"),
        ("Qwen2Attention: model.layers.5.self_attn", "attention", 5, "attention"),
        ("nn.Module: NemotronHMamba2Mixer_3", "mamba", None, "mixer"),
        ("backbone.layers.3", None, 3, "block"),
        ("lm_head", "lm_head", None, "lm_head"),
        ("model.norm_f", "norm", None, "norm"),
    ],
)
def test_classify_annotation(name, layer_type, index, role):
    info = classify_annotation(name)
    assert (info.layer_type, info.layer_index, info.role) == (layer_type, index, role)


def test_annotations_without_meaning():
    # collectives: MoE or not is decided by the scope around them, not by their own name
    assert classify_annotation("nccl:all_to_all") is None
    assert classify_annotation("record_param_comms") is None
    assert classify_annotation("forward") is None
    step = classify_annotation("ProfilerStep#7")
    assert (step.role, step.step, step.layer_type) == ("step", 7, None)
