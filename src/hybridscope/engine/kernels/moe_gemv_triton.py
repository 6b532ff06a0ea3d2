"""Triton kernels for MoE decode (``moe_route``, ``moe_experts_gemv``); imported only when chosen.

``moe_route_kernel``: one program per block of tokens; top-k by k rounds of row max (ties to the lower
id), weights renormalized in registers; tokens per expert added to ``load`` with atomics (integer
counts in fp32: exact, so order-independent), or stored when one program covers every token.

``moe_grouped_gemv_up_kernel``: one program per (block of hidden rows, slot j, token t); slot j < k
reads expert ids[t, j]'s up matrix, slot k the shared expert's; computes act(W x_t) for its rows
(relu2, or swiglu with the gate rows and the matching up rows side by side) and writes it to
h [T, k*I + I_s]. Programs past a slot's hidden width exit at once (the shared expert is wider).
``moe_grouped_gemv_down_kernel``: one program per (block of output features, token); loops over
the k routed slots and the shared one, each a GEMV of down_e against its slice of h, weighted by the
routing weight (1 for the shared expert), fp32 accumulation, one rounding at the store.
Memory-bound: each selected weight byte is read once; ``CONFIG`` holds the block sizes.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .checks import check_gemv_args, check_route_args

# block sizes: rows (hidden units / output features) per program, reduction chunk, warps. The fastest of
# benchmarks/bench_engine.py --moe-sweep on an H100 (nemotron3-nano-mini, batch 1; docs/benchmarks.md)
CONFIG = {"up": (16, 1024, 8), "down": (8, 1024, 4)}


@triton.jit
def moe_route_kernel(
    logits_ptr, bias_ptr, logits_out_ptr, w_ptr, ids_ptr, load_ptr,
    T, E, scale, l_t, l_e,
    SIGMOID: tl.constexpr, NORM: tl.constexpr, TOP_K: tl.constexpr,
    BLOCK_T: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_K: tl.constexpr, ATOMIC: tl.constexpr,
):
    rows = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    cols = tl.arange(0, BLOCK_E)
    kcols = tl.arange(0, BLOCK_K)
    mr, mc = rows < T, cols < E
    m2 = mr[:, None] & mc[None, :]
    lg = tl.load(logits_ptr + rows[:, None] * l_t + cols[None, :] * l_e, mask=m2, other=0.0).to(tl.float32)
    tl.store(logits_out_ptr + rows[:, None] * E + cols[None, :], lg, mask=m2)
    if SIGMOID:
        score = tl.sigmoid(lg)
        sel = score + tl.load(bias_ptr + cols, mask=mc, other=0.0).to(tl.float32)[None, :]
    else:
        lm = tl.where(mc[None, :], lg, float("-inf"))
        ex = tl.exp(lm - tl.max(lm, 1)[:, None])
        score = ex / tl.sum(ex, 1)[:, None]
        sel = score
    sel = tl.where(mc[None, :], sel, float("-inf"))
    wt = tl.zeros([BLOCK_T, BLOCK_K], dtype=tl.float32)
    it = tl.zeros([BLOCK_T, BLOCK_K], dtype=tl.int64)
    cnt = tl.zeros([BLOCK_E], dtype=tl.float32)
    for j in tl.static_range(TOP_K):
        best = tl.max(sel, 1)
        idx = tl.min(tl.where(sel == best[:, None], cols[None, :], BLOCK_E), 1)  # lowest id among ties
        hit = cols[None, :] == idx[:, None]
        w = tl.sum(tl.where(hit, score, 0.0), 1)
        wt = tl.where(kcols[None, :] == j, w[:, None], wt)
        it = tl.where(kcols[None, :] == j, idx[:, None].to(tl.int64), it)
        cnt += tl.sum(tl.where(hit & mr[:, None], 1.0, 0.0), 0)
        sel = tl.where(hit, float("-inf"), sel)
    if NORM:
        wt = wt / tl.maximum(tl.sum(wt, 1), 1e-20)[:, None]
    mk = mr[:, None] & (kcols[None, :] < TOP_K)
    tl.store(w_ptr + rows[:, None] * TOP_K + kcols[None, :], (wt * scale).to(tl.float32), mask=mk)
    tl.store(ids_ptr + rows[:, None] * TOP_K + kcols[None, :], it, mask=mk)
    if ATOMIC:
        tl.atomic_add(load_ptr + cols, cnt, mask=mc)
    else:
        tl.store(load_ptr + cols, cnt, mask=mc)


def moe_route_triton(logits, correction_bias, kind, top_k, norm_topk, scale, load=None):
    """Launcher: same contract as ``moe_route``."""
    T, E = check_route_args(logits, correction_bias, kind, top_k, load)
    dev = logits.device
    block_e = max(16, triton.next_power_of_2(E))
    block_t = max(1, min(16, 2048 // block_e))
    grid = triton.cdiv(T, block_t)
    if load is None:
        load = torch.empty(E, dtype=torch.float32, device=dev)
    if grid > 1:  # decode (one program) stores its counts; prefill blocks add them up
        load.zero_()
    weights = torch.empty(T, top_k, dtype=torch.float32, device=dev)
    ids = torch.empty(T, top_k, dtype=torch.int64, device=dev)
    out = torch.empty(T, E, dtype=torch.float32, device=dev)
    moe_route_kernel[(grid,)](
        logits, correction_bias, out, weights, ids, load,
        T, E, float(scale), *logits.stride(),
        SIGMOID=kind == "sigmoid", NORM=bool(norm_topk), TOP_K=top_k,
        BLOCK_T=block_t, BLOCK_E=block_e, BLOCK_K=max(2, triton.next_power_of_2(top_k)), ATOMIC=grid > 1,
        num_warps=4,
    )
    return weights, ids, load, out


@triton.jit
def moe_grouped_gemv_up_kernel(
    x_ptr, ids_ptr, wu_ptr, su_ptr, h_ptr,
    D, I, IS, stride_we, stride_wr, stride_sr, x_t, h_t,
    TOP_K: tl.constexpr, SWIGLU: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    nb, j, t = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    if j < TOP_K:
        e = tl.load(ids_ptr + t * TOP_K + j)
        base = wu_ptr + e * stride_we
        rows = I
        srow = stride_wr
        hoff = j * I
    else:
        base = su_ptr
        rows = IS
        srow = stride_sr
        hoff = TOP_K * I
    if nb * BLOCK_N < rows:
        n = nb * BLOCK_N + tl.arange(0, BLOCK_N)
        mn = n < rows
        # 2-D accumulators, reduced once after the loop (no cross-lane reduction per chunk)
        acc2d = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
        gate2d = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
        for k0 in range(0, D, BLOCK_K):
            kk = k0 + tl.arange(0, BLOCK_K)
            mk = kk < D
            xv = tl.load(x_ptr + t * x_t + kk, mask=mk, other=0.0).to(tl.float32)
            m2 = mn[:, None] & mk[None, :]
            w = tl.load(base + n[:, None].to(tl.int64) * srow + kk[None, :], mask=m2, other=0.0)
            acc2d += w.to(tl.float32) * xv[None, :]
            if SWIGLU:
                w2 = tl.load(base + (n[:, None] + rows).to(tl.int64) * srow + kk[None, :], mask=m2, other=0.0)
                gate2d += w2.to(tl.float32) * xv[None, :]
        acc = tl.sum(acc2d, 1)
        acc2 = tl.sum(gate2d, 1)
        if SWIGLU:
            h = acc * tl.sigmoid(acc) * acc2
        else:
            h = tl.maximum(acc, 0.0)
            h = h * h
        tl.store(h_ptr + t * h_t + hoff + n, h.to(h_ptr.dtype.element_ty), mask=mn)


@triton.jit
def moe_grouped_gemv_down_kernel(
    h_ptr, ids_ptr, wd_ptr, sd_ptr, part_ptr,
    D, I, IS, stride_de, stride_dn, stride_sn, h_t,
    TOP_K: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    nb, j, t = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    if j < TOP_K:
        e = tl.load(ids_ptr + t * TOP_K + j)
        base = wd_ptr + e * stride_de
        inner = I
        srow = stride_dn
        hoff = j * I
    else:
        base = sd_ptr
        inner = IS
        srow = stride_sn
        hoff = TOP_K * I
    n = nb * BLOCK_N + tl.arange(0, BLOCK_N)
    mn = n < D
    acc2d = tl.zeros([BLOCK_N, BLOCK_K], dtype=tl.float32)
    for k0 in range(0, inner, BLOCK_K):
        kk = k0 + tl.arange(0, BLOCK_K)
        mk = kk < inner
        hv = tl.load(h_ptr + t * h_t + hoff + kk, mask=mk, other=0.0).to(tl.float32)
        w = tl.load(base + n[:, None].to(tl.int64) * srow + kk[None, :], mask=mn[:, None] & mk[None, :], other=0.0)
        acc2d += w.to(tl.float32) * hv[None, :]
    tl.store(part_ptr + (t * tl.num_programs(1) + j) * D + n, tl.sum(acc2d, 1), mask=mn)


@triton.jit
def moe_grouped_gemv_combine_kernel(
    part_ptr, wts_ptr, res_ptr, out_ptr, D, res_t, out_t,
    TOP_K: tl.constexpr, SLOTS: tl.constexpr, HAS_RES: tl.constexpr, BLOCK_N: tl.constexpr,
):
    nb, t = tl.program_id(0), tl.program_id(1).to(tl.int64)
    n = nb * BLOCK_N + tl.arange(0, BLOCK_N)
    mn = n < D
    acc = tl.zeros([BLOCK_N], dtype=tl.float32)
    for j in tl.static_range(SLOTS):
        p = tl.load(part_ptr + (t * SLOTS + j) * D + n, mask=mn, other=0.0)
        if j < TOP_K:
            acc += tl.load(wts_ptr + t * TOP_K + j) * p
        else:
            acc += p
    if HAS_RES:
        acc += tl.load(res_ptr + t * res_t + n, mask=mn, other=0.0).to(tl.float32)
    tl.store(out_ptr + t * out_t + n, acc.to(out_ptr.dtype.element_ty), mask=mn)


def moe_experts_gemv_triton(x, ids, weights, w_up, w_down, activation, shared_up=None, shared_down=None,
                            residual=None):
    """Launcher: same contract as ``moe_experts_gemv``. Weight rows must be contiguous along d / I."""
    T, d, k, _, I, Is = check_gemv_args(x, ids, weights, w_up, w_down, activation, shared_up, shared_down,
                                        residual)
    for t in (w_up, w_down, shared_up, shared_down, residual):
        if t is not None and t.stride(-1) != 1:
            raise ValueError("moe_experts_gemv: weights and residual must be contiguous in their last dim")
    x = x if x.stride(-1) == 1 else x.contiguous()
    ids, weights = ids.contiguous(), weights.float().contiguous()
    has_sh = shared_up is not None
    su, sd = (shared_up, shared_down) if has_sh else (w_up, w_down)  # dummies, never read
    h = torch.empty(T, k * I + Is, dtype=x.dtype, device=x.device)
    y = torch.empty(T, d, dtype=x.dtype, device=x.device)
    bn, bk, warps = CONFIG["up"]
    grid = (triton.cdiv(max(I, Is), bn), k + has_sh, T)
    moe_grouped_gemv_up_kernel[grid](
        x, ids, w_up, su, h,
        d, I, Is, w_up.stride(0), w_up.stride(1), su.stride(0), x.stride(0), h.stride(0),
        TOP_K=k, SWIGLU=activation == "swiglu", BLOCK_N=bn, BLOCK_K=bk, num_warps=warps,
    )
    bn, bk, warps = CONFIG["down"]
    slots = k + has_sh
    part = torch.empty(T, slots, d, dtype=torch.float32, device=x.device)
    moe_grouped_gemv_down_kernel[(triton.cdiv(d, bn), slots, T)](
        h, ids, w_down, sd, part,
        d, I, Is, w_down.stride(0), w_down.stride(1), sd.stride(0), h.stride(0),
        TOP_K=k, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps,
    )
    res = residual if residual is not None else y  # dummy, never read
    moe_grouped_gemv_combine_kernel[(triton.cdiv(d, 1024), T)](
        part, weights, res, y, d, res.stride(0), y.stride(0),
        TOP_K=k, SLOTS=slots, HAS_RES=residual is not None, BLOCK_N=1024, num_warps=4,
    )
    return y
