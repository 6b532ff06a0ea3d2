"""Attention decode over the slot-based KV cache: one new token per row, GQA, the new K/V appended.

    attn_decode(q, k_new, v_new, k_cache, v_cache, positions, kv_len, scale=None) -> o [B, Hq, D]

Row b is cache slot b (the engine's dense decode). It writes k_new[b] / v_new[b] at position
positions[b] of slot b, then attends q[b] (Hq heads; head h reads KV head h // (Hq / Hkv)) to keys
0..positions[b] of its slot, inside the window ``kv_len`` (callers keep positions < kv_len <= L).
Shapes: q [B, Hq, D]; k_new, v_new [B, Hkv, D]; k_cache, v_cache [slots >= B, Hkv, L, D]; positions
[B] int64. Dispatch (``_backend``): the split-KV (flash-decoding) Triton kernels of
attn_decode_triton.py on CUDA, else ``attn_decode_ref`` (PyTorch, fp32 softmax).
"""

from __future__ import annotations

import math

import torch

from ._backend import select_backend
from .checks import check_attn_args


def attn_decode(q, k_new, v_new, k_cache, v_cache, positions, kv_len: int, scale: float | None = None, *,
                backend=None):
    """One decode step of GQA attention with the KV append (see the module docstring)."""
    check_attn_args(q, k_new, v_new, k_cache, v_cache, positions, kv_len)
    if select_backend("attn_decode", q, backend) == "triton":
        from .attn_decode_triton import attn_decode_triton

        return attn_decode_triton(q, k_new, v_new, k_cache, v_cache, positions, kv_len, scale)
    return attn_decode_ref(q, k_new, v_new, k_cache, v_cache, positions, kv_len, scale)


def attn_decode_ref(q, k_new, v_new, k_cache, v_cache, positions, kv_len: int, scale: float | None = None):
    """PyTorch reference of ``attn_decode`` (same contract; scores and softmax in fp32)."""
    B, Hq, Hkv, D = check_attn_args(q, k_new, v_new, k_cache, v_cache, positions, kv_len)
    rows = torch.arange(B, device=q.device)
    k_cache[rows, :, positions] = k_new
    v_cache[rows, :, positions] = v_new
    kc, vc = k_cache[:B, :, :kv_len].float(), v_cache[:B, :, :kv_len].float()  # [B, Hkv, W, D]
    qg = q.float().view(B, Hkv, Hq // Hkv, D)
    s = torch.einsum("bhgd,bhld->bhgl", qg, kc) * (scale if scale is not None else 1 / math.sqrt(D))
    mask = torch.arange(kv_len, device=q.device) <= positions[:, None]  # [B, W]
    p = torch.softmax(s.masked_fill(~mask[:, None, None], float("-inf")), dim=-1)
    return torch.einsum("bhgl,bhld->bhgd", p, vc).reshape(B, Hq, D).to(q.dtype)
