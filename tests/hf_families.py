"""The SSM / linear-attention / hybrid families of the installed transformers, as tiny random models.

`families()` reads transformers' own registry (CONFIG_MAPPING, the causal-LM and base-model
mappings) and keeps a family when its modeling file declares a recurrent-state parameter
(`RECURRENT_SOURCE`: Mamba's `A_log`/`dt_bias`, RWKV's `time_decay`, RG-LRU's `recurrent_param`,
lightning attention's `slope_rate`, mLSTM's input/forget gates) or its default config lists a
non-attention layer kind (`layer_types` and its spellings). A family transformers adds tomorrow is
in the list without an edit here. `tiny(key)` builds it with 4 layers, hidden size 64 and a per-layer
pattern holding every layer kind the family has (`pattern`); `expected(config)` is the ground truth
per layer index, read from the config alone: which mixers (`mamba` / `attention`) and whether the
layer routes to experts.
"""

from __future__ import annotations

import re
import warnings
from pathlib import Path

N_LAYERS = 4
ATTENTION_KINDS = frozenset({"full_attention", "sliding_attention", "attention", "indexed_attention",
                             "chunked_attention", "global", "local"})
RECURRENT_KINDS = frozenset({"linear_attention", "mamba", "conv", "recurrent", "rwkv", "mlstm", "ssm"})
LIST_KEYS = ("layer_types", "layers_block_type", "block_types")
RECURRENT_SOURCE = re.compile(
    r"self\.(A_log|dt_bias|time_decay|recurrent_param|slope_rate)\s*=\s*nn\.Parameter|self\.(igate|fgate)_preact\s*="
    r"|\bcausal_conv1d\b")
# Sizes for every family; only the keys a config has are set.
SMALL = {
    "vocab_size": 128, "unpadded_vocab_size": 128, "hidden_size": 64, "intermediate_size": 64, "moe_intermediate_size": 32, "shared_expert_intermediate_size": 32,
    "moe_shared_expert_intermediate_size": 32, "shared_intermediate_size": 32, "num_attention_heads": 4, "num_key_value_heads": 2,
    "head_dim": 16, "attention_head_dim": 32, "attention_hidden_size": 128, "num_experts": 4, "num_local_experts": 4,
    "n_routed_experts": 4, "num_experts_per_tok": 2, "num_experts_per_token": 2, "num_shared_experts": 1, "n_shared_experts": 1,
    "n_group": 1, "topk_group": 1, "num_expert_group": 1, "mamba_d_state": 8, "mamba_n_heads": 4, "mamba_d_head": 32,
    "mamba_chunk_size": 16, "mamba_dt_rank": 8, "mamba_headdim": 32, "n_mamba_heads": 4, "mamba_d_ssm": 128, "ssm_state_size": 8,
    "mamba_num_heads": 4, "mamba_head_dim": 32, "n_groups": 1, "mamba_n_groups": 1, "mamba_ngroups": 1, "chunk_size": 16,
    "state_size": 8, "num_heads": 4, "time_step_rank": 8, "linear_key_head_dim": 16, "linear_value_head_dim": 16,
    "linear_num_key_heads": 2, "linear_num_value_heads": 4, "linear_head_dim": 16, "linear_num_heads": 4, "kv_lora_rank": 16,
    "q_lora_rank": 32, "qk_rope_head_dim": 8, "qk_nope_head_dim": 16, "v_head_dim": 16, "qk_head_dim": 24, "lru_width": 64,
    "attention_window_size": 16, "embedding_dim": 64, "num_blocks": N_LAYERS, "index_topk": 16, "index_head_dim": 16,
    "index_n_heads": 2, "hc_lowrank": 16, "ple_embed_dim": 64, "block_multiple_of": 16, "max_position_embeddings": 256,
    "adapter_rank": 8, "kv_channels": 16, "num_query_groups": 2, "block_size": 16, "sliding_window": 16, "conv_L_cache": 3,
    "num_hidden_layers": N_LAYERS, "context_length": 64, "first_k_dense_replace": 1, "num_dense_layers": 1,
    "layer_group_size": 2, "mlp_only_layers": [], "num_nextn_predict_layers": 0, "pad_token_id": 0, "bos_token_id": 1,
    "eos_token_id": 2,
}
# What a family's default config cannot say generically (its layer kinds, head arithmetic), by key.
OVERRIDES: dict[str, dict] = {
    "lfm2_moe": {"layer_types": ["conv", "full_attention", "conv", "full_attention"]},
    "zamba": {"layers_block_type": ["mamba", "hybrid", "mamba", "hybrid"]},
    "zamba2": {"layers_block_type": ["mamba", "hybrid", "mamba", "hybrid"], "hybrid_layer_ids": [1, 3]},
    "mamba2": {"head_dim": 32},
    "zaya": {"num_experts_per_tok": 1},
    "rwkv": {"attention_hidden_size": 64},
    "glm5_next_text": {"num_key_value_heads": 4, "qk_rope_head_dim": 0},
    "xlstm": {"chunk_size": 4, "num_heads": 2, "qk_dim_factor": 1.0},
    "qwen4_exp_text": {"indexer_budget": 8, "indexer_compress_ratio": 2, "indexer_head_dim": 16, "indexer_n_heads": 2,
                       "indexer_kv_heads": 1},
}


