"""Mixture of experts: top-k router, grouped expert compute, shared expert, capacity dropping.

Flow of ``MoE.forward`` (each phase in a ``torch.profiler.record_function`` range so Kineto traces
attribute it): ``moe.router`` (logits, skew bias, routing penalty, top-k), ``moe.dispatch`` (sort the
T*k (token, expert) rows by expert, drop rows past an expert's capacity, hand rows to the dispatcher:
local, or all-to-all under expert parallelism), ``moe.experts`` (two grouped GEMMs over all experts at
once, ``torch._grouped_mm``; no per-expert Python loop), ``moe.combine`` (rows back to their tokens,
weighted sum over k). Everything runs on device without host syncs (CUDA-graph safe) unless the
dispatcher is expert-parallel, which needs the split sizes on the host.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn
from torch.profiler import record_function

from . import kernels
from . import ops as _ops
from .config import EngineConfig
from .ops import Ops

# penalty(logits [T, E] fp32, load [E] fp32 = tokens per expert of the previous call) -> logits [T, E]
RoutingPenalty = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Routing(NamedTuple):
    """What ``Router.forward`` returns (a forward hook on ``Router`` sees it): ``ids`` [T, k] int64
    top-k expert ids, ``weights`` [T, k] fp32 combine weights, ``logits`` [T, E] fp32 after skew/penalty."""

    weights: torch.Tensor
    ids: torch.Tensor
    logits: torch.Tensor


class FeedForward(nn.Module):
    """relu2: down(relu(up x)^2); swiglu: down(silu(gate x) * up x) with gate and up fused in ``up``."""

    def __init__(self, d_model: int, d_ff: int, activation: str, ops: Ops, **fk):
        super().__init__()
        self.activation, self.ops = activation, ops
        self.up = nn.Linear(d_model, d_ff * (2 if activation == "swiglu" else 1), bias=False, **fk)
        self.down = nn.Linear(d_ff, d_model, bias=False, **fk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.ops.act(self.up(x), self.activation))


class SharedExpert(FeedForward):
    """The always-on expert every token passes through."""


class Router(nn.Module):
    """Top-k gate. softmax: weights = top-k of softmax(logits). sigmoid (Nemotron 3 / DeepSeek-V3):
    scores = sigmoid(logits), experts chosen on scores + correction_bias, weights = chosen scores.
    Either way optionally renormalized over k and scaled by ``routed_scale``.

    Knobs: ``skew_bias`` [E] (see ``set_skew``) and ``penalty`` (a ``RoutingPenalty`` or None, applied
    after the skew). ``load`` [E] holds tokens per expert of the latest call (in place, graph-safe)."""

    def __init__(self, cfg: EngineConfig, ops: Ops, **fk):
        super().__init__()
        E, dev = cfg.n_experts, fk.get("device")
        self.ops, self.kind, self.top_k = ops, cfg.router, cfg.top_k
        self.norm_topk, self.scale = cfg.norm_topk, cfg.routed_scale
        self.weight = nn.Parameter(torch.empty(E, cfg.d_model, **fk))
        self.register_buffer("correction_bias", torch.zeros(E, device=dev))
        self.register_buffer("skew_bias", torch.zeros(E, device=dev))
        self.register_buffer("load", torch.zeros(E, device=dev))
        self.penalty: RoutingPenalty | None = None
        self.set_skew(cfg.skew, cfg.skew_experts)

    def set_skew(self, skew: float, experts) -> None:
        """Bias the logits of ``experts`` by ``skew`` times each token's logit standard deviation across
        experts, so one value means the same imbalance at any width: 0 none, ~1 a clear hot spot, >= 10
        every token picks them. Set in place, so captured CUDA graphs see a change of value; turning
        skew on or off changes the graph (``Engine`` keys its graphs on it)."""
        bias = torch.zeros_like(self.skew_bias)
        bias[list(experts)] = float(skew)
        self.skew_bias.copy_(bias)
        self.skewed = bool(skew)  # skew 0 skips the bias kernels; the engine re-captures when this flips

    def forward(self, x: torch.Tensor) -> Routing:
        logits = F.linear(x, self.weight)  # [T, E]
        if self.skewed:
            logits = self.ops.skew_logits(logits, self.skew_bias)
        if self.penalty is not None:
            logits = self.penalty(logits.float(), self.load)
        # one kernel on CUDA: fp32 logits, top-k, weights, and this call's load written in place
        weights, ids, _, logits = kernels.moe_route(
            logits, self.correction_bias, self.kind, self.top_k, self.norm_topk, self.scale, load=self.load
        )
        return Routing(weights, ids, logits)


def grouped_mm(x: torch.Tensor, w: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
    """x [M, K] rows grouped by expert (group e ends at offs[e]); w [E, N, K] -> [M, N].
    Rows past offs[-1] are left undefined (callers mask them).

    ``torch._grouped_mm``: one CUTLASS grouped GEMM on CUDA (bf16), a C++ loop on CPU. Its CUDA path
    for other dtypes copies offsets to the host (no CUDA graph), so fp32/fp16 on CUDA (small test
    models) multiply each row by its own expert's matrix instead: exact, graph-safe, not fast."""
    if x.is_cuda and x.dtype != torch.bfloat16:
        rows = torch.arange(x.shape[0], device=x.device, dtype=offs.dtype)
        e = torch.searchsorted(offs, rows, right=True).clamp_(max=w.shape[0] - 1)
        return torch.bmm(w[e], x[:, :, None])[:, :, 0]  # [M, N, K] @ [M, K, 1]
    return torch._grouped_mm(x, w.transpose(-2, -1), offs=offs)


