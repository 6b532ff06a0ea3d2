"""Triton split-KV (flash-decoding) kernels for ``attn_decode``; imported only when chosen.

``attn_decode_splitkv_kernel``: one program per (KV split, KV head, row); the G query heads that
share the KV head are the rows of one tile, so each K/V byte is read once per step. A program walks
its split's keys up to the row's position in BLOCK_L tiles with an online softmax and writes a
partial (max, sum, un-normalized output) in fp32; the program whose split holds the position takes
the new key/value from registers and appends them to the cache. ``attn_decode_combine_kernel``
merges the partials of each (row, query head). Splits are sized from the static window ``kv_len``
so the grid is the same at every step of a CUDA graph; splits past a row's position exit at once.
"""

from __future__ import annotations

import functools
import math

import torch
import triton
import triton.language as tl

from .checks import check_attn_args

BLOCK_L = 64  # keys per tile


@functools.lru_cache(maxsize=8)
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


@triton.jit
def attn_decode_splitkv_kernel(
    q_ptr, kn_ptr, vn_ptr, kc_ptr, vc_ptr, pos_ptr, part_ptr, ml_ptr,
    G, D, SPLIT, n_splits, scale,
    q_b, q_h, kn_b, kn_h, vn_b, vn_h, c_b, c_h, c_l,
    BLOCK_G: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_L: tl.constexpr, IEEE: tl.constexpr,
):
    sp, h, b = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    pos = tl.load(pos_ptr + b)
    start = sp * SPLIT
    g = tl.arange(0, BLOCK_G)
    d = tl.arange(0, BLOCK_D)
    mg, md = g < G, d < D
    heads = h * G + g
    q = tl.load(q_ptr + b * q_b + heads[:, None] * q_h + d[None, :], mask=mg[:, None] & md[None, :], other=0.0)
    m_i = tl.full([BLOCK_G], float("-inf"), dtype=tl.float32)
    l_i = tl.zeros([BLOCK_G], dtype=tl.float32)
    acc = tl.zeros([BLOCK_G, BLOCK_D], dtype=tl.float32)
    if start <= pos:
        kn = tl.load(kn_ptr + b * kn_b + h * kn_h + d, mask=md, other=0.0)
        vn = tl.load(vn_ptr + b * vn_b + h * vn_h + d, mask=md, other=0.0)
        cache = b * c_b + h * c_h
        end = tl.minimum(start + SPLIT, pos + 1)
        for l0 in range(start, end, BLOCK_L):
            offs = l0 + tl.arange(0, BLOCK_L)
            ml = offs < end
            old = ml & (offs != pos)
            ptrs = cache + offs[:, None] * c_l + d[None, :]
            k = tl.load(kc_ptr + ptrs, mask=old[:, None] & md[None, :], other=0.0)
            k = tl.where((offs == pos)[:, None], kn[None, :], k)
            if IEEE:
                s = tl.dot(q, tl.trans(k), input_precision="ieee")
            else:
                s = tl.dot(q, tl.trans(k))
            # the cast keeps the loop-carried state fp32 when a caller (Inductor) passes scale as fp64
            s = tl.where(ml[None, :], (s * scale).to(tl.float32), float("-inf"))
            m_new = tl.maximum(m_i, tl.max(s, 1))
            p = tl.exp(s - m_new[:, None])
            alpha = tl.exp(m_i - m_new)
            l_i = l_i * alpha + tl.sum(p, 1)
            v = tl.load(vc_ptr + ptrs, mask=old[:, None] & md[None, :], other=0.0)
            v = tl.where((offs == pos)[:, None], vn[None, :], v)
            if IEEE:
                acc = acc * alpha[:, None] + tl.dot(p, v.to(tl.float32), input_precision="ieee")
            else:
                acc = acc * alpha[:, None] + tl.dot(p.to(v.dtype), v)
            m_i = m_new
        if pos < start + SPLIT:  # this split holds the new token: append it to the cache
            tl.store(kc_ptr + cache + pos * c_l + d, kn, mask=md)
            tl.store(vc_ptr + cache + pos * c_l + d, vn, mask=md)
    # partials: part [B, Hq, n_splits, D] fp32, ml [B, Hq, n_splits, 2] fp32
    row = (b * (G * tl.num_programs(1)) + heads) * n_splits + sp
    tl.store(part_ptr + row[:, None] * D + d[None, :], acc, mask=mg[:, None] & md[None, :])
    tl.store(ml_ptr + row * 2, m_i, mask=mg)
    tl.store(ml_ptr + row * 2 + 1, l_i, mask=mg)


