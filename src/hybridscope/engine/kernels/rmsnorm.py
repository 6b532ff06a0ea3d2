"""RMSNorm of the block inputs and Mamba2's gated, grouped output norm, each one kernel per call.

    rms_norm(x, weight, eps) -> x / rms(x) * weight                          x [T, d]
    gated_rms_norm(y, z, weight, groups, eps) -> g / rms_group(g) * weight,  g = y * silu(z), y, z [T, d]
(rms over the last dim, or over each of ``groups`` equal slices of it). Computed in fp32 with one
rounding to the input dtype at the store (the eager PyTorch chain rounds after every op, a few bf16
ulps apart). Decode runs them once per layer on one row: the eager chain was 1 + 4 kernels.
Dispatch (``_backend``): the Triton kernels of rmsnorm_triton.py on CUDA, else the ``_ref`` functions.
"""

from __future__ import annotations

import torch.nn.functional as F

from ._backend import select_backend
from .checks import check_norm_args


def rms_norm(x, weight, eps: float, *, backend=None):
    """x [T, d] -> [T, d] in x.dtype."""
    check_norm_args(x, None, weight, 1)
    if select_backend("rms_norm", x, backend) == "triton":
        from .rmsnorm_triton import rms_norm_triton

        return rms_norm_triton(x, None, weight, 1, eps)
    return rms_norm_ref(x, weight, eps)


def rms_norm_ref(x, weight, eps: float):
    """Float32 PyTorch reference of ``rms_norm``."""
    check_norm_args(x, None, weight, 1)
    return (F.rms_norm(x.float(), (x.shape[-1],), eps=eps) * weight.float()).to(x.dtype)


def gated_rms_norm(y, z, weight, groups: int, eps: float, *, backend=None):
    """y, z [T, d] -> RMSNorm over each of ``groups`` slices of y * silu(z), times weight [d]."""
    check_norm_args(y, z, weight, groups)
    if select_backend("gated_rms_norm", y, backend) == "triton":
        from .rmsnorm_triton import rms_norm_triton

        return rms_norm_triton(y, z, weight, groups, eps)
    return gated_rms_norm_ref(y, z, weight, groups, eps)


def gated_rms_norm_ref(y, z, weight, groups: int, eps: float):
    """Float32 PyTorch reference of ``gated_rms_norm``."""
    T, d = check_norm_args(y, z, weight, groups)
    g = (y.float() * F.silu(z.float())).view(T, groups, d // groups)
    return (F.rms_norm(g, (d // groups,), eps=eps).view(T, d) * weight.float()).to(y.dtype)
