"""The hybrid model: embedding, a stack of pre-norm residual blocks (Mamba2, attention, parallel hybrid,
MoE, dense MLP) and the LM head, over packed variable-length token batches with static caches.

Module class names are a contract with the profiler's recognizers: ``HybridModel`` (``embed``,
``layers``, ``norm_f``, ``lm_head``), ``HybridBlock`` (``norm`` + one of ``mixer`` / ``moe`` / ``mlp``),
``Mamba2Mixer``, ``Attention``, ``ParallelHybridMixer``, ``MoE`` (moe.py), ``DenseMLP``, ``RMSNorm``,
``Embedding``, ``LMHead``.

A forward call processes one engine step: ``forward(input_ids [T], batch, cache)``. ``batch`` says how
the T tokens split into sequences and which cache slot each sequence owns (``Batch.packed``), or that
the step is a dense decode over slots ``0..B-1`` with one token each (``Batch.decode``: the path that
CUDA graphs capture, static shapes, no host syncs).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from . import kernels
from .cache import HybridCache, LayerCache
from .config import EngineConfig
from .moe import FeedForward, MoE
from .ops import Ops


@dataclass
class Batch:
    """Layout of one step's tokens. Host lists drive Python-side loops without device syncs."""

    decode: bool
    positions: torch.Tensor  # [T] long: absolute position of each token in its sequence
    slots: list[int]  # host: cache slot of each sequence (decode: 0..B-1)
    start: list[int]  # host: tokens already cached per sequence (packed only)
    lens: list[int]  # host: new tokens per sequence (packed only)
    slots_t: torch.Tensor | None = None  # [S] long
    cu_seqlens: torch.Tensor | None = None  # [S+1] int32
    token_slot: torch.Tensor | None = None  # [T] long
    last_idx: torch.Tensor | None = None  # [S] long: packed index of each sequence's last token
    kv_len: int = 0  # decode: attention window (>= max position + 1), a bucket for CUDA graphs

    @classmethod
    def packed(cls, slots: list[int], start: list[int], lens: list[int], device) -> Batch:
        """Sequences s = 0..S-1 with lens[s] new tokens each, continuing from position start[s]."""
        cu = [0]
        for n in lens:
            cu.append(cu[-1] + n)
        pos = torch.cat([torch.arange(s, s + n) for s, n in zip(start, lens)])
        tslot = torch.repeat_interleave(torch.tensor(slots), torch.tensor(lens))
        return cls(
            decode=False,
            positions=pos.to(device),
            slots=list(slots),
            start=list(start),
            lens=list(lens),
            slots_t=torch.tensor(slots, device=device),
            cu_seqlens=torch.tensor(cu, dtype=torch.int32, device=device),
            token_slot=tslot.to(device),
            last_idx=torch.tensor(cu[1:], device=device) - 1,
        )

    @classmethod
    def dense_decode(cls, positions: torch.Tensor, kv_len: int) -> Batch:
        """One token for each of slots 0..B-1 at ``positions`` [B] (a static buffer under CUDA graphs)."""
        B = positions.shape[0]
        return cls(
            decode=True, positions=positions, slots=list(range(B)), start=[], lens=[1] * B, kv_len=kv_len
        )


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float, ops: Ops, **fk):
        super().__init__()
        self.eps, self.ops = eps, ops
        self.weight = nn.Parameter(torch.ones(dim, **fk))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ops.rms_norm(x, self.weight, self.eps)


class Embedding(nn.Module):
    def __init__(self, vocab: int, dim: int, **fk):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(vocab, dim, **fk))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return F.embedding(ids, self.weight)


class LMHead(nn.Module):
    def __init__(self, dim: int, vocab: int, **fk):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(vocab, dim, **fk))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight).float()


def _rope(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
    """Rotate-half RoPE on x [T, H, D] at positions [T]."""
    half = x.shape[-1] // 2
    inv = theta ** (-torch.arange(half, device=x.device, dtype=torch.float32) / half)
    ang = positions.float()[:, None] * inv  # [T, D/2]
    cos, sin = ang.cos()[:, None], ang.sin()[:, None]
    x1, x2 = x[..., :half].float(), x[..., half:].float()
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1).to(x.dtype)