class Experts(nn.Module):
    """All routed experts' weights, stacked: ``up`` [E, I or 2I, d], ``down`` [E, d, I]. Under expert
    parallelism it holds experts ``first .. first+E_local-1`` only (see ep.py)."""

    def __init__(self, cfg: EngineConfig, ops: Ops, **fk):
        super().__init__()
        E, d, inner = cfg.n_experts, cfg.d_model, cfg.d_expert
        self.activation, self.first, self.ops = cfg.activation, 0, ops
        self.up = nn.Parameter(torch.empty(E, inner * (2 if cfg.activation == "swiglu" else 1), d, **fk))
        self.down = nn.Parameter(torch.empty(E, d, inner, **fk))

    def forward(self, x: torch.Tensor, offs: torch.Tensor) -> torch.Tensor:
        """x [M, d] sorted by local expert, offs [E_local] int32 cumulative row ends -> [M, d]."""
        h = self.ops.act(grouped_mm(x, self.up, offs), self.activation)
        return grouped_mm(h, self.down, offs)

    def shard(self, first: int, n: int) -> None:
        """Keep experts first..first+n-1 (expert parallelism)."""
        self.first = first
        self.up = nn.Parameter(self.up.data[first : first + n].clone(), requires_grad=False)
        self.down = nn.Parameter(self.down.data[first : first + n].clone(), requires_grad=False)


class LocalDispatcher:
    """Single process: the sorted rows go straight to the local experts."""

    needs_host_sync = False

    def dispatch(self, xp: torch.Tensor, kept: torch.Tensor):
        return xp, torch.cumsum(kept, 0).to(torch.int32), None

    def combine(self, y: torch.Tensor, ctx) -> torch.Tensor:
        return y


