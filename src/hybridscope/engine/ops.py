"""The element-wise stretches of the hot path as pure tensor functions, and ``Ops``, the switch between
running them eagerly and running them through ``torch.compile`` (Inductor fuses each into one or a few
kernels: in decode, where every op is a tiny launch, that is most of the step's kernel count).

The choice is explicit and logged: ``HybridModel.ops.compile()`` (``Engine(compile=True)``); eager by
default and always on CPU tests. Each function is its own reference: compiled and eager run the same code.
The norms and Mamba2's dt are single kernels already (``kernels.rms_norm``, ``gated_rms_norm``,
``mamba_dt``: Triton on CUDA, their references on CPU).
"""

from __future__ import annotations

import logging

import torch
import torch.nn.functional as F

from . import kernels

log = logging.getLogger("hybridscope.engine")


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x [T, d]: one kernel (``kernels.rms_norm``: Triton on CUDA, fp32 inside, one rounding)."""
    return kernels.rms_norm(x, weight, eps)


def add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return x + y


def act(h: torch.Tensor, activation: str) -> torch.Tensor:
    """relu2: relu(h)^2 (Nemotron-H); swiglu: silu(gate) * up with h = [gate | up]."""
    if activation == "relu2":
        return torch.square(F.relu(h))
    gate, up = h.chunk(2, dim=-1)
    return F.silu(gate) * up


def skew_logits(logits: torch.Tensor, skew_bias: torch.Tensor) -> torch.Tensor:
    """logits [T, E] (any float) -> fp32 with skew_bias [E] added in units of each row's std."""
    logits = logits.float()
    return logits + skew_bias * logits.std(dim=-1, keepdim=True)


def plan_rows(ids: torch.Tensor, load: torch.Tensor, capacity_factors: torch.Tensor, drops: bool):
    """Sort the T*k (token, choice) rows by expert (stable: earlier tokens first) and apply capacity.

    Returns (order [T*k]: flat row index of each sorted row, kept [E] int64 rows each expert keeps,
    keep [T*k] bool per sorted row or None, dropped [] int64). With dropping, dropped rows move to
    the end (expert order of the kept rows unchanged). Capacity of e = ceil(f_e * T*k / E), f_e > 0."""
    flat = ids.reshape(-1)
    order = torch.argsort(flat, stable=True)
    counts = load.long()
    if not drops:
        return order, counts, None, torch.zeros((), dtype=torch.long, device=ids.device)
    n, E = flat.numel(), load.numel()
    sorted_e = flat[order]
    rank = torch.arange(n, device=flat.device) - (torch.cumsum(counts, 0) - counts)[sorted_e]
    cap = torch.where(capacity_factors > 0, torch.ceil(capacity_factors * (n / E)), float(n)).long()
    keep = rank < cap[sorted_e]
    kept = torch.minimum(counts, cap)
    back = torch.argsort((~keep).to(torch.int8), stable=True)
    return order[back], kept, keep[back], (counts - kept).sum()


def combine_rows(y, order, weights, keep, T: int, k: int) -> torch.Tensor:
    """Sorted expert outputs y [T*k, d] -> [T, d] fp32: weighted, back in token order, summed over k.
    Dropped rows (keep False) are undefined in y, so they are replaced by 0, not just weighted by 0."""
    rows = y.float() * weights.reshape(-1)[order][:, None]
    if keep is not None:
        rows = torch.where(keep[:, None], rows, 0.0)
    unsorted = torch.empty_like(rows)
    unsorted[order] = rows
    return unsorted.view(T, k, -1).sum(dim=1)


def mamba_dt(dt: torch.Tensor, dt_bias: torch.Tensor, A_log: torch.Tensor):
    """Raw dt [T, H] -> (softplus(dt + dt_bias) fp32 [T, H], A = -exp(A_log) [H]); one kernel on CUDA."""
    return kernels.mamba_dt(dt, dt_bias, A_log)


def gated_rmsnorm(y: torch.Tensor, z: torch.Tensor, weight: torch.Tensor, groups: int, eps: float):
    """Mamba2's output norm: RMSNorm over each of ``groups`` slices of y * silu(z), times weight;
    one kernel on CUDA (``kernels.gated_rms_norm``)."""
    return kernels.gated_rms_norm(y.reshape(y.shape[0], -1), z, weight, groups, eps)


NAMES = (
    "rms_norm",
    "add",
    "act",
    "skew_logits",
    "plan_rows",
    "combine_rows",
    "mamba_dt",
    "gated_rmsnorm",
)


class Ops:
    """The functions above, eager or compiled; one instance per model, shared by its modules."""

    def __init__(self):
        self.compiled = False
        for name in NAMES:
            setattr(self, name, globals()[name])

    def compile(self, backend: str = "inductor") -> None:
        """Route every function through torch.compile (shapes are bucketed by the engine's decode).
        ``backend='eager'`` traces with dynamo only (tests: same graphs, no code generation)."""
        if self.compiled:
            return
        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
        for name in NAMES:
            setattr(self, name, torch.compile(globals()[name], backend=backend))
        self.compiled = True
        log.info("engine ops: torch.compile(backend=%s) on %s", backend, ", ".join(NAMES))