class Attention(nn.Module):
    """GQA over a slot-based KV cache [slots, Hkv, L, D]: SDPA per prefill sequence; decode appends the
    new K/V and attends in one ``kernels.attn_decode`` call (split-KV Triton kernels on CUDA)."""

    def __init__(self, cfg: EngineConfig, layer_idx: int, ops: Ops, **fk):
        super().__init__()
        self.layer_idx, self.cfg = layer_idx, cfg
        self.hq, self.hkv, self.hd = cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
        self.wqkv = nn.Linear(cfg.d_model, (self.hq + 2 * self.hkv) * self.hd, bias=False, **fk)
        self.wo = nn.Linear(self.hq * self.hd, cfg.d_model, bias=False, **fk)

    def forward(self, x: torch.Tensor, batch: Batch, lc: LayerCache) -> torch.Tensor:
        T = x.shape[0]
        q, k, v = self.wqkv(x).split([self.hq * self.hd, self.hkv * self.hd, self.hkv * self.hd], dim=-1)
        q, k, v = (t.view(T, -1, self.hd) for t in (q, k, v))  # [T, H, D]
        if self.cfg.rope:
            q, k = (
                _rope(q, batch.positions, self.cfg.rope_theta),
                _rope(k, batch.positions, self.cfg.rope_theta),
            )
        kc, vc = lc.k, lc.v  # [slots, Hkv, L, D]
        if batch.decode:
            # append K/V at each row's position and attend (split-KV kernel on CUDA)
            o = kernels.attn_decode(q, k, v, kc, vc, batch.positions, batch.kv_len)
        else:
            kc[batch.token_slot, :, batch.positions] = k
            vc[batch.token_slot, :, batch.positions] = v
            o = self._packed(q, kc, vc, batch)
        return self.wo(o.reshape(T, self.hq * self.hd))

    def _packed(self, q, kc, vc, batch: Batch) -> torch.Tensor:
        o = torch.empty_like(q)
        starts = _host_cu(batch.lens)
        for s, (slot, st, n) in enumerate(zip(batch.slots, batch.start, batch.lens)):
            a = starts[s]
            qs = q[a : a + n].transpose(0, 1)[None]  # [1, Hq, n, D]
            ks, vs = kc[slot : slot + 1, :, : st + n], vc[slot : slot + 1, :, : st + n]
            if st == 0:
                out = F.scaled_dot_product_attention(qs, ks, vs, is_causal=True, enable_gqa=True)
            else:
                mask = (
                    torch.arange(st + n, device=q.device) <= (st + torch.arange(n, device=q.device))[:, None]
                )
                out = F.scaled_dot_product_attention(qs, ks, vs, attn_mask=mask, enable_gqa=True)
            o[a : a + n] = out[0].transpose(0, 1)
        return o


def _host_cu(lens: list[int]) -> list[int]:
    cu = [0]
    for n in lens:
        cu.append(cu[-1] + n)
    return cu


