"""The closed vocabulary of layer types: every attributed GPU event ends with exactly one.

The seed's three rows (Mamba SSM, Transformer attention, MoE all-to-all) are `mamba`,
`attention` and `moe_comm`; `COARSE` folds the rest for a three-plus-other view.
"""

from __future__ import annotations

LAYER_TYPES: dict[str, str] = {
    # the recurrent family: any mixer that carries a state instead of a KV cache (docs/attribution.md)
    "mamba": ("Mamba / SSM and other recurrent mixers (delta rule, linear / lightning attention, RG-LRU, RWKV "
              "time-mix, mLSTM, short causal conv): in-projection, conv, scan / recurrence, gating, out-projection"),
    "attention": "self-attention: QKV projection, rotary, attention kernel, KV-cache writes, out-projection",
    "moe_router": "MoE gate: router logits, top-k, softmax/sigmoid, token permutation bookkeeping",
    "moe_experts": ("MoE expert computation: single-process dispatch / combine (sort, gather, scatter by "
                    "expert), grouped / per-expert GEMMs, activation, shared expert"),
    "moe_comm": "MoE token movement between ranks only: dispatch / combine all-to-all, all-gather, reduce-scatter",
    "mlp": "dense feed-forward block outside MoE",
    "norm": "RMSNorm / LayerNorm between blocks",
    "embedding": "token embedding lookup",
    "lm_head": "final projection to the vocabulary and logits processing",
    "sampling": "token selection: top-k/top-p, argmax, multinomial",
    "comm": "collectives outside MoE (tensor-parallel all-reduce, barriers)",
    "memory": "memcpy / memset not owned by a layer",
    "other": "everything not attributed to one of the above",
}

# Order in which tables list layer types: the three seed rows first.
ORDER: tuple[str, ...] = tuple(LAYER_TYPES)
_POSITION = {t: i for i, t in enumerate(ORDER)}


def order_key(layer_type: str | None) -> tuple[int, str]:
    """The sort key that lists layer types in ORDER, and after them, by name, those outside the
    vocabulary (a store may hold any: an import keeps what it was given)."""
    return _POSITION.get(layer_type, len(ORDER)), layer_type or ""


# The coarse view: the seed's three rows, the rest of MoE, and everything else folded.
COARSE: dict[str, str] = {
    "mamba": "mamba",
    "attention": "attention",
    "moe_comm": "moe_comm",
    "moe_router": "moe_compute",
    "moe_experts": "moe_compute",
}


def coarse(layer_type: str) -> str:
    return COARSE.get(layer_type, "other")


def check(layer_type: str) -> str:
    """Return `layer_type` if it belongs to the vocabulary; raise ValueError otherwise."""
    if layer_type not in LAYER_TYPES:
        raise ValueError(f"unknown layer type {layer_type!r}; known: {', '.join(ORDER)}")
    return layer_type
