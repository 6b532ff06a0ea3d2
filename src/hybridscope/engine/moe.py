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

import math
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

    Knobs: ``skew_bias`` [E] (see ``set_skew``), ``penalty`` (a ``RoutingPenalty`` or None, applied
    after the skew), and ``imbalance_cap`` (``cfg.route_imbalance_cap``: see ``cap_imbalance``).
    ``load`` [E] holds tokens per expert of the latest call (in place, graph-safe)."""

    def __init__(self, cfg: EngineConfig, ops: Ops, **fk):
        super().__init__()
        E, dev = cfg.n_experts, fk.get("device")
        self.ops, self.kind, self.top_k = ops, cfg.router, cfg.top_k
        self.norm_topk, self.scale = cfg.norm_topk, cfg.routed_scale
        self.weight = nn.Parameter(torch.empty(E, cfg.d_model, **fk))
        self.register_buffer("correction_bias", torch.zeros(E, device=dev))
        self.register_buffer("skew_bias", torch.zeros(E, device=dev))
        self.register_buffer("load", torch.zeros(E, device=dev))
        # rows (token, choice) moved to a second choice by the imbalance cap, and rows routed, since
        # build (in place, so CUDA-graph replays count too): their ratio is the re-routed share
        self.register_buffer("rerouted_rows", torch.zeros((), dtype=torch.long, device=dev))
        self.register_buffer("routed_rows", torch.zeros((), dtype=torch.long, device=dev))
        self.penalty: RoutingPenalty | None = None
        self.imbalance_cap: float | None = cfg.route_imbalance_cap
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
        self.routed_rows.add_(ids.numel())
        if self.imbalance_cap is not None and (ids.is_cuda or self.over_cap(ids)):
            weights, ids = self.cap_imbalance(logits, ids)
        return Routing(weights, ids, logits)

    def over_cap(self, ids: torch.Tensor) -> bool:
        """Whether an expert took more than ``cap_rows`` of this call's rows (``load`` is this call's).
        Off CUDA a call under the cap keeps its routing as is, without the cap's passes (most calls of
        a workload whose hot spots come and go); on CUDA the cap always runs (no host sync, so graph
        capture works), and moves nothing when nothing is over."""
        return int(self.load.max()) > cap_rows(ids.numel(), self.load.numel(), self.imbalance_cap)

    def cap_imbalance(self, logits: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The routing fix for unbalanced batches: no expert takes more than ``cap_rows`` of this call's
        T*k rows (max/mean tokens per expert <= ``imbalance_cap``); rows past an expert's cap (later
        tokens first) go to their token's best expert that still has room (second choice). Weights
        are recomputed for the final choice the way the router computes them; ``load`` and the
        re-routed counters are updated in place."""
        sel, score = route_scores(logits, self.correction_bias, self.kind)
        new_ids, moved = cap_choices(sel, ids, cap_rows(ids.numel(), logits.shape[1], self.imbalance_cap))
        weights = score.gather(1, new_ids)
        if self.norm_topk:
            weights = weights / weights.sum(dim=-1, keepdim=True).clamp_min(1e-20)
        flat = new_ids.reshape(-1)
        self.load.copy_(torch.zeros_like(self.load).scatter_add_(0, flat, torch.ones_like(flat, dtype=self.load.dtype)))
        self.rerouted_rows.add_(moved)
        return weights * self.scale, new_ids


