"""Triton kernel for Mamba2 decode (``ssm_state_update``): one program per (P block, head, sequence).

Memory-bound: each program reads its [BLOCK_P, N] fp32 state slice once and writes it once; x, dt,
B and C are a few hundred bytes. Imported only when the Triton backend is chosen.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .checks import check_update_args


@triton.jit
def ssm_state_update_kernel(
    state_ptr, x_ptr, dt_ptr, A_ptr, B_ptr, C_ptr, D_ptr, y_ptr,
    P, N, heads_per_group,
    st_s, st_h, st_p, st_n,
    x_s, x_h, x_p,
    dt_s, dt_h,
    b_s, b_g, b_n,
    c_s, c_g, c_n,
    y_s, y_h, y_p,
    HAS_D: tl.constexpr, BLOCK_P: tl.constexpr, BLOCK_N: tl.constexpr,
):
    pid_p, h, s = tl.program_id(0), tl.program_id(1), tl.program_id(2).to(tl.int64)
    g = h // heads_per_group
    offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_n = tl.arange(0, BLOCK_N)
    mp, mn = offs_p < P, offs_n < N
    m2 = mp[:, None] & mn[None, :]
    sptr = state_ptr + s * st_s + h * st_h + offs_p[:, None] * st_p + offs_n[None, :] * st_n
    state = tl.load(sptr, mask=m2, other=0.0)  # [BLOCK_P, BLOCK_N] fp32
    x = tl.load(x_ptr + s * x_s + h * x_h + offs_p * x_p, mask=mp, other=0.0).to(tl.float32)
    dt = tl.load(dt_ptr + s * dt_s + h * dt_h).to(tl.float32)
    a = tl.load(A_ptr + h).to(tl.float32)
    b = tl.load(B_ptr + s * b_s + g * b_g + offs_n * b_n, mask=mn, other=0.0).to(tl.float32)
    c = tl.load(C_ptr + s * c_s + g * c_g + offs_n * c_n, mask=mn, other=0.0).to(tl.float32)
    state = state * tl.exp(dt * a) + (dt * x)[:, None] * b[None, :]
    tl.store(sptr, state, mask=m2)
    y = tl.sum(state * c[None, :], axis=1)
    if HAS_D:
        y += tl.load(D_ptr + h).to(tl.float32) * x
    tl.store(y_ptr + s * y_s + h * y_h + offs_p * y_p, y.to(y_ptr.dtype.element_ty), mask=mp)


def ssm_state_update_triton(state, x, dt, A, B, C, D=None):
    """Launcher: same contract as ``ssm_state_update`` (state [S, H, P, N] fp32 updated in place)."""
    S, H, P, G, N = check_update_args(state, x, dt, A, B, C, D)
    y = torch.empty_like(x)
    block_n = max(16, triton.next_power_of_2(N))
    block_p = max(1, min(triton.next_power_of_2(P), 4096 // block_n))  # ~16 KiB of state per program
    grid = (triton.cdiv(P, block_p), H, S)
    ssm_state_update_kernel[grid](
        state, x, dt, A, B, C, D if D is not None else A, y,
        P, N, H // G,
        *state.stride(), *x.stride(), *dt.stride(), *B.stride(), *C.stride(), *y.stride(),
        HAS_D=D is not None, BLOCK_P=block_p, BLOCK_N=block_n, num_warps=4,
    )
    return y
