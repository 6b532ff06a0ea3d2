"""Triton kernels for the Mamba2 SSD prefill scan over packed variable-length sequences.

Chunks never straddle sequences: each sequence is cut into its own chunks of ``chunk_size`` tokens
(the last one partial). The chunk table is derived inside the kernels from cu_seqlens, so the launcher
runs no PyTorch op but allocations and never syncs with the host (the grid uses the bound
floor(T / chunk) + S; spare chunks have length 0). Four kernels, as in mamba_ssm:
  ssd_chunk_cumsum_kernel   chunk table; dA_cumsum[h, c, l] = sum_{j<=l} dt_j A_h within chunk c
  ssd_chunk_state_kernel    each chunk's end state from zero: sum_l x_l ⊗ B_l dt_l exp(dA_end - dA_l)
  ssd_state_passing_kernel  per sequence, in chunk order: state entering each chunk, final state
  ssd_chunk_scan_kernel     y = C·(entering state) exp(dA_l) + causal (C B^T ∘ decay) (dt x) + D x
Matmul operands are in the input dtype (fp32 inputs use IEEE fp32 dots), accumulation in fp32; the
states entering each chunk are kept in the input dtype too (as mamba_ssm does), the final states in fp32.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .checks import check_scan_args

# Launch parameters. Results do not depend on them; benchmarks/bench_kernels.py sweeps them.
CONFIG = {"scan_warps": 4, "scan_block_m": 64, "state_warps": 4, "state_block_n": 128, "stages": 2}


@triton.jit
def _chunk_counts(cu_ptr, S, CS: tl.constexpr, BLOCK_S: tl.constexpr):
    """Per sequence (vector over BLOCK_S >= S): first token, chunk count, cumulative chunk count."""
    offs = tl.arange(0, BLOCK_S)
    m = offs < S
    lo = tl.load(cu_ptr + offs, mask=m, other=0)
    hi = tl.load(cu_ptr + offs + 1, mask=m, other=0)
    nch = (hi - lo + CS - 1) // CS
    return offs, lo, hi, nch, tl.cumsum(nch, axis=0)


@triton.jit
def ssd_chunk_cumsum_kernel(
    dt_ptr, A_ptr, cu_ptr, meta_ptr, dacs_ptr, H, S, NC, dt_t, dt_h,
    CS: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_S: tl.constexpr,
):
    c = tl.program_id(0)
    offs_h = tl.program_id(1) * BLOCK_H + tl.arange(0, BLOCK_H)
    offs_l = tl.arange(0, CS)
    # chunk table: chunk c belongs to the first sequence whose cumulative chunk count exceeds c
    offs_s, lo, hi, nch, ends = _chunk_counts(cu_ptr, S, CS, BLOCK_S)
    seq = tl.sum(((ends <= c) & (offs_s < S)).to(tl.int32), axis=0)
    this = offs_s == seq
    start = tl.sum(tl.where(this, lo + (c - (ends - nch)) * CS, 0), axis=0)
    clen = tl.where(seq < S, tl.minimum(tl.sum(tl.where(this, hi, 0), axis=0) - start, CS), 0)
    if tl.program_id(1) == 0:
        tl.store(meta_ptr + c, seq)
        tl.store(meta_ptr + NC + c, start)
        tl.store(meta_ptr + 2 * NC + c, clen)
    mh = offs_h < H
    m = (offs_l[:, None] < clen) & mh[None, :]
    dt = tl.load(dt_ptr + (start + offs_l)[:, None] * dt_t + offs_h[None, :] * dt_h, mask=m, other=0.0)
    a = tl.load(A_ptr + offs_h, mask=mh, other=0.0).to(tl.float32)
    dacs = tl.cumsum(dt.to(tl.float32) * a[None, :], axis=0)  # padding rows add 0: row CS-1 is the chunk end
    tl.store(dacs_ptr + offs_h[None, :] * (NC * CS) + c * CS + offs_l[:, None], dacs, mask=mh[None, :])


@triton.jit
def ssd_chunk_state_kernel(
    x_ptr, B_ptr, dt_ptr, dacs_ptr, meta_ptr, states_ptr,
    P, N, NC, heads_per_group,
    x_t, x_h, x_p, b_t, b_g, b_n, dt_t, dt_h,
    CS: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    PREC: tl.constexpr,
):
    pid_pn, h, c = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    n_blocks_n = tl.cdiv(N, BLOCK_N)
    offs_p = (pid_pn // n_blocks_n) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = (pid_pn % n_blocks_n) * BLOCK_N + tl.arange(0, BLOCK_N)
    start, clen = tl.load(meta_ptr + NC + c), tl.load(meta_ptr + 2 * NC + c)
    g = h // heads_per_group
    dacs_base = dacs_ptr + h * (NC * CS) + c * CS
    da_end = tl.load(dacs_base + CS - 1)
    acc = tl.zeros((BLOCK_P, BLOCK_N), dtype=tl.float32)
    for k0 in range(0, CS, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mk = offs_k < clen
        tok = (start + offs_k).to(tl.int64)
        xt = tl.load(x_ptr + tok[None, :] * x_t + h * x_h + offs_p[:, None] * x_p,
                     mask=mk[None, :] & (offs_p[:, None] < P), other=0.0)  # [BLOCK_P, BLOCK_K]
        bt = tl.load(B_ptr + tok[:, None] * b_t + g * b_g + offs_n[None, :] * b_n,
                     mask=mk[:, None] & (offs_n[None, :] < N), other=0.0)  # [BLOCK_K, BLOCK_N]
        dt = tl.load(dt_ptr + tok * dt_t + h * dt_h, mask=mk, other=0.0).to(tl.float32)
        scale = tl.exp(da_end - tl.load(dacs_base + offs_k)) * dt
        bt = (bt.to(tl.float32) * scale[:, None]).to(xt.dtype)
        acc += tl.dot(xt, bt, input_precision=PREC)
    sp = states_ptr + (c * tl.num_programs(1) + h).to(tl.int64) * P * N
    tl.store(sp + offs_p[:, None] * N + offs_n[None, :], acc, mask=(offs_p[:, None] < P) & (offs_n[None, :] < N))


@triton.jit
def ssd_state_passing_kernel(
    states_ptr, dacs_ptr, cu_ptr, init_ptr, prev_ptr, final_ptr, H, S, PN, NC,
    CS: tl.constexpr, HAS_INIT: tl.constexpr, BLOCK: tl.constexpr, BLOCK_S: tl.constexpr,
):
    pid, h, s = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    offs_s, _, _, nch, ends = _chunk_counts(cu_ptr, S, CS, BLOCK_S)
    c_end = tl.sum(tl.where(offs_s == s, ends, 0), axis=0)
    c_begin = c_end - tl.sum(tl.where(offs_s == s, nch, 0), axis=0)
    offs = pid * BLOCK + tl.arange(0, BLOCK)
    m = offs < PN
    if HAS_INIT:
        state = tl.load(init_ptr + (s * H + h).to(tl.int64) * PN + offs, mask=m, other=0.0).to(tl.float32)
    else:
        state = tl.zeros((BLOCK,), dtype=tl.float32)
    for c in range(c_begin, c_end):
        slot = (c * H + h).to(tl.int64) * PN + offs
        own = tl.load(states_ptr + slot, mask=m, other=0.0)
        tl.store(prev_ptr + slot, state.to(prev_ptr.dtype.element_ty), mask=m)  # state entering chunk c
        state = tl.exp(tl.load(dacs_ptr + h * (NC * CS) + c * CS + CS - 1)) * state + own
    tl.store(final_ptr + (s * H + h).to(tl.int64) * PN + offs, state, mask=m)


@triton.jit
def ssd_chunk_scan_kernel(
    x_ptr, dt_ptr, B_ptr, C_ptr, D_ptr, dacs_ptr, meta_ptr, prev_ptr, y_ptr,
    P, N, NC, heads_per_group,
    x_t, x_h, x_p, dt_t, dt_h, b_t, b_g, b_n, c_t, c_g, c_n, y_t, y_h, y_p,
    CS: tl.constexpr, HAS_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_K: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr, PREC: tl.constexpr,
):
    pid_pm, h, c = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    n_blocks_m: tl.constexpr = CS // BLOCK_M
    pid_m, pid_p = pid_pm % n_blocks_m, pid_pm // n_blocks_m
    start, clen = tl.load(meta_ptr + NC + c), tl.load(meta_ptr + 2 * NC + c)
    g = h // heads_per_group
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)  # output rows (positions in the chunk)
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    mm, mp, mn = offs_m < clen, offs_p < P, offs_n < N
    tok_m = (start + offs_m).to(tl.int64)
    dacs_base = dacs_ptr + h * (NC * CS) + c * CS
    da_m = tl.load(dacs_base + offs_m)
    ct = tl.load(C_ptr + tok_m[:, None] * c_t + g * c_g + offs_n[None, :] * c_n,
                 mask=mm[:, None] & mn[None, :], other=0.0)  # [BLOCK_M, BLOCK_N]
    # the state entering the chunk, seen through C and decayed to each row
    sp = prev_ptr + (c * tl.num_programs(1) + h).to(tl.int64) * P * N
    n_valid = tl.minimum(N, clen * N)  # 0 for a spare chunk, whose slot was never written
    st = tl.load(sp + offs_n[:, None] + offs_p[None, :] * N, mask=(offs_n < n_valid)[:, None] & mp[None, :],
                 other=0.0)
    acc = tl.dot(ct, st.to(ct.dtype), input_precision=PREC) * tl.exp(da_m)[:, None]  # [BLOCK_M, BLOCK_P]
    # within the chunk: sources k <= row m
    for k0 in range(0, (pid_m + 1) * BLOCK_M, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        mk = offs_k < clen
        tok_k = (start + offs_k).to(tl.int64)
        bt = tl.load(B_ptr + tok_k[None, :] * b_t + g * b_g + offs_n[:, None] * b_n,
                     mask=mk[None, :] & mn[:, None], other=0.0)  # [BLOCK_N, BLOCK_K]
        cb = tl.dot(ct, bt, input_precision=PREC)  # [BLOCK_M, BLOCK_K]
        dt_k = tl.load(dt_ptr + tok_k * dt_t + h * dt_h, mask=mk, other=0.0).to(tl.float32)
        causal = offs_m[:, None] >= offs_k[None, :]
        decay = tl.exp(tl.where(causal, da_m[:, None] - tl.load(dacs_base + offs_k)[None, :], 0.0))
        cb = tl.where(causal, cb * decay * dt_k[None, :], 0.0)
        xk = tl.load(x_ptr + tok_k[:, None] * x_t + h * x_h + offs_p[None, :] * x_p,
                     mask=mk[:, None] & mp[None, :], other=0.0)  # [BLOCK_K, BLOCK_P]
        acc += tl.dot(cb.to(xk.dtype), xk, input_precision=PREC)
    if HAS_D:
        xm = tl.load(x_ptr + tok_m[:, None] * x_t + h * x_h + offs_p[None, :] * x_p,
                     mask=mm[:, None] & mp[None, :], other=0.0)
        acc += tl.load(D_ptr + h).to(tl.float32) * xm.to(tl.float32)
    tl.store(y_ptr + tok_m[:, None] * y_t + h * y_h + offs_p[None, :] * y_p, acc.to(y_ptr.dtype.element_ty),
             mask=mm[:, None] & mp[None, :])


def ssd_chunk_scan_triton(x, dt, A, B, C, D=None, *, cu_seqlens, initial_states=None, chunk_size=64):
    """Launcher: same contract as ``ssd_chunk_scan``; chunk_size a power of two in [16, 256], N <= 256."""
    T, H, P, G, N, S = check_scan_args(x, dt, A, B, C, D, cu_seqlens, initial_states)
    CS = chunk_size
    if CS & (CS - 1) or not 16 <= CS <= 256 or N > 256:
        raise ValueError(f"triton ssd_chunk_scan needs chunk_size a power of 2 in [16, 256] and N <= 256, "
                         f"got chunk_size={CS}, N={N}")
    dev, cfg = x.device, CONFIG
    cu = cu_seqlens.to(dev, torch.int32)
    NC, BS = T // CS + S, max(2, triton.next_power_of_2(S))
    prec = "ieee" if x.dtype == torch.float32 else "tf32"
    bp, bn, bk = max(16, min(64, triton.next_power_of_2(P))), max(16, triton.next_power_of_2(N)), min(CS, 64)
    meta = torch.empty(3, NC, device=dev, dtype=torch.int32)  # per chunk: sequence, first token, length
    dacs = torch.empty(H, NC, CS, device=dev, dtype=torch.float32)
    ssd_chunk_cumsum_kernel[(NC, triton.cdiv(H, 16))](
        dt, A, cu, meta, dacs, H, S, NC, *dt.stride(), CS=CS, BLOCK_H=16, BLOCK_S=BS, num_warps=4)
    states = torch.empty(NC, H, P, N, device=dev, dtype=torch.float32)
    bn_state = min(bn, cfg["state_block_n"])
    ssd_chunk_state_kernel[(triton.cdiv(P, bp) * triton.cdiv(N, bn_state), H, NC)](
        x, B, dt, dacs, meta, states, P, N, NC, H // G, *x.stride(), *B.stride(), *dt.stride(),
        CS=CS, BLOCK_P=bp, BLOCK_N=bn_state, BLOCK_K=bk, PREC=prec,
        num_warps=cfg["state_warps"], num_stages=cfg["stages"])
    prev = torch.empty(NC, H, P, N, device=dev, dtype=x.dtype)  # state entering each chunk
    final = torch.empty(S, H, P, N, device=dev, dtype=torch.float32)
    init = initial_states.to(torch.float32).contiguous() if initial_states is not None else None
    block = min(1024, triton.next_power_of_2(P * N))
    ssd_state_passing_kernel[(triton.cdiv(P * N, block), H, S)](
        states, dacs, cu, init if init is not None else final, prev, final, H, S, P * N, NC,
        CS=CS, HAS_INIT=init is not None, BLOCK=block, BLOCK_S=BS, num_warps=4)
    y = torch.empty_like(x)
    # BLOCK_M 64 with a narrow state (BLOCK_N 32) made Triton 3.6's epilogue read shared memory out of
    # bounds (compute-sanitizer on an H100, H=8 P=16 N=32 bf16, 2026-11-22): 32 rows there; the
    # engine's N=128 keeps 64 (clean under the sanitizer, 13% faster)
    bm = min(CS, cfg["scan_block_m"] if bn >= 64 else 32)
    ssd_chunk_scan_kernel[((CS // bm) * triton.cdiv(P, bp), H, NC)](
        x, dt, B, C, D if D is not None else A, dacs, meta, prev, y, P, N, NC, H // G,
        *x.stride(), *dt.stride(), *B.stride(), *C.stride(), *y.stride(),
        CS=CS, HAS_D=D is not None, BLOCK_M=bm, BLOCK_K=bk, BLOCK_P=bp, BLOCK_N=bn, PREC=prec,
        num_warps=cfg["scan_warps"], num_stages=cfg["stages"])
    return y, final