def route_scores(logits: torch.Tensor, correction_bias: torch.Tensor, kind: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(selection scores, weight scores) [T, E] fp32 as ``kernels.moe_route`` ranks and weights experts."""
    logits = logits.float()
    if kind == "sigmoid":
        score = torch.sigmoid(logits)
        return score + correction_bias.float(), score
    score = logits.softmax(dim=-1)
    return score, score


def cap_rows(n_rows: int, n_experts: int, cap: float) -> int:
    """Most rows one expert may take: floor(cap * mean), never below the even share ceil(mean)."""
    mean = n_rows / n_experts
    return max(math.ceil(mean), math.floor(cap * mean + 1e-9))


def cap_choices(sel: torch.Tensor, ids: torch.Tensor, cap: int) -> tuple[torch.Tensor, torch.Tensor]:
    """sel [T, E] selection scores, ids [T, k] top-k choices -> (ids [T, k] with no expert above ``cap``
    rows, rows moved [] int64).

    Greedy, later tokens first: while an expert holds more than ``cap`` rows, its rows of the latest
    tokens that can move (whose token has an expert with room that it does not hold) go to that
    token's best such expert; one row per token per round. CUDA runs a fixed number of rounds (no
    host sync: graph-capturable), the CPU stops when nothing can move. A greedy, not a matching: at
    an exact fit (cap * E == T * k) a row can be left over its cap when every expert with room is
    already held by each token on the full expert; with any slack above that this does not occur in
    practice (tests/engine/test_fixes.py checks caps from 1.0 to 2.0)."""
    T, k = ids.shape
    E = sel.shape[1]
    out = ids.clone()
    for _ in range(2 * (E + k)):
        taken = torch.zeros(T, E, dtype=torch.bool, device=ids.device).scatter_(1, out, True)
        onehot = F.one_hot(out.reshape(-1), E)  # [T*k, E], rows in token order
        counts = onehot.sum(0)
        excess = (counts - cap).clamp_(min=0)  # [E]
        free = (counts < cap)[None, :] & ~taken  # [T, E]: room, and never chosen by this token
        cand = (excess[out] > 0) & free.any(1, keepdim=True)  # [T, k]
        cand &= cand.cumsum(1) == 1  # one row per token
        if not ids.is_cuda and not bool(cand.any()):
            break
        oh = onehot * cand.reshape(-1, 1)
        from_end = (oh.flip(0).cumsum(0).flip(0) * oh).sum(1).view(T, k)  # 1 = the latest candidate row
        move = cand & (from_end <= excess[out])
        best = sel.masked_fill(~free, float("-inf")).argmax(1)  # [T]
        out = torch.where(move, best[:, None], out)
    return out, (out != ids).sum()


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
        self.set_capacity(cfg.capacity_factor, cfg.capacity_for_layer(layer_idx))
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
            overlap = getattr(self.dispatcher, "overlap", False)
            args = (x[order // self.top_k], kept) + ((True,) if overlap else ())
            xl, offs, ctx = self.dispatcher.dispatch(*args)  # rows sorted by expert (in flight: overlap)
        shared = None
        if overlap:  # the shared expert needs none of the rows: it runs while they travel
            shared = self.shared(x)
            with record_function("moe.dispatch"):
                xl = self.dispatcher.wait(xl)
        with record_function("moe.experts"):
            yl = self.experts(xl, offs)
        with record_function("moe.combine"):
            y = self.dispatcher.combine(yl, ctx)  # [T*k, d] sorted rows
            out = self.ops.combine_rows(y, order, r.weights, keep, T, self.top_k).to(x.dtype)
        if self.shared is not None:
            out = self.ops.add(out, shared if shared is not None else self.shared(x))
        return out if residual is None else self.ops.add(residual, out)



def reset_routing_counters(model: nn.Module) -> None:
    """Zero every router's routed / re-routed row counters (e.g. after a warm-up)."""
    for moe in (m for m in model.modules() if isinstance(m, MoE)):
        moe.router.rerouted_rows.zero_()
        moe.router.routed_rows.zero_()


def routing_counters(model: nn.Module) -> dict:
    """(token, expert) rows routed and re-routed to a second choice by the imbalance cap, summed over
    the model's MoE layers since build or the last reset."""
    moes = [m for m in model.modules() if isinstance(m, MoE)]
    return {"routed_rows": sum(int(m.router.routed_rows) for m in moes),
            "rerouted_rows": sum(int(m.router.rerouted_rows) for m in moes)}

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
