"""Layer patterns: which layer types a model stacks, in order, for sequence attribution.

A pattern is one entry per decoder layer, each the ordered *families* whose kernels the layer runs:
`M` (Mamba / SSM / linear-recurrent mixer: `mamba` kernels), `A` (attention), `E` (MoE: router,
experts, MoE all-to-all). A layer with no family (a dense MLP) has no kernel a name rule can
recognize. Sources:

- `parse_pattern("M-M*E")`: Nemotron-H's notation (`hybrid_override_pattern`), one character a
  layer: `M` Mamba, `*` attention, `E` MoE, `-` MLP, and the engine's `P` (attention and Mamba side
  by side; segmentation accepts either order of a layer's families).
- `pattern_from_config(cfg)` / `load_model_config(path)`: a Hugging Face `config.json`:
  `hybrid_override_pattern`; `layers_block_type` or `layer_types` (words such as `mamba`,
  `attention`, `full_attention`, `linear_attention`, `moe`, `mlp`), plus an MoE feed-forward in
  each layer when the config has routed experts (`num_local_experts`, `num_experts`,
  `n_routed_experts` > 1; Qwen3-Next's `decoder_sparse_step` / `mlp_only_layers`); Jamba's
  `attn_layer_period`/`attn_layer_offset` and `expert_layer_period`/`expert_layer_offset`.
A bad pattern or config raises BadInput (one line).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from hybridscope.errors import BadInput

FAMILY_TYPE = {"M": "mamba", "A": "attention", "E": "moe_experts"}  # a generic kernel's type in a layer
CHAR_FAMILIES = {"M": ("M",), "*": ("A",), "E": ("E",), "-": (), "P": ("A", "M")}
ANCHOR_FAMILY = {"mamba": "M", "attention": "A", "moe_router": "E", "moe_experts": "E", "moe_comm": "E"}
_MIXER_WORDS = {"mamba": "M", "mamba2": "M", "ssm": "M", "linear_attention": "M", "attention": "A",
                "full_attention": "A", "attn": "A", "sliding_attention": "A", "hybrid": "MA", "parallel": "MA"}
_FFN_WORDS = {"moe": "E", "mlp": "", "dense": ""}


@dataclass(frozen=True)
class LayerPattern:
    """`layers[i]` = the families of layer i, in the order its kernels run."""

    layers: tuple[tuple[str, ...], ...]
    source: str

    def __len__(self) -> int:
        return len(self.layers)

    def default_type(self, i: int) -> str:
        """The layer type of a kernel of layer i that no name rule types (its first family's)."""
        fams = self.layers[i]
        return FAMILY_TYPE[fams[0]] if fams else "mlp"

    def as_note(self) -> list[str]:
        return ["".join(f) or "-" for f in self.layers]


def parse_pattern(text: str, source: str = "--pattern") -> LayerPattern:
    """Nemotron notation (`M-M*E`, also the engine's `P`); BadInput for anything else."""
    text = (text or "").strip()
    bad = sorted(set(text) - set(CHAR_FAMILIES))
    if not text or bad:
        raise BadInput(f"{source}: a layer pattern is one character per layer out of M * E - P "
                       f"(Nemotron notation), not {text!r}")
    return LayerPattern(tuple(CHAR_FAMILIES[c] for c in text), source)


def from_note(layers: list[str]) -> LayerPattern:
    """The pattern stored in a run's notes (`LayerPattern.as_note`)."""
    return LayerPattern(tuple(() if s == "-" else tuple(s) for s in layers), "run notes")


def load_model_config(path: str | Path) -> LayerPattern:
    """The layer pattern of a Hugging Face config.json. BadInput when unreadable or silent."""
    path = Path(path)
    try:
        cfg = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise BadInput(f"--model-config {path}: not a readable JSON config ({e})") from None
    if not isinstance(cfg, dict):
        raise BadInput(f"--model-config {path}: not a JSON object")
    return pattern_from_config(cfg, f"--model-config {path.name}")


def pattern_from_config(cfg: dict, source: str = "model config") -> LayerPattern:
    cfg = {**cfg.get("text_config", {}), **cfg} if isinstance(cfg.get("text_config"), dict) else cfg
    hop = cfg.get("hybrid_override_pattern")
    if isinstance(hop, str):
        return parse_pattern(hop, f"{source} hybrid_override_pattern")
    words = cfg.get("layers_block_type") or cfg.get("layer_types")
    if isinstance(words, list) and words:
        return LayerPattern(tuple(_word_layer(w, i, cfg, source) for i, w in enumerate(words)), source)
    if "attn_layer_period" in cfg and "num_hidden_layers" in cfg:
        n = _int(cfg, "num_hidden_layers", source)
        period, offset = _int(cfg, "attn_layer_period", source), _int(cfg, "attn_layer_offset", source, 0)
        return LayerPattern(tuple(("A" if i % period == offset else "M",) + _moe_ffn(cfg, i, source)
                                  for i in range(n)), source)
    raise BadInput(f"{source}: no layer pattern in it (hybrid_override_pattern, layers_block_type, "
                   "layer_types or attn_layer_period); give --pattern instead")


def _word_layer(word, i: int, cfg: dict, source: str) -> tuple[str, ...]:
    w = str(word).lower()
    if w in _FFN_WORDS:  # Nemotron-H's layers_block_type: a layer is a mixer or a feed-forward
        return tuple(_FFN_WORDS[w])
    if w not in _MIXER_WORDS:
        raise BadInput(f"{source}: layer {i} has an unknown type {word!r}")
    return tuple(_MIXER_WORDS[w]) + _moe_ffn(cfg, i, source)


def _moe_ffn(cfg: dict, i: int, source: str) -> tuple[str, ...]:
    """('E',) when layer i's feed-forward is an MoE, else ()."""
    experts = next((cfg[k] for k in ("num_local_experts", "num_experts", "n_routed_experts")
                    if isinstance(cfg.get(k), int)), 0)
    if experts <= 1 or i in (cfg.get("mlp_only_layers") or ()):
        return ()
    if "expert_layer_period" in cfg:
        period, offset = _int(cfg, "expert_layer_period", source), _int(cfg, "expert_layer_offset", source, 0)
        return ("E",) if i % period == offset else ()
    step = cfg.get("decoder_sparse_step", 1) or 1
    return ("E",) if (i + 1) % int(step) == 0 else ()


def _int(cfg: dict, key: str, source: str, default: int | None = None) -> int:
    value = cfg.get(key, default)
    if not isinstance(value, int) or value < 0 or (key.endswith("period") and value == 0):
        raise BadInput(f"{source}: {key} must be a non-negative integer, not {value!r}")
    return value
