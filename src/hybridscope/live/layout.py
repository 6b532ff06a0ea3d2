"""The config's word on each layer: which mixers layer i has, from the model's per-layer list.

HF configs name every layer's kind: `layer_types` (most families; transformers 5 spells Mamba layers
`linear_attention` too), `layers_block_type` (NemotronH, Zamba), `block_types` (RecurrentGemma), or
NemotronH's `hybrid_override_pattern` string (`M` Mamba, `*` attention, `-` MLP, `E` MoE).
`mixer_kinds(config)` turns it into one entry per layer: {'mamba'}, {'attention'}, both (`hybrid*`:
Zamba's shared attention beside Mamba) or none (MLP / MoE-only layers); None when the config has no
list. `live.plan` uses it for a block whose structure shows no mixer it knows: the block is typed
by its config (its unrecognized mixer's time stays in the block's own time, under that type).
"""

from __future__ import annotations

LIST_KEYS = ("layer_types", "layers_block_type", "block_types")
PATTERN_CHARS = {"M": frozenset({"mamba"}), "*": frozenset({"attention"}), "-": frozenset(), "E": frozenset()}


def mixer_kinds(config) -> list[frozenset] | None:
    """Per layer index, the mixer types the config names (module docstring); None without a list."""
    if config is None:
        return None
    if hasattr(config, "get_text_config"):
        try:
            config = config.get_text_config()
        except ValueError:  # several text configs: the top one says what it knows
            pass
    for key in LIST_KEYS:
        kinds = getattr(config, key, None)
        if isinstance(kinds, (list, tuple)) and kinds and all(isinstance(k, str) for k in kinds):
            return [kind_mixers(k) for k in kinds]
    pattern = getattr(config, "hybrid_override_pattern", None)
    if isinstance(pattern, str) and pattern and set(pattern) <= set(PATTERN_CHARS):
        return [PATTERN_CHARS[c] for c in pattern]
    return None


def kind_mixers(kind: str) -> frozenset:
    """One layer kind -> its mixer types: attention kinds, `hybrid*`, MLP / MoE-only, else recurrent."""
    kind = kind.lower()
    if kind.startswith("hybrid"):
        return frozenset({"mamba", "attention"})
    if kind in ("mlp", "moe", "dense", "sparse"):
        return frozenset()
    if kind == "linear_attention" or not (kind.endswith("attention") or kind in ("global", "local", "full")):
        return frozenset({"mamba"})  # linear_attention, mamba, conv, recurrent, rwkv, ...
    return frozenset({"attention"})