def _registry():
    from transformers.models.auto import modeling_auto
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING, model_type_to_module_name

    return CONFIG_MAPPING, modeling_auto, model_type_to_module_name


def _default_config(key: str):
    config_mapping, _, _ = _registry()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return config_mapping[key]()
        except Exception:  # noqa: BLE001 - a config that cannot stand alone is not a text family
            return None


def _layer_list(config) -> list | None:
    for key in LIST_KEYS:
        value = getattr(config, key, None)
        if isinstance(value, (list, tuple)) and value:
            return list(value)
    return None


def families() -> list[str]:
    """Model types of the installed transformers that are SSM / linear-attention / hybrid text models
    and can be built alone (a causal LM, else a text base model); one key per model class."""
    import transformers

    _, auto, module_name = _registry()
    root = Path(transformers.__file__).parent / "models"
    picked: dict[str, str] = {}
    for key, cls in {**auto.MODEL_MAPPING_NAMES, **auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES}.items():
        if not isinstance(cls, str) or (key not in auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and not key.endswith("_text")):
            continue
        source = root / module_name(key) / f"modeling_{module_name(key)}.py"
        if not source.is_file():
            continue
        config = _default_config(key)
        if config is None or config.sub_configs:
            continue  # a composite (vision + text) config: its `_text` key stands for it
        kinds = {k for k in map(str, _layer_list(config) or ()) if not _is_attention(k)}
        if RECURRENT_SOURCE.search(source.read_text()) or kinds - {"mlp", "moe"}:
            picked.setdefault(cls, key)
    return sorted(picked.values())


def model_class(key: str):
    import transformers

    _, auto, _ = _registry()
    name = auto.MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.get(key) or auto.MODEL_MAPPING_NAMES[key]
    return getattr(transformers, name)


def pattern(values: list, n: int = N_LAYERS) -> list:
    """n layer kinds that hold every kind of `values`, recurrent ones first, cycled."""
    kinds = sorted(set(values), key=lambda v: (_is_attention(str(v)), str(v)))
    if len(kinds) == 1 and kinds[0] in RECURRENT_KINDS:
        kinds.append("full_attention")  # a hybrid whose default is all-recurrent (granitemoehybrid)
    return [kinds[i % len(kinds)] for i in range(n)]


