"""Triton kernels for Mamba2's causal depthwise conv1d: prefill over packed sequences, final conv
states, and the decode update. Each token finds its sequence by binary search in cu_seqlens inside the
kernel, so the launchers run no PyTorch op but allocations and never sync with the host. Channels are the vector dimension (x is [T, D], D contiguous); the
K taps are unrolled. Imported only when the Triton backend is chosen.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl


@triton.jit
def _silu(v):
    return v / (1.0 + tl.exp(-v))


@triton.jit
def _seq_of_token(cu_ptr, S, t, LOG_S: tl.constexpr):
    """Binary search: the largest s < S with cu[s] <= t (empty sequences are skipped by construction)."""
    lo = tl.zeros_like(t)
    hi = lo + (S - 1)
    for _ in tl.static_range(LOG_S):
        mid = (lo + hi + 1) // 2
        go = tl.load(cu_ptr + mid) <= t
        lo = tl.where(go, mid, lo)
        hi = tl.where(go, hi, mid - 1)
    return lo


@triton.jit
def causal_conv1d_fwd_kernel(
    x_ptr, w_ptr, bias_ptr, cu_ptr, init_ptr, y_ptr,
    T, S, Dm,
    x_t, x_d, w_d, w_k, i_s, i_d, i_k, y_t, y_d,
    KW: tl.constexpr, HAS_BIAS: tl.constexpr, HAS_INIT: tl.constexpr, SILU: tl.constexpr,
    LOG_S: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_D: tl.constexpr,
):
    offs_t = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    mt, md = offs_t < T, offs_d < Dm
    seq = _seq_of_token(cu_ptr, S, tl.minimum(offs_t, T - 1), LOG_S)
    pos = offs_t - tl.load(cu_ptr + seq)  # position within its sequence
    acc = tl.zeros((BLOCK_T, BLOCK_D), dtype=tl.float32)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_d, mask=md, other=0.0).to(tl.float32)[None, :]
    for k in tl.static_range(KW):
        src = pos - (KW - 1) + k  # source position; < 0 reads the sequence's conv state
        w = tl.load(w_ptr + offs_d * w_d + k * w_k, mask=md, other=0.0).to(tl.float32)
        in_x = (mt & (src >= 0))[:, None] & md[None, :]
        v = tl.load(x_ptr + (offs_t - (KW - 1) + k)[:, None] * x_t + offs_d[None, :] * x_d, mask=in_x, other=0.0)
        if HAS_INIT:
            in_s = (mt & (src < 0))[:, None] & md[None, :]
            sp = init_ptr + seq[:, None].to(tl.int64) * i_s + offs_d[None, :] * i_d + (KW - 1 + src)[:, None] * i_k
            v += tl.load(sp, mask=in_s, other=0.0)
        acc += v.to(tl.float32) * w[None, :]
    if SILU:
        acc = _silu(acc)
    tl.store(y_ptr + offs_t[:, None] * y_t + offs_d[None, :] * y_d, acc.to(y_ptr.dtype.element_ty),
             mask=mt[:, None] & md[None, :])


@triton.jit
def causal_conv1d_final_state_kernel(
    x_ptr, cu_ptr, init_ptr, out_ptr, Dm,
    x_t, x_d, i_s, i_d, i_k, o_s, o_d, o_k,
    KW: tl.constexpr, HAS_INIT: tl.constexpr, BLOCK_D: tl.constexpr,
):
    s = tl.program_id(0)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    md = offs_d < Dm
    start = tl.load(cu_ptr + s)
    n = tl.load(cu_ptr + s + 1) - start
    for j in tl.static_range(KW - 1):
        # the last K-1 inputs; before the sequence's start they come from the initial state
        src = tl.full((BLOCK_D,), 0, tl.int32) + (n - (KW - 1) + j)
        v = tl.load(x_ptr + (start + src) * x_t + offs_d * x_d, mask=md & (src >= 0), other=0.0)
        if HAS_INIT:
            v += tl.load(init_ptr + s * i_s + offs_d * i_d + (KW - 1 + src) * i_k, mask=md & (src < 0), other=0.0)
        tl.store(out_ptr + s * o_s + offs_d * o_d + j * o_k, v.to(out_ptr.dtype.element_ty), mask=md)


@triton.jit
def causal_conv1d_update_kernel(
    state_ptr, x_ptr, w_ptr, bias_ptr, y_ptr, Dm,
    st_s, st_d, st_k, x_s, x_d, w_d, w_k, y_s, y_d,
    KW: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr, BLOCK_D: tl.constexpr,
):
    s = tl.program_id(0)
    offs_d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    md = offs_d < Dm
    acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + offs_d, mask=md, other=0.0).to(tl.float32)
    sbase = state_ptr + s * st_s + offs_d * st_d
    for j in tl.static_range(KW - 1):
        v = tl.load(sbase + j * st_k, mask=md, other=0.0)
        acc += v.to(tl.float32) * tl.load(w_ptr + offs_d * w_d + j * w_k, mask=md, other=0.0).to(tl.float32)
        if j > 0:  # shift left; the same thread read column j-1 already, so no barrier is needed
            tl.store(sbase + (j - 1) * st_k, v, mask=md)
    x = tl.load(x_ptr + s * x_s + offs_d * x_d, mask=md, other=0.0)
    acc += x.to(tl.float32) * tl.load(w_ptr + offs_d * w_d + (KW - 1) * w_k, mask=md, other=0.0).to(tl.float32)
    tl.store(sbase + (KW - 2) * st_k, x.to(state_ptr.dtype.element_ty), mask=md)
    if SILU:
        acc = _silu(acc)
    tl.store(y_ptr + s * y_s + offs_d * y_d, acc.to(y_ptr.dtype.element_ty), mask=md)


def causal_conv1d_triton(x, weight, bias, cu_seqlens, initial_conv_states, activation):
    """Launcher for prefill; arguments already checked by ``causal_conv1d``."""
    T, Dm = x.shape
    KW = weight.shape[1]
    cu = cu_seqlens.to(x.device, torch.int32)
    S = cu.numel() - 1
    y = torch.empty_like(x)
    final = torch.empty(S, Dm, KW - 1, device=x.device, dtype=x.dtype)
    init = initial_conv_states
    istr = init.stride() if init is not None else (0, 0, 0)
    bt, bd = 32, min(128, triton.next_power_of_2(Dm))
    if T > 0:
        causal_conv1d_fwd_kernel[(triton.cdiv(T, bt), triton.cdiv(Dm, bd))](
            x, weight, bias if bias is not None else weight, cu, init if init is not None else x, y,
            T, S, Dm, *x.stride(), *weight.stride(), *istr, *y.stride(),
            KW=KW, HAS_BIAS=bias is not None, HAS_INIT=init is not None, SILU=activation == "silu",
            LOG_S=max(1, (S - 1).bit_length()), BLOCK_T=bt, BLOCK_D=bd, num_warps=4,
        )
    causal_conv1d_final_state_kernel[(S, triton.cdiv(Dm, bd))](
        x, cu, init if init is not None else x, final, Dm, *x.stride(), *istr, *final.stride(),
        KW=KW, HAS_INIT=init is not None, BLOCK_D=bd, num_warps=4,
    )
    return y, final


def causal_conv1d_update_triton(conv_state, x, weight, bias, activation):
    """Launcher for decode; arguments already checked by ``causal_conv1d_update``."""
    S, Dm = x.shape
    y = torch.empty_like(x)
    bd = min(256, triton.next_power_of_2(Dm))
    causal_conv1d_update_kernel[(S, triton.cdiv(Dm, bd))](
        conv_state, x, weight, bias if bias is not None else weight, y, Dm,
        *conv_state.stride(), *x.stride(), *weight.stride(), *y.stride(),
        KW=weight.shape[1], HAS_BIAS=bias is not None, SILU=activation == "silu", BLOCK_D=bd, num_warps=4,
    )
    return y
