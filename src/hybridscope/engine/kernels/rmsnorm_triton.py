"""Triton kernels for ``rms_norm`` (``rmsnorm_kernel``, the block norms) and ``gated_rms_norm``
(``mamba_gated_rmsnorm_kernel``, Mamba2's output norm): one program per (group, row); the row slice
stays in registers between the sum of squares and the scaling. Two names for one body so traces
attribute each to its layer. Imported only when the Triton backend is chosen.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from .checks import check_norm_args


@triton.jit
def _rms_body(x_ptr, z_ptr, w_ptr, out_ptr, GS, eps, x_t, z_t, o_t, HAS_Z: tl.constexpr, BLOCK: tl.constexpr):
    grp, t = tl.program_id(0), tl.program_id(1).to(tl.int64)
    c = grp * GS + tl.arange(0, BLOCK)
    m = tl.arange(0, BLOCK) < GS
    x = tl.load(x_ptr + t * x_t + c, mask=m, other=0.0).to(tl.float32)
    if HAS_Z:
        z = tl.load(z_ptr + t * z_t + c, mask=m, other=0.0).to(tl.float32)
        x = x * z * tl.sigmoid(z)
    # the cast keeps fp32 when a caller (Inductor) passes eps as an fp64 scalar
    rstd = tl.rsqrt((tl.sum(x * x, 0) / GS + eps).to(tl.float32))
    w = tl.load(w_ptr + c, mask=m, other=0.0).to(tl.float32)
    tl.store(out_ptr + t * o_t + c, (x * rstd * w).to(out_ptr.dtype.element_ty), mask=m)


@triton.jit
def rmsnorm_kernel(x_ptr, w_ptr, out_ptr, GS, eps, x_t, o_t, BLOCK: tl.constexpr):
    _rms_body(x_ptr, x_ptr, w_ptr, out_ptr, GS, eps, x_t, x_t, o_t, False, BLOCK)


@triton.jit
def mamba_gated_rmsnorm_kernel(y_ptr, z_ptr, w_ptr, out_ptr, GS, eps, y_t, z_t, o_t, BLOCK: tl.constexpr):
    _rms_body(y_ptr, z_ptr, w_ptr, out_ptr, GS, eps, y_t, z_t, o_t, True, BLOCK)


def rms_norm_triton(x, z, weight, groups: int, eps: float):
    """Launcher of both ops (z None: ``rms_norm``). Rows may be strided; the last dim must be contiguous."""
    T, d = check_norm_args(x, z, weight, groups)
    if x.stride(-1) != 1 or (z is not None and z.stride(-1) != 1) or weight.stride(-1) != 1:
        raise ValueError("rms_norm: the normalized dimension must be contiguous")
    out = torch.empty(T, d, dtype=x.dtype, device=x.device)
    gs = d // groups
    block = triton.next_power_of_2(gs)
    warps = 4 if block <= 2048 else 8
    if z is None:
        rmsnorm_kernel[(1, T)](x, weight, out, gs, float(eps), x.stride(0), out.stride(0),
                               BLOCK=block, num_warps=warps)
    else:
        mamba_gated_rmsnorm_kernel[(groups, T)](x, z, weight, out, gs, float(eps), x.stride(0),
                                                z.stride(0), out.stride(0), BLOCK=block, num_warps=warps)
    return out