class Mamba2Mixer(nn.Module):
    """Mamba2 (SSD) mixer: in_proj -> causal conv -> SSD scan (prefill) or state update (decode) ->
    gated grouped RMSNorm -> out_proj. Conv and SSM states live in the cache's slot rows."""

    def __init__(self, cfg: EngineConfig, layer_idx: int, ops: Ops, **fk):
        super().__init__()
        self.layer_idx, self.cfg, self.ops = layer_idx, cfg, ops
        H, G, N = cfg.mamba_heads, cfg.n_groups, cfg.ssm_state
        self.in_proj = nn.Linear(cfg.d_model, 2 * cfg.d_inner + 2 * G * N + H, bias=False, **fk)
        self.conv_weight = nn.Parameter(torch.empty(cfg.conv_dim, cfg.conv_kernel, **fk))
        self.conv_bias = nn.Parameter(torch.zeros(cfg.conv_dim, **fk))
        f32 = {"device": fk.get("device"), "dtype": torch.float32}  # the recurrence's parameters stay fp32
        self.dt_bias = nn.Parameter(torch.empty(H, **f32))
        self.A_log = nn.Parameter(torch.empty(H, **f32))
        self.D = nn.Parameter(torch.ones(H, **f32))
        self.norm_weight = nn.Parameter(torch.ones(cfg.d_inner, **fk))
        self.out_proj = nn.Linear(cfg.d_inner, cfg.d_model, bias=False, **fk)

    def forward(self, x: torch.Tensor, batch: Batch, lc: LayerCache) -> torch.Tensor:
        cfg, T = self.cfg, x.shape[0]
        H, P, G, N = cfg.mamba_heads, cfg.mamba_head_dim, cfg.n_groups, cfg.ssm_state
        z, xbc, dt = self.in_proj(x).split([cfg.d_inner, cfg.conv_dim, H], dim=-1)
        dt, A = self.ops.mamba_dt(dt, self.dt_bias, self.A_log)  # [T, H] fp32, [H]
        conv, ssm = lc.conv, lc.ssm
        if batch.decode:
            xbc = kernels.causal_conv1d_update(conv[:T], xbc, self.conv_weight, self.conv_bias)
            xs, B, C = xbc.split([cfg.d_inner, G * N, G * N], dim=-1)
            y = kernels.ssm_state_update(
                ssm[:T], xs.view(T, H, P), dt, A, B.view(T, G, N), C.view(T, G, N), self.D
            )
        else:
            xbc, conv[batch.slots_t] = kernels.causal_conv1d(
                xbc,
                self.conv_weight,
                self.conv_bias,
                cu_seqlens=batch.cu_seqlens,
                initial_conv_states=conv[batch.slots_t],
            )
            xs, B, C = xbc.split([cfg.d_inner, G * N, G * N], dim=-1)
            y, ssm[batch.slots_t] = kernels.ssd_chunk_scan(
                xs.reshape(T, H, P),
                dt,
                A,
                B.reshape(T, G, N),
                C.reshape(T, G, N),
                self.D,
                cu_seqlens=batch.cu_seqlens,
                initial_states=ssm[batch.slots_t],
                chunk_size=cfg.chunk_size,
            )
        y = self.ops.gated_rmsnorm(y, z, self.norm_weight, G, cfg.norm_eps)
        return self.out_proj(y)


class ParallelHybridMixer(nn.Module):
    """Attention and Mamba2 heads side by side on the same input (Falcon-H1 / Hymba); outputs summed."""

    def __init__(self, cfg: EngineConfig, layer_idx: int, ops: Ops, **fk):
        super().__init__()
        self.ops = ops
        self.attn = Attention(cfg, layer_idx, ops, **fk)
        self.mamba = Mamba2Mixer(cfg, layer_idx, ops, **fk)

    def forward(self, x: torch.Tensor, batch: Batch, lc: LayerCache) -> torch.Tensor:
        return self.ops.add(self.attn(x, batch, lc), self.mamba(x, batch, lc))


class DenseMLP(FeedForward):
    """The ``-`` layer: one dense feed-forward."""


_MIXERS = {"M": Mamba2Mixer, "*": Attention, "P": ParallelHybridMixer}


class HybridBlock(nn.Module):
    """x + sublayer(norm(x)), the sublayer being ``mixer``, ``moe`` or ``mlp``."""

    def __init__(self, cfg: EngineConfig, layer_idx: int, ops: Ops, **fk):
        super().__init__()
        self.layer_idx, self.char, self.ops = layer_idx, cfg.pattern[layer_idx], ops
        self.norm = RMSNorm(cfg.d_model, cfg.norm_eps, ops, **fk)
        if self.char in _MIXERS:
            self.mixer = _MIXERS[self.char](cfg, layer_idx, ops, **fk)
        elif self.char == "E":
            self.moe = MoE(cfg, layer_idx, ops, **fk)
        else:
            self.mlp = DenseMLP(cfg.d_model, cfg.d_ff, cfg.activation, ops, **fk)

        self.compiled_sublayer = None  # set by HybridModel.compile_decode

    def forward(self, x: torch.Tensor, batch: Batch, cache: HybridCache) -> torch.Tensor:
        fast = batch.decode and self.compiled_sublayer is not None
        return (self.compiled_sublayer if fast else self.sublayer)(x, batch, cache.layer(self.layer_idx))

    def sublayer(self, x: torch.Tensor, batch: Batch, lc: LayerCache) -> torch.Tensor:
        """The block's math on its own cache tensors (no layer index inside: one compiled graph serves
        every layer of a kind)."""
        h = self.norm(x)
        if self.char in _MIXERS:
            return self.ops.add(x, self.mixer(h, batch, lc))
        if self.char == "E":
            return self.moe(h, residual=x)
        return self.ops.add(x, self.mlp(h))


