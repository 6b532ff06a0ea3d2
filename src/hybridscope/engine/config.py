"""One configuration dataclass for the reference engine, filled from a table of named presets.

The layer pattern uses Nemotron-H's notation, one character per layer (each a pre-norm residual block):
``M`` Mamba2 mixer, ``*`` attention, ``E`` MoE feed-forward, ``-`` dense MLP, and ``P`` a parallel
hybrid mixer (attention and Mamba2 heads side by side on the same input, Falcon-H1/Hymba style).
A Jamba layer (mixer + feed-forward) is therefore two characters, e.g. ``M-`` or ``*E``.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

LAYER_CHARS = {"M": "mamba", "*": "attention", "E": "moe", "-": "mlp", "P": "parallel"}
ROUTERS = ("softmax", "sigmoid")
ACTIVATIONS = ("relu2", "swiglu")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@dataclass
class EngineConfig:
    """Sizes and knobs of a hybrid model. Every field has a meaning in model.py; see docs/engine.md."""

    name: str = "custom"
    pattern: str = "M*E-"
    vocab_size: int = 256
    d_model: int = 64
    norm_eps: float = 1e-5
    # attention (GQA)
    n_heads: int = 4
    n_kv_heads: int = 2
    head_dim: int = 16
    rope: bool = False  # Nemotron-H and Jamba attention use no positional encoding; Falcon-H1 uses RoPE
    rope_theta: float = 10000.0
    # Mamba2
    mamba_heads: int = 4
    mamba_head_dim: int = 16
    ssm_state: int = 16
    n_groups: int = 2
    conv_kernel: int = 4
    chunk_size: int = 64
    # dense MLP and experts
    d_ff: int = 128
    activation: str = "relu2"  # relu2 (Nemotron-H: up, relu^2, down) | swiglu (gate, up, down)
    n_experts: int = 8
    top_k: int = 2
    d_expert: int = 32
    d_shared: int = 64  # shared expert width; 0 = no shared expert
    router: str = "sigmoid"  # softmax | sigmoid (with a correction bias used for selection only)
    norm_topk: bool = True
    routed_scale: float = 1.0
    capacity_factor: float | None = None  # None: no dropping
    # expert -> its own factor in every MoE layer, or (layer, expert) -> its factor in that layer alone
    capacity_overrides: dict[int | tuple[int, int], float] = field(default_factory=dict)
    # Engine fixes (docs/engine.md, "Fixes"), all off by default:
    route_imbalance_cap: float | None = None  # cap each MoE call's max/mean tokens per expert (second choice)
    a2a_separate_streams: bool = False  # EP: each all-to-all of a layer, and of consecutive layers, its own communicator
    skew: float = 0.0  # bias on skew_experts' logits, in logit std units (Router.set_skew)
    skew_experts: tuple[int, ...] = (0,)
    # runtime
    dtype: str = "float32"
    seed: int = 0
    init_std: float = 0.02
    max_seq_len: int = 512
    max_batch: int = 8  # request slots of the static caches

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise ValueError (one line) on an inconsistent configuration."""
        bad = sorted(set(self.pattern) - set(LAYER_CHARS))
        checks = [
            (not self.pattern or bad, f"pattern {self.pattern!r}: unknown layer characters {bad}"),
            (self.n_heads % self.n_kv_heads, f"n_heads={self.n_heads} not a multiple of n_kv_heads"),
            (self.mamba_heads % self.n_groups, f"mamba_heads={self.mamba_heads} not a multiple of n_groups"),
            (self.router not in ROUTERS, f"router must be one of {ROUTERS}, got {self.router!r}"),
            (self.activation not in ACTIVATIONS, f"activation must be one of {ACTIVATIONS}"),
            (self.dtype not in DTYPES, f"dtype must be one of {sorted(DTYPES)}, got {self.dtype!r}"),
            (not 1 <= self.top_k <= self.n_experts, f"top_k={self.top_k} outside 1..n_experts"),
            (any(not 0 <= e < self.n_experts for e in self.skew_experts), "skew_experts out of range"),
            (
                any(not 0 <= _override_expert(k) < self.n_experts for k in self.capacity_overrides),
                "capacity override expert out of range",
            ),
            (
                any(isinstance(k, tuple) and not 0 <= k[0] < len(self.pattern) for k in self.capacity_overrides),
                "capacity override layer out of range",
            ),
            (any(not f > 0 for f in self.capacity_overrides.values()), "capacity factors must be > 0"),
            (
                self.route_imbalance_cap is not None and not self.route_imbalance_cap >= 1.0,
                f"route_imbalance_cap={self.route_imbalance_cap} must be >= 1 (max/mean tokens per expert)",
            ),
            (self.rope and self.head_dim % 2, "rope needs an even head_dim"),
        ]
        for failed, message in checks:
            if failed:
                raise ValueError(f"EngineConfig {self.name}: {message}")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def d_inner(self) -> int:
        return self.mamba_heads * self.mamba_head_dim

    @property
    def conv_dim(self) -> int:
        return self.d_inner + 2 * self.n_groups * self.ssm_state

    def capacity_for_layer(self, layer: int) -> dict[int, float]:
        """Expert -> capacity factor override in MoE layer ``layer``: the per-layer keys win over the
        all-layer ones."""
        out = {k: f for k, f in self.capacity_overrides.items() if isinstance(k, int)}
        out.update({k[1]: f for k, f in self.capacity_overrides.items() if isinstance(k, tuple) and k[0] == layer})
        return out

    def layer_kinds(self) -> list[str]:
        return [LAYER_CHARS[c] for c in self.pattern]

    def count(self, chars: str) -> int:
        """Number of layers whose character is in ``chars`` (e.g. ``"*P"`` = layers with a KV cache)."""
        return sum(c in chars for c in self.pattern)

    def replace(self, **overrides) -> EngineConfig:
        return dataclasses.replace(self, **overrides)

    @classmethod
    def from_preset(cls, name: str, **overrides) -> EngineConfig:
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
        return cls(name=name, **{**PRESETS[name], **overrides})