@triton.jit
def attn_decode_combine_kernel(
    part_ptr, ml_ptr, o_ptr, D, n_splits, o_b, o_h,
    BLOCK_S: tl.constexpr, BLOCK_D: tl.constexpr,
):
    hq, b = tl.program_id(0), tl.program_id(1).to(tl.int64)
    row0 = (b * tl.num_programs(0) + hq) * n_splits
    s = tl.arange(0, BLOCK_S)
    d = tl.arange(0, BLOCK_D)
    ms, md = s < n_splits, d < D
    m = tl.load(ml_ptr + (row0 + s) * 2, mask=ms, other=float("-inf"))
    lsum = tl.load(ml_ptr + (row0 + s) * 2 + 1, mask=ms, other=0.0)
    mx = tl.max(m, 0)  # finite: split 0 always holds key 0
    w = tl.where(ms & (m > float("-inf")), tl.exp(m - mx), 0.0)
    part = tl.load(part_ptr + (row0 + s)[:, None] * D + d[None, :], mask=ms[:, None] & md[None, :], other=0.0)
    o = tl.sum(part * w[:, None], 0) / tl.sum(lsum * w, 0)
    tl.store(o_ptr + b * o_b + hq * o_h + d, o.to(o_ptr.dtype.element_ty), mask=md)


def _split_size(kv_len: int, programs_per_split: int, sms: int) -> int:
    """Keys per split: a multiple of BLOCK_L, small enough that ~2 programs per SM cover the window."""
    want = max(1, 2 * sms // max(1, programs_per_split))
    return BLOCK_L * max(1, triton.cdiv(triton.cdiv(kv_len, want), BLOCK_L))


def attn_decode_triton(q, k_new, v_new, k_cache, v_cache, positions, kv_len: int, scale: float | None = None):
    """Launcher: same contract as ``attn_decode``. The head dim must be contiguous everywhere."""
    B, Hq, Hkv, D = check_attn_args(q, k_new, v_new, k_cache, v_cache, positions, kv_len)
    if any(t.stride(-1) != 1 for t in (q, k_new, v_new, k_cache, v_cache)):
        raise ValueError("attn_decode: the head dimension must be contiguous")
    if k_cache.stride() != v_cache.stride():
        raise ValueError("attn_decode: k_cache and v_cache must share a layout")
    G = Hq // Hkv
    sms = _sm_count(q.device.index or 0) if q.is_cuda else 4
    split = _split_size(kv_len, B * Hkv, sms)
    n_splits = triton.cdiv(kv_len, split)
    part = torch.empty(B, Hq, n_splits, D, dtype=torch.float32, device=q.device)
    ml = torch.empty(B, Hq, n_splits, 2, dtype=torch.float32, device=q.device)
    o = torch.empty(B, Hq, D, dtype=q.dtype, device=q.device)
    block_d = max(16, triton.next_power_of_2(D))
    attn_decode_splitkv_kernel[(n_splits, Hkv, B)](
        q, k_new, v_new, k_cache, v_cache, positions, part, ml,
        G, D, split, n_splits, float(scale if scale is not None else 1 / math.sqrt(D)),
        q.stride(0), q.stride(1), k_new.stride(0), k_new.stride(1), v_new.stride(0), v_new.stride(1),
        k_cache.stride(0), k_cache.stride(1), k_cache.stride(2),
        BLOCK_G=max(16, triton.next_power_of_2(G)), BLOCK_D=block_d, BLOCK_L=BLOCK_L,
        IEEE=q.dtype == torch.float32, num_warps=4,
    )
    attn_decode_combine_kernel[(Hq, B)](
        part, ml, o, D, n_splits, o.stride(0), o.stride(1),
        BLOCK_S=max(2, triton.next_power_of_2(n_splits)), BLOCK_D=block_d, num_warps=4,
    )
    return o