class HybridModel(nn.Module):
    def __init__(self, cfg: EngineConfig, device=None):
        super().__init__()
        self.cfg = cfg
        fk = {"device": device, "dtype": cfg.torch_dtype}
        self.ops = Ops()  # eager element-wise ops; ``self.ops.compile()`` fuses them (ops.py)
        self.embed = Embedding(cfg.vocab_size, cfg.d_model, **fk)
        self.layers = nn.ModuleList(HybridBlock(cfg, i, self.ops, **fk) for i in range(len(cfg.pattern)))
        self.norm_f = RMSNorm(cfg.d_model, cfg.norm_eps, self.ops, **fk)
        self.lm_head = LMHead(cfg.d_model, cfg.vocab_size, **fk)

    def forward(self, input_ids: torch.Tensor, batch: Batch, cache: HybridCache, all_logits: bool = False):
        """input_ids [T] -> logits fp32: [S, V] at each sequence's last token, or [T, V] if all_logits."""
        x = self.embed(input_ids)  # [T, d]
        for layer in self.layers:
            x = layer(x, batch, cache)
        if not (all_logits or batch.decode):
            x = x[batch.last_idx]
        return self.lm_head(self.norm_f(x))

    def compile_decode(self, backend: str = "inductor") -> None:
        """torch.compile each block's sublayer for the dense decode path (static shapes per batch and KV
        bucket; prefill stays eager). Inductor fuses the element-wise work between the GEMMs and the
        Mamba2 Triton kernels. Explicit, logged, GPU only; the engine captures the result in graphs."""
        import logging

        torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 256)
        torch._dynamo.config.accumulated_cache_size_limit = max(
            torch._dynamo.config.accumulated_cache_size_limit, 4096
        )
        for block in self.layers:
            if block.compiled_sublayer is None:
                block.compiled_sublayer = torch.compile(block.sublayer, dynamic=False, backend=backend)
        logging.getLogger("hybridscope.engine").info("decode: torch.compile per block sublayer")

    def new_cache(self, max_batch: int | None = None, max_seq_len: int | None = None) -> HybridCache:
        cfg = self.cfg
        return HybridCache(
            cfg, max_batch or cfg.max_batch, max_seq_len or cfg.max_seq_len, self.embed.weight.device
        )


@torch.no_grad()
def init_weights(model: HybridModel, seed: int) -> None:
    """Seeded random init (no weights are downloaded): N(0, std) matrices, Mamba2's usual dt/A ranges."""
    cfg = model.cfg
    gen = torch.Generator(device=model.embed.weight.device).manual_seed(seed)
    out_std = cfg.init_std / math.sqrt(2 * len(cfg.pattern))  # residual projections scaled down
    for name, p in model.named_parameters():
        leaf = name.rsplit(".", 1)[-1]
        if leaf == "A_log":
            p.copy_(torch.log(torch.empty_like(p).uniform_(1, 16, generator=gen)))
        elif leaf == "dt_bias":
            dt = torch.exp(torch.empty_like(p).uniform_(math.log(1e-3), math.log(1e-1), generator=gen))
            p.copy_(dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
        elif leaf == "conv_weight":
            p.uniform_(-1 / math.sqrt(cfg.conv_kernel), 1 / math.sqrt(cfg.conv_kernel), generator=gen)
        elif leaf == "down" or name.endswith(("wo.weight", "out_proj.weight", "down.weight")):
            p.normal_(0, out_std, generator=gen)
        elif p.dim() >= 2:
            p.normal_(0, 1.0 if name == "embed.weight" else cfg.init_std, generator=gen)


def build_model(cfg: EngineConfig, device="cpu") -> HybridModel:
    """Build, initialize (seeded by cfg.seed) and return the model in eval mode."""
    model = HybridModel(cfg, device=torch.device(device))
    init_weights(model, cfg.seed)
    return model.eval().requires_grad_(False)
