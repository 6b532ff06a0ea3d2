"""Triton kernel for ``mamba_dt``: one program per block of rows; the first also writes A."""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .checks import check_dt_args


@triton.jit
def mamba_dt_kernel(dt_ptr, bias_ptr, alog_ptr, out_ptr, a_ptr, T, H, dt_t, dt_h,
                    BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr):
    pid = tl.program_id(0)
    rows = pid * BLOCK_T + tl.arange(0, BLOCK_T)
    h = tl.arange(0, BLOCK_H)
    mh = h < H
    m = (rows < T)[:, None] & mh[None, :]
    x = tl.load(dt_ptr + rows[:, None].to(tl.int64) * dt_t + h[None, :] * dt_h, mask=m, other=0.0).to(tl.float32)
    x += tl.load(bias_ptr + h, mask=mh, other=0.0)[None, :]
    # softplus = log1p(exp(x)), PyTorch's threshold 20; log1p by Kahan's trick (accurate where exp(x) is
    # small: real dt sits around softplus^-1(1e-3..1e-1), where log(1 + u) would lose ~1e-4 relative)
    u = tl.exp(tl.minimum(x, 20.0))
    w = 1.0 + u
    lp = tl.where(w == 1.0, u, tl.log(w) * (u / (w - 1.0)))
    sp = tl.where(x > 20.0, x, lp)
    tl.store(out_ptr + rows[:, None].to(tl.int64) * H + h[None, :], sp, mask=m)
    if pid == 0:
        tl.store(a_ptr + h, -tl.exp(tl.load(alog_ptr + h, mask=mh, other=0.0)), mask=mh)


def mamba_dt_triton(dt, dt_bias, A_log):
    """Launcher: same contract as ``mamba_dt``."""
    T, H = check_dt_args(dt, dt_bias, A_log)
    out = torch.empty(T, H, dtype=torch.float32, device=dt.device)
    A = torch.empty(H, dtype=torch.float32, device=dt.device)
    block_h = triton.next_power_of_2(H)
    block_t = max(1, min(triton.next_power_of_2(max(T, 1)), 4096 // block_h))
    mamba_dt_kernel[(max(1, triton.cdiv(T, block_t)),)](
        dt, dt_bias, A_log, out, A, T, H, dt.stride(0), dt.stride(1),
        BLOCK_T=block_t, BLOCK_H=block_h, num_warps=4,
    )
    return out, A
