"""Static caches, preallocated per request slot: KV for attention layers, conv + SSM state for Mamba2.

Layouts (one entry per layer index that needs it; ``P`` layers have both):
    k[i], v[i]  [slots, n_kv_heads, max_seq_len, head_dim]   model dtype   grows with context (used part)
    conv[i]     [slots, conv_dim, conv_kernel - 1]             model dtype   fixed per request
    ssm[i]      [slots, mamba_heads, mamba_head_dim, ssm_state] float32     fixed per request
A slot row is private to one request; ``reset(slot)`` zeroes its recurrent state on admission (KV rows
need no reset: attention masks past each sequence's own length).
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from .config import EngineConfig


class LayerCache(NamedTuple):
    """One layer's cache tensors (None where the layer has none); what a mixer receives."""

    k: torch.Tensor | None
    v: torch.Tensor | None
    conv: torch.Tensor | None
    ssm: torch.Tensor | None


class HybridCache:
    def __init__(self, cfg: EngineConfig, max_batch: int, max_seq_len: int, device):
        self.cfg, self.max_batch, self.max_seq_len = cfg, max_batch, max_seq_len
        self.k: dict[int, torch.Tensor] = {}
        self.v: dict[int, torch.Tensor] = {}
        self.conv: dict[int, torch.Tensor] = {}
        self.ssm: dict[int, torch.Tensor] = {}
        dt = cfg.torch_dtype
        for i, c in enumerate(cfg.pattern):
            if c in "*P":
                shape = (max_batch, cfg.n_kv_heads, max_seq_len, cfg.head_dim)
                self.k[i] = torch.zeros(shape, dtype=dt, device=device)
                self.v[i] = torch.zeros(shape, dtype=dt, device=device)
            if c in "MP":
                self.conv[i] = torch.zeros(
                    max_batch, cfg.conv_dim, cfg.conv_kernel - 1, dtype=dt, device=device
                )
                self.ssm[i] = torch.zeros(
                    max_batch,
                    cfg.mamba_heads,
                    cfg.mamba_head_dim,
                    cfg.ssm_state,
                    dtype=torch.float32,
                    device=device,
                )

    def layer(self, i: int) -> LayerCache:
        return LayerCache(self.k.get(i), self.v.get(i), self.conv.get(i), self.ssm.get(i))

    def reset(self, slot: int) -> None:
        """Zero the recurrent state of ``slot`` (a new request starts from h = 0, empty conv window)."""
        for t in (*self.conv.values(), *self.ssm.values()):
            t[slot].zero_()

    @property
    def kv_bytes_per_token(self) -> int:
        """KV bytes one token adds (all attention layers, K and V)."""
        return sum(2 * t[0, :, 0].numel() * t.element_size() for t in self.k.values())

    @property
    def state_bytes_per_request(self) -> tuple[int, int]:
        """(SSM state bytes, conv state bytes) one request holds, whatever its length."""
        ssm = sum(t[0].numel() * t.element_size() for t in self.ssm.values())
        conv = sum(t[0].numel() * t.element_size() for t in self.conv.values())
        return ssm, conv

    def memory_breakdown(self, tokens: list[int] | None = None) -> dict[str, int]:
        """Bytes by kind. ``*_allocated``: the static buffers. With ``tokens`` (cached tokens of each
        live request) also what those requests use: KV grows with their tokens, state is per request."""
        ssm, conv = self.state_bytes_per_request
        out = {
            "kv_cache_allocated": sum(
                t.numel() * t.element_size() for t in (*self.k.values(), *self.v.values())
            ),
            "ssm_state_allocated": ssm * self.max_batch,
            "conv_state_allocated": conv * self.max_batch,
        }
        if tokens is not None:
            out["kv_cache_used"] = self.kv_bytes_per_token * sum(tokens)
            out["ssm_state_used"] = ssm * len(tokens)
            out["conv_state_used"] = conv * len(tokens)
        return out
