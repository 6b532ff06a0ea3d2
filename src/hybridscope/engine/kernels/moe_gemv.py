"""MoE decode: routing and the routed + shared experts as grouped GEMVs over the selected experts only.

At decode a token touches ``top_k`` experts and the shared expert; a grouped GEMM over all experts
wastes most of each tile on rows that are not there. These ops read only the selected experts' weights:

    moe_route(logits, correction_bias, kind, top_k, norm_topk, scale, load=None)
        -> (weights [T, k] fp32, ids [T, k] int64, load [E] fp32, logits [T, E] fp32)
    moe_experts_gemv(x, ids, weights, w_up, w_down, activation, shared_up=None, shared_down=None,
                     residual=None)
        -> y [T, d] in x.dtype = residual_t + sum_j weights[t, j] * down_e(act(up_e x_t)) + shared(x_t)

Routing: sigmoid (scores = sigmoid(logits), experts chosen on scores + correction_bias, weights = the
chosen scores) or softmax (top-k of softmax(logits)); optionally renormalized over k; times ``scale``.
Ties go to the lower expert id. ``load`` (tokens per expert) is written in place when given.
The expert hidden activations are held in x.dtype between the two GEMVs (as the grouped-GEMM path
rounds them); accumulation is fp32. Each op dispatches explicitly (``_backend``): the Triton kernels
of moe_gemv_triton.py on CUDA, else the ``_ref`` functions here (plain PyTorch, fp32).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._backend import select_backend
from .checks import check_gemv_args, check_route_args


def moe_route(logits, correction_bias, kind, top_k, norm_topk, scale, load=None, *, backend=None):
    """Top-k routing of logits [T, E] (any float dtype). See the module docstring for the contract."""
    check_route_args(logits, correction_bias, kind, top_k, load)
    if select_backend("moe_route", logits, backend) == "triton":
        from .moe_gemv_triton import moe_route_triton

        return moe_route_triton(logits, correction_bias, kind, top_k, norm_topk, scale, load)
    return moe_route_ref(logits, correction_bias, kind, top_k, norm_topk, scale, load)


def moe_route_ref(logits, correction_bias, kind, top_k, norm_topk, scale, load=None):
    """Float32 PyTorch reference of ``moe_route`` (same contract)."""
    _, E = check_route_args(logits, correction_bias, kind, top_k, load)
    logits = logits.float()
    if kind == "sigmoid":
        scores = torch.sigmoid(logits)
        ids = torch.topk(scores + correction_bias.float(), top_k, dim=-1).indices
        weights = scores.gather(-1, ids)
    else:
        weights, ids = torch.topk(logits.softmax(dim=-1), top_k, dim=-1)
    if norm_topk:
        weights = weights / weights.sum(dim=-1, keepdim=True).clamp_min(1e-20)
    flat = ids.reshape(-1)
    counts = torch.zeros(E, device=logits.device).scatter_add_(0, flat, torch.ones_like(flat).float())
    if load is None:
        load = counts
    else:
        load.copy_(counts)
    return weights * scale, ids, load, logits


def moe_experts_gemv(x, ids, weights, w_up, w_down, activation, shared_up=None, shared_down=None,
                     residual=None, *, backend=None):
    """x [T, d]; ids [T, k] int; weights [T, k] fp32; w_up [E, I or 2I, d]; w_down [E, d, I];
    shared_up [I_s or 2 I_s, d] and shared_down [d, I_s] or None; residual [T, d] or None
    -> y [T, d] in x.dtype."""
    args = (x, ids, weights, w_up, w_down, activation, shared_up, shared_down, residual)
    check_gemv_args(*args)
    if select_backend("moe_experts_gemv", x, backend) == "triton":
        from .moe_gemv_triton import moe_experts_gemv_triton

        return moe_experts_gemv_triton(*args)
    return moe_experts_gemv_ref(*args)


def _act(h: torch.Tensor, activation: str) -> torch.Tensor:
    if activation == "relu2":
        return torch.square(F.relu(h))
    gate, up = h.chunk(2, dim=-1)
    return F.silu(gate) * up


def moe_experts_gemv_ref(x, ids, weights, w_up, w_down, activation, shared_up=None, shared_down=None,
                         residual=None):
    """Float32 PyTorch reference of ``moe_experts_gemv``: gathers each row's expert matrices (small
    models only), hidden activations rounded to x.dtype like the kernel's."""
    check_gemv_args(x, ids, weights, w_up, w_down, activation, shared_up, shared_down, residual)
    xf = x.float()
    up = w_up[ids].float()  # [T, k, I', d]
    h = _act(torch.einsum("tkid,td->tki", up, xf), activation).to(x.dtype).float()
    y = torch.einsum("tkdi,tki->tkd", w_down[ids].float(), h)  # [T, k, d]
    y = (y * weights.float()[..., None]).sum(dim=1)
    if shared_up is not None:
        hs = _act(xf @ shared_up.float().t(), activation).to(x.dtype).float()
        y = y + hs @ shared_down.float().t()
    if residual is not None:
        y = y + residual.float()
    return y.to(x.dtype)
