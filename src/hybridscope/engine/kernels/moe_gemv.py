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

ROUTERS = ("sigmoid", "softmax")
ACTIVATIONS = ("relu2", "swiglu")


def check_route_args(logits, correction_bias, kind, top_k, load) -> tuple[int, int]:
    """Validate routing inputs; return (T, E)."""
    if logits.dim() != 2 or not logits.is_floating_point():
        raise ValueError(f"logits must be a float [T, E] tensor, got {logits.dtype} {tuple(logits.shape)}")
    T, E = logits.shape
    if kind not in ROUTERS:
        raise ValueError(f"router kind must be one of {ROUTERS}, got {kind!r}")
    if not 1 <= top_k <= E:
        raise ValueError(f"top_k={top_k} outside 1..{E}")
    if correction_bias.shape != (E,):
        raise ValueError(f"correction_bias must be [E]={[E]}, got {tuple(correction_bias.shape)}")
    if load is not None and (load.shape != (E,) or load.dtype != torch.float32):
        raise ValueError(f"load must be float32 [E]={[E]}, got {load.dtype} {tuple(load.shape)}")
    return T, E


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


def check_gemv_args(x, ids, weights, w_up, w_down, activation, shared_up, shared_down, residual=None):
    """Validate grouped-GEMV inputs; return (T, d, k, E, I, I_shared) (I_shared 0 without shared)."""
    if x.dim() != 2:
        raise ValueError(f"x must be [T, d], got {tuple(x.shape)}")
    T, d = x.shape
    if activation not in ACTIVATIONS:
        raise ValueError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    mult = 2 if activation == "swiglu" else 1
    if ids.dim() != 2 or ids.shape[0] != T or weights.shape != ids.shape:
        raise ValueError(f"ids and weights must be [T, k] with T={T}; got {tuple(ids.shape)}, {tuple(weights.shape)}")
    if w_up.dim() != 3 or w_up.shape[2] != d or w_up.shape[1] % mult:
        raise ValueError(f"w_up must be [E, {mult}*I, d={d}], got {tuple(w_up.shape)}")
    E, I = w_up.shape[0], w_up.shape[1] // mult
    if w_down.shape != (E, d, I):
        raise ValueError(f"w_down must be [E, d, I]={[E, d, I]}, got {tuple(w_down.shape)}")
    if (shared_up is None) != (shared_down is None):
        raise ValueError("shared_up and shared_down go together")
    Is = 0
    if shared_up is not None:
        if shared_up.dim() != 2 or shared_up.shape[1] != d or shared_up.shape[0] % mult:
            raise ValueError(f"shared_up must be [{mult}*I_s, d={d}], got {tuple(shared_up.shape)}")
        Is = shared_up.shape[0] // mult
        if shared_down.shape != (d, Is):
            raise ValueError(f"shared_down must be [d, I_s]={[d, Is]}, got {tuple(shared_down.shape)}")
    if residual is not None and residual.shape != (T, d):
        raise ValueError(f"residual must be [T, d]={[T, d]}, got {tuple(residual.shape)}")
    named = (("w_up", w_up), ("w_down", w_down), ("shared_up", shared_up), ("shared_down", shared_down),
             ("residual", residual))
    for name, t in named:
        if t is not None and t.dtype != x.dtype:
            raise ValueError(f"{name} must have x's dtype {x.dtype}, got {t.dtype}")
    return T, d, ids.shape[1], E, I, Is


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