class MoE(nn.Module):
    def __init__(self, cfg: EngineConfig, layer_idx: int, ops: Ops, **fk):
        super().__init__()
        self.layer_idx, self.n_experts, self.top_k, self.ops = layer_idx, cfg.n_experts, cfg.top_k, ops
        self.router = Router(cfg, ops, **fk)
        self.experts = Experts(cfg, ops, **fk)
        self.shared = (
            SharedExpert(cfg.d_model, cfg.d_shared, cfg.activation, ops, **fk) if cfg.d_shared else None
        )
        self.register_buffer("capacity_factors", torch.zeros(cfg.n_experts, device=fk.get("device")))
        self.register_buffer("dropped", torch.zeros((), dtype=torch.long, device=fk.get("device")))
        self.set_capacity(cfg.capacity_factor, cfg.capacity_overrides)
        self.dispatcher = LocalDispatcher()  # ep.apply_ep installs the all-to-all one

    def set_capacity(self, factor: float | None, overrides: dict[int, float] | None = None) -> None:
        """Capacity of expert e = ceil(f_e * T * k / E) rows per call, f_e = overrides.get(e, factor);
        rows past it (later tokens first) are dropped. factor None and no overrides: no dropping.
        Changing whether dropping is on changes the captured graph: re-capture after."""
        f = torch.full_like(self.capacity_factors, float(factor or 0.0))
        for e, fe in (overrides or {}).items():
            f[e] = float(fe)
        self.capacity_factors.copy_(f)
        self.drops = factor is not None or bool(overrides)

    def gemv_path(self, T: int) -> bool:
        """Whether T tokens take the decode path: grouped GEMVs over the selected experts only (fewer
        (token, expert) rows than experts, no capacity dropping, experts local)."""
        return T * self.top_k <= self.n_experts and not self.drops and type(self.dispatcher) is LocalDispatcher

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None) -> torch.Tensor:
        """x [T, d] (normalized) -> MoE(x) [T, d], plus ``residual`` [T, d] when given (the decode
        path adds it inside its last kernel)."""
        T = x.shape[0]
        with record_function("moe.router"):
            r = self.router(x)
        if self.gemv_path(T):
            with record_function("moe.experts"):  # routed experts and the shared one, two kernels on CUDA
                sh = self.shared
                return kernels.moe_experts_gemv(
                    x, r.ids, r.weights, self.experts.up, self.experts.down, self.experts.activation,
                    sh.up.weight if sh is not None else None, sh.down.weight if sh is not None else None,
                    residual,
                )
        with record_function("moe.dispatch"):
            order, kept, keep, dropped = self.ops.plan_rows(
                r.ids, self.router.load, self.capacity_factors, self.drops
            )
            if self.drops:
                self.dropped.copy_(dropped)
            xl, offs, ctx = self.dispatcher.dispatch(x[order // self.top_k], kept)  # rows sorted by expert
        with record_function("moe.experts"):
            yl = self.experts(xl, offs)
        with record_function("moe.combine"):
            y = self.dispatcher.combine(yl, ctx)  # [T*k, d] sorted rows
            out = self.ops.combine_rows(y, order, r.weights, keep, T, self.top_k).to(x.dtype)
        if self.shared is not None:
            out = self.ops.add(out, self.shared(x))
        return out if residual is None else self.ops.add(residual, out)


@torch.no_grad()
def moe_ref(moe: MoE, x: torch.Tensor) -> torch.Tensor:
    """Naive float32 reference of ``MoE.forward`` (single process): a Python loop over experts and
    tokens, capacity granted in token order. For tests; never on a hot path."""
    r = moe.router(x)
    T, k = r.ids.shape
    ex = moe.experts
    cap = [None] * moe.n_experts
    if moe.drops:
        for e in range(moe.n_experts):
            f = float(moe.capacity_factors[e])
            cap[e] = int(torch.ceil(torch.tensor(f * T * k / moe.n_experts))) if f > 0 else None
    used = [0] * moe.n_experts
    out = torch.zeros(T, x.shape[1], dtype=torch.float32)
    for t in range(T):
        for j in range(k):
            e = int(r.ids[t, j])
            used[e] += 1
            if cap[e] is not None and used[e] > cap[e]:
                continue
            h = _ops.act(x[t].float() @ ex.up[e].float().t(), ex.activation)
            out[t] += float(r.weights[t, j]) * (h @ ex.down[e].float().t())
    if moe.shared is not None:
        out += moe.shared(x).float()
    return out
