"""Mamba2 decode: one token per sequence through the SSM recurrence, state updated in place.

    state <- exp(dt A) state + dt x ⊗ B ;  y = C · state + D x
``ssm_state_update`` dispatches to the Triton kernel (ssm_update_triton.py) on CUDA, else to
``ssm_state_update_ref`` in float32 PyTorch.
"""

from __future__ import annotations

import torch

from ._backend import select_backend
from .checks import check_update_args


def ssm_state_update(state, x, dt, A, B, C, D=None, *, backend=None):
    """One decode step. state [S, H, P, N] fp32 (updated in place); x [S, H, P]; dt [S, H] (softplus'd);
    A [H]; B, C [S, G, N]; D [H] | None. Returns y [S, H, P] in x.dtype."""
    check_update_args(state, x, dt, A, B, C, D)
    if select_backend("ssm_state_update", x, backend) == "triton":
        from .ssm_update_triton import ssm_state_update_triton

        return ssm_state_update_triton(state, x, dt, A, B, C, D)
    return ssm_state_update_ref(state, x, dt, A, B, C, D)


def ssm_state_update_ref(state, x, dt, A, B, C, D=None):
    """Float32 PyTorch reference of ``ssm_state_update`` (same contract, state updated in place)."""
    _, H, _, G, _ = check_update_args(state, x, dt, A, B, C, D)
    f32 = torch.float32
    xf, dtf = x.to(f32), dt.to(f32)
    Bh = B.to(f32).repeat_interleave(H // G, dim=1)  # [S, H, N]
    Ch = C.to(f32).repeat_interleave(H // G, dim=1)
    decay = torch.exp(dtf * A.to(f32))[..., None, None]  # [S, H, 1, 1]
    state.mul_(decay).add_((dtf[..., None] * xf)[..., None] * Bh[:, :, None, :])
    y = torch.einsum("shpn,shn->shp", state, Ch)
    if D is not None:
        y = y + D.to(f32)[:, None] * xf
    return y.to(x.dtype)
