"""Mamba2's step sizes: dt = softplus(dt_raw + dt_bias) in fp32, and A = -exp(A_log), in one kernel.

    mamba_dt(dt_raw [T, H], dt_bias [H] fp32, A_log [H] fp32) -> (dt [T, H] fp32, A [H] fp32)
The eager chain was five kernels per layer and step (cast, add, softplus, exp, neg). Dispatch
(``_backend``): ``mamba_dt_kernel`` (mamba_dt_triton.py) on CUDA, else ``mamba_dt_ref``.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._backend import select_backend
from .checks import check_dt_args


def mamba_dt(dt, dt_bias, A_log, *, backend=None):
    check_dt_args(dt, dt_bias, A_log)
    if select_backend("mamba_dt", dt, backend) == "triton":
        from .mamba_dt_triton import mamba_dt_triton

        return mamba_dt_triton(dt, dt_bias, A_log)
    return mamba_dt_ref(dt, dt_bias, A_log)


def mamba_dt_ref(dt, dt_bias, A_log):
    """PyTorch reference of ``mamba_dt`` (softplus with PyTorch's threshold 20: x above it passes)."""
    check_dt_args(dt, dt_bias, A_log)
    return F.softplus(dt.float() + dt_bias.float()), -torch.exp(A_log.float())
