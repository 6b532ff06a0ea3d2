"""Recognizers: module class names, module paths and annotation names -> layer meaning.

Shared by import-time attribution (python frames `nn.Module: Class_N`, record_function / NVTX
ranges) and live capture (forward hooks know the class and the path). Pure functions, no I/O.

Contract:
- `classify_module(class_name, module_path=None)` -> `ModuleInfo | None`: the family table for
  the class (HF hybrid families, the project's engine) first, generic class-name rules second,
  then the path's last recognized component; the layer index always comes from the path
  (`model.layers.12.mixer`, `backbone.layers.3`). None when nothing is recognized.
- `classify_annotation(name)` -> `ModuleInfo | None` for record_function / NVTX names: step marks
  (`step#3`, `ProfilerStep#3`), python frames (`nn.Module: NemotronHMamba2Mixer_3`), dotted
  paths (`moe.router`, `layers.3.mixer`, `model.layers.0.self_attn`), `Class: path` or
  `Class(path)` forms. Collective annotations (`nccl:all_to_all`) return None on purpose: whether
  a collective is MoE traffic depends on the scope around it, not on its own name.

`layer_type` is None for containers that have no type of their own (decoder blocks, the model)
and for ambiguous paths (`layers.3.mixer`). Choices (docs/attribution.md):
- `ParallelHybridMixer` (attention and SSM side by side) -> `mamba`: its SSM half carries the
  recurrent state and most of its decode time; its attention half, when it is a submodule of its
  own, is `attention` because the innermost scope wins.
- Gated DeltaNet / linear-attention mixers (Qwen3-Next `Qwen3NextGatedDeltaNet`) -> `mamba`:
  a recurrent-state mixer with a chunked scan, the SSM runtime shape.
- Rotary embeddings -> `attention` (role 'rotary'); `norm` and `mlp` are weak types that yield to
  an enclosing mixer / attention / MoE scope (a gated norm inside a Mamba mixer is Mamba; a shared
  expert MLP inside an MoE block is `moe_experts`), see `WEAK_TYPES`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace

from hybridscope.attribute.vocab import LAYER_TYPES


@dataclass(frozen=True)
class ModuleInfo:
    """What a module / range means. `role` is structural (block, mixer, router, ...)."""

    layer_type: str | None
    layer_index: int | None
    role: str
    family: str | None
    module_class: str | None = None
    module_path: str | None = None
    step: int | None = None


# Types that yield to an enclosing scope of a strong type (mamba, attention, moe_*).
WEAK_TYPES = frozenset({"norm", "mlp"})

_B, _M = ("block", None), ("model", None)
_LM = ("causal_lm", None)

# Exact class names per family (transformers 5.x modeling files; older spellings in comments
# are caught by the generic rules). (role, layer_type).
FAMILIES: dict[str, dict[str, tuple[str, str | None]]] = {
    "nemotron_h": {
        "NemotronHMamba2Mixer": ("mixer", "mamba"), "NemotronHAttention": ("attention", "attention"),
        "NemotronHMoE": ("moe", "moe_experts"), "NemotronHMOE": ("moe", "moe_experts"),
        "NemotronHTopkRouter": ("router", "moe_router"), "NemotronHExperts": ("experts", "moe_experts"),
        "NemotronHMLP": ("mlp", "mlp"), "NemotronHRMSNorm": ("norm", "norm"),
        "NemotronHRMSNormGated": ("norm", "norm"), "NemotronHBlock": _B,
        "NemotronHModel": _M, "NemotronHForCausalLM": _LM,
    },
    "jamba": {
        "JambaMambaMixer": ("mixer", "mamba"), "JambaAttention": ("attention", "attention"),
        "JambaSdpaAttention": ("attention", "attention"),
        "JambaFlashAttention2": ("attention", "attention"),
        "JambaSparseMoeBlock": ("moe", "moe_experts"), "JambaTopKRouter": ("router", "moe_router"),
        "JambaExperts": ("experts", "moe_experts"), "JambaMLP": ("mlp", "mlp"),
        "JambaRMSNorm": ("norm", "norm"), "JambaAttentionDecoderLayer": _B,
        "JambaMambaDecoderLayer": _B, "JambaModel": _M, "JambaForCausalLM": _LM,
    },
    "granitemoehybrid": {
        "GraniteMoeHybridMambaLayer": ("mixer", "mamba"),
        "GraniteMoeHybridAttention": ("attention", "attention"),
        "GraniteMoeHybridMoE": ("moe", "moe_experts"),
        "GraniteMoeHybridTopKRouter": ("router", "moe_router"),
        "GraniteMoeHybridTopKGating": ("router", "moe_router"),
        "GraniteMoeHybridExperts": ("experts", "moe_experts"),
        "GraniteMoeHybridParallelExperts": ("experts", "moe_experts"),
        "GraniteMoeHybridMLP": ("mlp", "mlp"), "GraniteMoeHybridRMSNorm": ("norm", "norm"),
        "GraniteMoeHybridRMSNormGated": ("norm", "norm"),
        "GraniteMoeHybridRotaryEmbedding": ("rotary", "attention"),
        "GraniteMoeHybridDecoderLayer": _B, "GraniteMoeHybridModel": _M,
        "GraniteMoeHybridForCausalLM": _LM,
    },
    "bamba": {
        "BambaMixer": ("mixer", "mamba"), "BambaAttention": ("attention", "attention"),
        "BambaMLP": ("mlp", "mlp"), "BambaRMSNorm": ("norm", "norm"),
        "BambaRMSNormGated": ("norm", "norm"), "BambaRotaryEmbedding": ("rotary", "attention"),
        "BambaDecoderLayer": _B, "BambaModel": _M, "BambaForCausalLM": _LM,
    },
    "zamba2": {
        "Zamba2MambaMixer": ("mixer", "mamba"), "Zamba2Attention": ("attention", "attention"),
        "Zamba2MLP": ("mlp", "mlp"), "Zamba2RMSNorm": ("norm", "norm"),
        "Zamba2RMSNormGated": ("norm", "norm"), "Zamba2RotaryEmbedding": ("rotary", "attention"),
        "Zamba2HybridLayer": _B, "Zamba2MambaDecoderLayer": _B,
        # the shared transformer block runs inside a hybrid layer: it takes that layer's index
        "Zamba2AttentionDecoderLayer": ("attention", "attention"),
        "Zamba2Model": _M, "Zamba2ForCausalLM": _LM,
    },
    "falcon_h1": {
        "FalconH1Mixer": ("mixer", "mamba"), "FalconH1Attention": ("attention", "attention"),
        "FalconH1MLP": ("mlp", "mlp"), "FalconH1RMSNorm": ("norm", "norm"),
        "FalconH1RMSNormGated": ("norm", "norm"), "FalconH1RotaryEmbedding": ("rotary", "attention"),
        "FalconH1DecoderLayer": _B, "FalconH1Model": _M, "FalconH1ForCausalLM": _LM,
    },
    "qwen3_next": {
        "Qwen3NextGatedDeltaNet": ("mixer", "mamba"), "Qwen3NextAttention": ("attention", "attention"),
        "Qwen3NextSparseMoeBlock": ("moe", "moe_experts"), "Qwen3NextTopKRouter": ("router", "moe_router"),
        "Qwen3NextExperts": ("experts", "moe_experts"), "Qwen3NextMLP": ("mlp", "mlp"),
        "Qwen3NextRMSNorm": ("norm", "norm"), "Qwen3NextRMSNormGated": ("norm", "norm"),
        "Qwen3NextRotaryEmbedding": ("rotary", "attention"), "Qwen3NextDecoderLayer": _B,
        "Qwen3NextModel": _M, "Qwen3NextForCausalLM": _LM,
    },
    # class names the generic rules would get wrong: KimiLinear's MLA attention ends in "LinearAttention"
    "kimi_linear": {
        "KimiLinearAttention": ("attention", "attention"), "KimiLinearDeltaAttention": ("mixer", "mamba"),
        "KimiLinearDecoderLayer": _B, "KimiLinearModel": _M, "KimiLinearForCausalLM": _LM,
    },
    # the project's reference engine (hybridscope.engine), paths `layers.{i}.mixer`, `layers.{i}.moe.router`
    "hybridscope": {
        "Mamba2Mixer": ("mixer", "mamba"), "Attention": ("attention", "attention"),
        "ParallelHybridMixer": ("mixer", "mamba"), "MoE": ("moe", "moe_experts"),
        "Router": ("router", "moe_router"), "Experts": ("experts", "moe_experts"),
        "SharedExpert": ("experts", "moe_experts"), "DenseMLP": ("mlp", "mlp"),
        "HybridBlock": _B, "RMSNorm": ("norm", "norm"), "Embedding": ("embedding", "embedding"),
        "LMHead": ("lm_head", "lm_head"), "HybridModel": _M,
        "AllToAllDispatch": ("moe_comm", "moe_comm"), "AllToAllCombine": ("moe_comm", "moe_comm"),
        "AllToAllWait": ("moe_comm", "moe_comm"),
    },
}
_BY_CLASS: dict[str, tuple[str, tuple[str, str | None]]] = {
    cls: (fam, rt) for fam, table in FAMILIES.items() for cls, rt in table.items()
}

# Generic class-name rules, in order (first match wins); for classes no family table names.
_GENERIC: tuple[tuple[re.Pattern, str, str | None], ...] = tuple(
    (re.compile(p), role, lt)
    for p, role, lt in (
        (r"DecoderLayer$|HybridLayer$|TransformerLayer$|DecoderBlock$", "block", None),
        (r"Rotary", "rotary", "attention"),
        (r"Router$|Gating$|Gate$", "router", "moe_router"),
        (r"Experts?$|SharedExpert|ExpertMLP", "experts", "moe_experts"),
        (r"Norm", "norm", "norm"),
        ((r"Mamba|SSM|Ssm|DeltaNet|DeltaAttention|Lightning|ShortConv|Rglru|RecurrentBlock|xLSTMLayer|mLSTM"
         r"|Rwkv\w*SelfAttention|LinearAttention$|Mixer$"), "mixer", "mamba"),
        (r"Attention|Attn", "attention", "attention"),
        (r"(MoE|Moe|MOE)(Block|Layer)?$|SparseMoe", "moe", "moe_experts"),
        (r"Block$", "block", None),
        (r"MLP|Mlp|FeedForward|FFN$", "mlp", "mlp"),
        (r"Embed", "embedding", "embedding"),
        (r"LMHead|LmHead|LogitsProcessor", "lm_head", "lm_head"),
        (r"Sampler$", "sampling", "sampling"),
        (r"For(CausalLM|ConditionalGeneration)$", "causal_lm", None),
        (r"Model$", "model", None),
    )
)

# Path components (module attribute names, annotation words) -> (role, layer_type).
_COMPONENTS: dict[str, tuple[str, str | None]] = {
    "mixer": ("mixer", None),
    **dict.fromkeys(("mamba", "ssm", "linear_attn", "mamba_decoder", "ssd", "conv1d"), ("mixer", "mamba")),
    **dict.fromkeys(("self_attn", "attn", "attention", "cross_attn"), ("attention", "attention")),
    **dict.fromkeys(("router", "gate", "gating", "topk", "route", "routing"), ("router", "moe_router")),
    **dict.fromkeys(("experts", "expert", "shared_expert", "shared_experts"), ("experts", "moe_experts")),
    **dict.fromkeys(("moe", "block_sparse_moe", "sparse_moe"), ("moe", "moe_experts")),
    # the engine's single-process dispatch / combine (sort, gather, scatter by expert) is expert work;
    # movement between ranks is `moe_comm`: all-to-all modules and collectives inside an MoE scope
    **dict.fromkeys(("dispatch", "combine"), ("experts", "moe_experts")),
    **dict.fromkeys(("a2a", "all2all", "alltoall", "all_to_all"), ("moe_comm", "moe_comm")),
    **dict.fromkeys(("mlp", "ffn", "feed_forward", "shared_mlp"), ("mlp", "mlp")),
    **dict.fromkeys(("embed_tokens", "embeddings", "embedding", "embed", "wte"), ("embedding", "embedding")),
    **dict.fromkeys(("lm_head", "logits", "logits_processor"), ("lm_head", "lm_head")),
    **dict.fromkeys(("sampler", "sampling", "sample"), ("sampling", "sampling")),
}
_LAYER_RE = re.compile(r"(?:^|[./])(?:layers|layer|h|blocks|decoder_layers|mamba_layers)[./](\d+)(?=[./:]|$)")
_LAYER_WORD_RE = re.compile(r"^layer[_#]?(\d+)(?:_|$)")  # NVTX habits: `layer3_fwd`, `layer#3`
_FRAME_RE = re.compile(r"^nn\.Module:\s*([A-Za-z_]\w*?)(?:_(\d+))?$")
_STEP_RE = re.compile(r"^(?:ProfilerStep|step|Step|iteration|iter)\s*[#_ ]\s*(\d+)$")
_COLLECTIVE_RE = re.compile(r"^(nccl|gloo|c10d|rccl|record_param_comms)", re.IGNORECASE)
_CLASS_PATH_RE = re.compile(r"^([A-Z]\w*)\s*(?::\s*|\()([\w./]*)\)?$")


def parse_module_frame(name: str) -> tuple[str, int | None] | None:
    """`nn.Module: NemotronHBlock_12` -> ('NemotronHBlock', 12); None for other names."""
    m = _FRAME_RE.match(name.strip())
    if m is None:
        return None
    return m.group(1), (int(m.group(2)) if m.group(2) is not None else None)


def parse_step(name: str) -> int | None:
    """`step#3`, `ProfilerStep#3` -> 3; None otherwise."""
    m = _STEP_RE.match(name.strip())
    return int(m.group(1)) if m else None


def layer_index_from_path(path: str | None) -> int | None:
    """The outermost `layers.N` of a module path, or None."""
    if not path:
        return None
    m = _LAYER_RE.search(path)
    if m is not None:
        return int(m.group(1))
    m = _LAYER_WORD_RE.match(path)
    return int(m.group(1)) if m else None


def _class_rule(class_name: str) -> tuple[str | None, tuple[str, str | None]] | None:
    hit = _BY_CLASS.get(class_name)
    if hit is not None:
        return hit
    for pattern, role, layer_type in _GENERIC:
        if pattern.search(class_name):
            return None, (role, layer_type)
    return None


def _path_rule(path: str) -> tuple[str, str | None] | None:
    """The last recognized component of a dotted / slashed path."""
    for part in reversed(re.split(r"[./:\s]+", path.strip().lower())):
        hit = _COMPONENTS.get(part)
        if hit is not None:
            return hit
        if "norm" in part:
            return ("norm", "norm")
    return None


def classify_module(class_name: str, module_path: str | None = None) -> ModuleInfo | None:
    """Recognize a module by its class (and path). None when neither says anything."""
    module_path = module_path or None
    index = layer_index_from_path(module_path)
    hit = _class_rule(class_name) if class_name else None
    if hit is None and module_path:
        path_hit = _path_rule(module_path)
        hit = (None, path_hit) if path_hit else None
    if hit is None:
        if index is None:
            return None
        return ModuleInfo(None, index, _index_role(module_path), None, class_name or None, module_path)
    family, (role, layer_type) = hit
    assert layer_type is None or layer_type in LAYER_TYPES
    return ModuleInfo(layer_type, index, role, family, class_name or None, module_path)


def classify_annotation(name: str) -> ModuleInfo | None:
    """Recognize a record_function / NVTX range name (see the module docstring)."""
    text = name.strip()
    step = parse_step(text)
    if step is not None:
        return ModuleInfo(None, None, "step", None, step=step)
    if _COLLECTIVE_RE.match(text):
        return None
    frame = parse_module_frame(text)
    if frame is not None:
        return classify_module(frame[0])
    m = _CLASS_PATH_RE.match(text)
    if m is not None:
        return classify_module(m.group(1), m.group(2))
    if re.fullmatch(r"[A-Z][A-Za-z0-9_]*", text):
        return classify_module(text)
    hit = _path_rule(text)
    index = layer_index_from_path(text)
    if hit is None:
        return None if index is None else ModuleInfo(None, index, _index_role(text), None, module_path=text)
    return ModuleInfo(hit[1], index, hit[0], None, module_path=text)


def _index_role(path: str) -> str:
    """A path that ends at its layer (`backbone.layers.3`, `layer3_fwd`) names a block."""
    m = _LAYER_RE.search(path)
    return "block" if (m is None or m.end() == len(path)) else "unknown"


def with_index(info: ModuleInfo, index: int | None) -> ModuleInfo:
    return replace(info, layer_index=index)