def _override_expert(key) -> int:
    return key[1] if isinstance(key, tuple) else key


FIX_KNOBS = ("route_imbalance_cap", "a2a_separate_streams", "capacity_factor", "capacity_overrides")


def load_fixes(path) -> dict:
    """EngineConfig overrides from a fixes file (``hybridscope advise --emit fixes.toml``): the knobs of
    its ``[engine]`` table; ``[engine.capacity_overrides]`` keys are ``"LAYER/EXPERT"`` (one layer) or
    ``"EXPERT"`` (every layer). Raises ValueError (one line) on an unreadable file or an unknown knob."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        import tomli as tomllib
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ValueError(f"cannot read fixes file {path}: {e}") from None
    engine = doc.get("engine", {})
    unknown = sorted(set(engine) - set(FIX_KNOBS))
    if unknown:
        raise ValueError(f"fixes file {path}: unknown engine knobs {unknown}; known: {list(FIX_KNOBS)}")
    out = dict(engine)
    if "capacity_overrides" in out:
        out["capacity_overrides"] = {_parse_override_key(k, path): float(v)
                                     for k, v in out["capacity_overrides"].items()}
    return out


def _parse_override_key(key: str, path) -> int | tuple[int, int]:
    parts = str(key).split("/")
    if len(parts) > 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"fixes file {path}: capacity override key {key!r} is not 'LAYER/EXPERT' or 'EXPERT'")
    nums = tuple(int(p) for p in parts)
    return nums if len(nums) == 2 else nums[0]


# Nemotron 3 Nano 30B-A3B (config.json of nvidia/NVIDIA-Nemotron-3-Nano-30B-A3B-BF16): 52 layers
# "MEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEMEM*EMEMEMEME" (23 M, 23 E, 6 *), d_model 2688, 32 q / 2 kv
# heads of 128, Mamba2 64 heads x 64 with state 128 in 8 groups, 128 experts of 1856 (relu2), top-6,
# sigmoid router with correction bias, routed scale 2.5, one shared expert of 3712, vocab 131072.
NEMOTRON3_NANO_PATTERN = "MEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEM*EMEMEMEM*EMEMEMEME"

PRESETS: dict[str, dict] = {
    # CPU in seconds; every layer kind appears once or more.
    "tiny": {
        "pattern": "ME*EP-ME",
        "vocab_size": 256,
        "d_model": 64,
        "n_heads": 4,
        "n_kv_heads": 2,
        "head_dim": 16,
        "mamba_heads": 4,
        "mamba_head_dim": 16,
        "ssm_state": 16,
        "n_groups": 2,
        "chunk_size": 16,
        "d_ff": 128,
        "n_experts": 8,
        "top_k": 2,
        "d_expert": 32,
        "d_shared": 64,
        "max_seq_len": 256,
        "max_batch": 8,
    },
    # The real pattern and widths; 32 of the 128 experts so weights (~19 GB bf16) fit one GPU with
    # room for caches. Active bytes per token equal the real model's (top-6 + shared is unchanged).
    "nemotron3-nano-mini": {
        "pattern": NEMOTRON3_NANO_PATTERN,
        "vocab_size": 131072,
        "d_model": 2688,
        "n_heads": 32,
        "n_kv_heads": 2,
        "head_dim": 128,
        "mamba_heads": 64,
        "mamba_head_dim": 64,
        "ssm_state": 128,
        "n_groups": 8,
        "chunk_size": 128,
        "n_experts": 32,
        "top_k": 6,
        "d_expert": 1856,
        "d_shared": 3712,
        "router": "sigmoid",
        "routed_scale": 2.5,
        "activation": "relu2",
        "dtype": "bfloat16",
        "max_seq_len": 4096,
        "max_batch": 64,
    },
    # Jamba: 8-layer blocks, attention at offset 4, MoE every other layer (16 experts, top-2, softmax);
    # Mamba2 stands in for Jamba's Mamba1 (same state size 16).
    "jamba-mini": {
        "pattern": "M-MEM-ME*-MEM-ME" * 2,
        "vocab_size": 32000,
        "d_model": 1024,
        "n_heads": 16,
        "n_kv_heads": 4,
        "head_dim": 64,
        "mamba_heads": 32,
        "mamba_head_dim": 64,
        "ssm_state": 16,
        "n_groups": 1,
        "chunk_size": 128,
        "d_ff": 2048,
        "activation": "swiglu",
        "n_experts": 16,
        "top_k": 2,
        "d_expert": 2048,
        "d_shared": 0,
        "router": "softmax",
        "norm_topk": False,
        "dtype": "bfloat16",
        "max_seq_len": 4096,
        "max_batch": 64,
    },
    # Falcon-H1-0.5B-like: every layer a parallel attention+SSM mixer followed by a SwiGLU MLP, RoPE.
    "falcon-h1-mini": {
        "pattern": "P-" * 12,
        "vocab_size": 32768,
        "d_model": 1024,
        "n_heads": 8,
        "n_kv_heads": 2,
        "head_dim": 64,
        "rope": True,
        "rope_theta": 1e11,
        "mamba_heads": 24,
        "mamba_head_dim": 64,
        "ssm_state": 128,
        "n_groups": 1,
        "chunk_size": 128,
        "d_ff": 2048,
        "activation": "swiglu",
        "n_experts": 1,
        "top_k": 1,
        "d_shared": 0,
        "dtype": "bfloat16",
        "max_seq_len": 4096,
        "max_batch": 64,
    },
}
