"""Mamba2 SSD prefill scan over packed variable-length sequences: public op and PyTorch reference.

Per sequence s (tokens cu_seqlens[s] .. cu_seqlens[s+1]-1), per head h (group g = h // (H // G)):
    h_t = exp(dt_t A_h) h_{t-1} + dt_t x_t ⊗ B_t        (state [P, N], starts at initial_states[s] or 0)
    y_t = C_t · h_t + D_h x_t
``ssd_chunk_scan`` dispatches to the Triton kernels (ssd_triton.py) on CUDA, else to
``ssd_chunk_scan_ref``: the chunked SSD algorithm (mamba's ssd_minimal) in float32 PyTorch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ._backend import select_backend
from .checks import check_scan_args


def ssd_chunk_scan(
    x, dt, A, B, C, D=None, *, cu_seqlens, initial_states=None, chunk_size=64, backend=None
):
    """Prefill scan of packed sequences. Returns (y [T, H, P] in x.dtype, final_states [S, H, P, N] fp32).

    x [T, H, P]; dt [T, H] (already softplus'd, > 0); A [H] (< 0); B, C [T, G, N]; D [H] | None;
    cu_seqlens [S+1] int32 (cu_seqlens[0] = 0, cu_seqlens[-1] = T); initial_states [S, H, P, N] | None.
    ``backend``: None (Triton on CUDA when importable, else torch), 'triton' or 'torch'.
    """
    check_scan_args(x, dt, A, B, C, D, cu_seqlens, initial_states)
    if select_backend("ssd_chunk_scan", x, backend) == "triton":
        from .ssd_triton import ssd_chunk_scan_triton

        return ssd_chunk_scan_triton(
            x, dt, A, B, C, D, cu_seqlens=cu_seqlens, initial_states=initial_states, chunk_size=chunk_size
        )
    return ssd_chunk_scan_ref(
        x, dt, A, B, C, D, cu_seqlens=cu_seqlens, initial_states=initial_states, chunk_size=chunk_size
    )


def _segsum(a: torch.Tensor) -> torch.Tensor:
    """a [..., L] -> [..., L, L] with out[i, j] = a[j+1] + ... + a[i] for j <= i, -inf above the diagonal."""
    L = a.shape[-1]
    a = a[..., None].expand(*a.shape, L)  # value a[i] at [i, j]
    below = torch.tril(torch.ones(L, L, dtype=torch.bool, device=a.device), diagonal=-1)
    sums = a.masked_fill(~below, 0).cumsum(dim=-2)
    on_or_below = torch.tril(torch.ones(L, L, dtype=torch.bool, device=a.device), diagonal=0)
    return sums.masked_fill(~on_or_below, float("-inf"))


def _pad_packed(t: torch.Tensor, seq: torch.Tensor, pos: torch.Tensor, S: int, Lp: int) -> torch.Tensor:
    """Packed [T, ...] -> zero-padded [S, Lp, ...]."""
    out = t.new_zeros((S, Lp) + tuple(t.shape[1:]))
    out[seq, pos] = t
    return out


def ssd_chunk_scan_ref(x, dt, A, B, C, D=None, *, cu_seqlens, initial_states=None, chunk_size=64):
    """Chunked SSD (mamba's ssd_minimal) in float32 PyTorch; same contract as ``ssd_chunk_scan``.

    Sequences are padded to a whole number of chunks with dt = 0 (decay 1, no input), so the state
    at the end of the padding is the state at the end of the sequence.
    """
    T, H, P, G, N, S = check_scan_args(x, dt, A, B, C, D, cu_seqlens, initial_states)
    dev, f32 = x.device, torch.float32
    cu = cu_seqlens.to(dev, torch.int64)
    tok = torch.arange(T, device=dev)
    seq = torch.searchsorted(cu[1:], tok, right=True)  # [T] sequence of each token
    pos = tok - cu[seq]
    nc = max(1, -(-int((cu[1:] - cu[:-1]).max()) // chunk_size))
    Lp, cs = nc * chunk_size, chunk_size
    rep = H // G
    X = _pad_packed(x.to(f32) * dt.to(f32)[..., None], seq, pos, S, Lp).view(S, nc, cs, H, P)
    Adt = _pad_packed(dt.to(f32) * A.to(f32), seq, pos, S, Lp).view(S, nc, cs, H).permute(0, 3, 1, 2)
    Bp = _pad_packed(B.to(f32).repeat_interleave(rep, 1), seq, pos, S, Lp).view(S, nc, cs, H, N)
    Cp = _pad_packed(C.to(f32).repeat_interleave(rep, 1), seq, pos, S, Lp).view(S, nc, cs, H, N)
    Acs = Adt.cumsum(dim=-1)  # [S, H, nc, cs]

    # 1. within each chunk: y_l += sum_{s<=l} (C_l . B_s) exp(Acs_l - Acs_s) dt_s x_s
    Lmat = torch.exp(_segsum(Adt)).permute(0, 2, 1, 3, 4)  # [S, nc, H, l, s]
    CB = torch.einsum("bclhn,bcshn->bchls", Cp, Bp)
    Y = torch.einsum("bchls,bcshp->bclhp", CB * Lmat, X)
    # 2. each chunk's own end state, from zero
    decay_to_end = torch.exp(Acs[..., -1:] - Acs).permute(0, 2, 3, 1)[..., None]  # [S, nc, cs, H, 1]
    states = torch.einsum("bclhn,bclhp->bchpn", Bp * decay_to_end, X)
    # 3. pass states across chunks: state entering chunk c, and the final state
    h0 = initial_states.to(f32) if initial_states is not None else states.new_zeros(S, H, P, N)
    states = torch.cat([h0[:, None], states], dim=1)  # [S, nc+1, H, P, N]
    decay_chunk = torch.exp(_segsum(F.pad(Acs[..., -1], (1, 0))))  # [S, H, nc+1, nc+1]
    states = torch.einsum("bhzc,bchpn->bzhpn", decay_chunk, states)
    prev, final = states[:, :-1], states[:, -1]
    # 4. entering state -> outputs
    Y = Y + torch.einsum("bclhn,bchpn->bclhp", Cp, prev) * torch.exp(Acs).permute(0, 2, 3, 1)[..., None]
    y = Y.reshape(S, Lp, H, P)[seq, pos]
    if D is not None:
        y = y + D.to(f32)[:, None] * x.to(f32)
    return y.to(x.dtype), final.contiguous()