def tiny_config(key: str, **extra):
    """The family's config scaled down to `SMALL`, with a known per-layer pattern."""
    config = _default_config(key)
    d = config.to_dict()
    kw = {k: v for k, v in SMALL.items() if k in d}
    for k in (*LIST_KEYS, "mlp_layer_types"):
        if isinstance(d.get(k), list) and d[k]:
            kw[k] = pattern(d[k])
    if key in ("mamba", "mamba2", "falcon_mamba") or kw.get("layer_types") == ["hybrid"] * N_LAYERS:
        kw.pop("layer_types", None)  # one kind by design: pure SSM, or Falcon-H1's parallel layers
    for k, v in (("attn_layer_indices", [1, 3]), ("full_attn_idxs", [1, 3])):
        if k in d:
            kw[k] = v
            kw.pop("layer_types", None)
    if "attn_layer_period" in d:
        kw.update(attn_layer_period=2, attn_layer_offset=1)
    if "expert_layer_period" in d:
        kw.update(expert_layer_period=2, expert_layer_offset=1)
    for k in ("expert_swiglu_limit_list", "share_expert_swiglu_limit_list"):
        if isinstance(d.get(k), list):
            kw[k] = d[k][:1] * N_LAYERS
    if "kv_lora_rank" in d:
        kw["num_key_value_heads"] = kw.get("num_attention_heads", 4)  # MLA: as many kv heads as heads
    kw.update(OVERRIDES.get(key, {}), **extra)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return type(config)(**{**{k: v for k, v in d.items() if k not in ("hybrid_layer_ids", "layers_block_type",
                                                                         "layer_types")}, **kw})


def tiny(key: str, **extra):
    """(model, config): the family at `tiny_config` size, random init (seed 0), eval mode, fp32."""
    import torch

    config = tiny_config(key, **extra)
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = model_class(key)(config).eval()
    return model, config


# Where a layer kind means something else in one family: ZAYA's "hybrid" layer is its compressed
# convolutional (softmax) attention beside an MoE, no recurrent mixer.
KIND_MEANING: dict[tuple[str, str], frozenset] = {("zaya", "hybrid"): frozenset({"attention"})}


def _n_layers(config) -> int:
    return int(getattr(config, "num_hidden_layers", None) or getattr(config, "num_blocks", None))


def expected(config) -> list[tuple[frozenset, bool]]:
    """Per layer index: (mixer types, routes to experts), from the config alone."""
    n = _n_layers(config)
    kinds = _layer_list(config)
    if kinds is None:  # no list: one kind for every layer (Falcon-H1 parallel, pure SSM)
        both = getattr(config, "model_type", "") in ("falcon_h1",)
        kinds = ["hybrid" if both else "linear_attention"] * n
    family = getattr(config, "model_type", "")
    return [(KIND_MEANING.get((family, str(kinds[i]))) or _mixers(str(kinds[i])), _routes(config, i, str(kinds[i])))
            for i in range(n)]


def _is_attention(kind: str) -> bool:
    return kind in ATTENTION_KINDS or (kind.endswith("attention") and kind != "linear_attention")


def _mixers(kind: str) -> frozenset:
    if kind.startswith("hybrid"):  # Zamba's shared attention block beside Mamba, Inkling's short conv
        return frozenset({"mamba", "attention"})
    if kind in ("mlp", "moe"):
        return frozenset()
    return frozenset({"attention"} if _is_attention(kind) else {"mamba"})


def _routes(config, i: int, kind: str) -> bool:
    from hybridscope.live.structure import expert_count

    if kind in ("mlp", "moe"):
        return kind == "moe"
    mlp_types = getattr(config, "mlp_layer_types", None)
    if isinstance(mlp_types, (list, tuple)) and len(mlp_types) > i:
        return mlp_types[i] not in ("dense", "mlp")
    if getattr(config, "model_type", "") == "nemotron_h" or not expert_count(config):
        return False
    if getattr(config, "expert_layer_period", None):
        return i % config.expert_layer_period == config.expert_layer_offset
    dense_first = getattr(config, "num_dense_layers", None) or getattr(config, "first_k_dense_replace", None) or 0
    step = getattr(config, "decoder_sparse_step", None) or 1
    return i >= dense_first and (i + 1) % step == 0 and i not in (getattr(config, "mlp_only_layers", None) or ())
