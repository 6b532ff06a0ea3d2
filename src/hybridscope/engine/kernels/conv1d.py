"""Mamba2's short causal depthwise convolution, prefill (packed sequences) and decode, with conv states.

Per channel d and sequence: y_t = act(bias_d + sum_k weight[d, k] * x_{t-(K-1)+k}); inputs before the
sequence's start come from its conv state [D, K-1] (the last K-1 inputs, oldest first) or are 0.
Ops dispatch to Triton (conv1d_triton.py) on CUDA, else to the ``*_ref`` PyTorch references.
"""

from __future__ import annotations

import torch

from ._backend import select_backend
from .checks import check_conv_args


def _act(y: torch.Tensor, activation) -> torch.Tensor:
    return torch.nn.functional.silu(y) if activation == "silu" else y


def causal_conv1d(x, weight, bias=None, *, cu_seqlens, initial_conv_states=None, activation="silu",
                  backend=None):
    """Prefill. x [T, D] packed; weight [D, K]; bias [D] | None; cu_seqlens [S+1] int32;
    initial_conv_states [S, D, K-1] | None. Returns (y [T, D] in x.dtype, final_conv_states
    [S, D, K-1] in x.dtype: each sequence's last K-1 inputs, reaching into its initial state)."""
    Dm, K = check_conv_args(x, weight, bias, activation)
    S = cu_seqlens.numel() - 1
    if initial_conv_states is not None and initial_conv_states.shape != (S, Dm, K - 1):
        raise ValueError(f"initial_conv_states must be [S, D, K-1]={[S, Dm, K - 1]}, "
                         f"got {tuple(initial_conv_states.shape)}")
    if select_backend("causal_conv1d", x, backend) == "triton":
        from .conv1d_triton import causal_conv1d_triton

        return causal_conv1d_triton(x, weight, bias, cu_seqlens, initial_conv_states, activation)
    return causal_conv1d_ref(x, weight, bias, cu_seqlens=cu_seqlens,
                             initial_conv_states=initial_conv_states, activation=activation)


def causal_conv1d_ref(x, weight, bias=None, *, cu_seqlens, initial_conv_states=None, activation="silu"):
    """Float32 PyTorch reference of ``causal_conv1d``: each sequence's conv state is placed in front of
    its tokens in one extended buffer, and every token gathers its K-wide window from there."""
    Dm, K = check_conv_args(x, weight, bias, activation)
    T, dev = x.shape[0], x.device
    cu = cu_seqlens.to(dev, torch.int64)
    S = cu.numel() - 1
    tok = torch.arange(T, device=dev)
    seq = torch.searchsorted(cu[1:], tok, right=True)
    ext = x.new_zeros(T + S * (K - 1), Dm, dtype=torch.float32)  # per sequence: K-1 state rows, tokens
    xpos = tok + (seq + 1) * (K - 1)
    ext[xpos] = x.float()
    starts = cu[:-1] + torch.arange(S, device=dev) * (K - 1)  # first state row of each sequence
    state_rows = starts[:, None] + torch.arange(K - 1, device=dev)  # [S, K-1]
    if initial_conv_states is not None:
        ext[state_rows] = initial_conv_states.float().transpose(1, 2)
    win = ext[xpos[:, None] - (K - 1) + torch.arange(K, device=dev)]  # [T, K, D]
    y = (win * weight.float().t()).sum(dim=1)
    if bias is not None:
        y = y + bias.float()
    ends = cu[1:] + torch.arange(1, S + 1, device=dev) * (K - 1)  # one past each sequence's last row
    final = ext[ends[:, None] - (K - 1) + torch.arange(K - 1, device=dev)].transpose(1, 2)  # [S, D, K-1]
    return _act(y, activation).to(x.dtype), final.to(x.dtype).contiguous()


def causal_conv1d_update(conv_state, x, weight, bias=None, activation="silu", *, backend=None):
    """Decode: one token per sequence. conv_state [S, D, K-1] (updated in place: shifted left, x
    appended); x [S, D]; weight [D, K]; bias [D] | None. Returns y [S, D] in x.dtype."""
    Dm, K = check_conv_args(x, weight, bias, activation)
    if conv_state.shape != (x.shape[0], Dm, K - 1):
        raise ValueError(f"conv_state must be [S, D, K-1]={[x.shape[0], Dm, K - 1]}, got {tuple(conv_state.shape)}")
    if select_backend("causal_conv1d_update", x, backend) == "triton":
        from .conv1d_triton import causal_conv1d_update_triton

        return causal_conv1d_update_triton(conv_state, x, weight, bias, activation)
    return causal_conv1d_update_ref(conv_state, x, weight, bias, activation)


def causal_conv1d_update_ref(conv_state, x, weight, bias=None, activation="silu"):
    """Float32 PyTorch reference of ``causal_conv1d_update`` (same contract, conv_state updated in place)."""
    check_conv_args(x, weight, bias, activation)
    full = torch.cat([conv_state.float(), x.float()[..., None]], dim=-1)  # [S, D, K]
    y = (full * weight.float()).sum(dim=-1)
    if bias is not None:
        y = y + bias.float()
    conv_state.copy_(full[..., 1:])
    return _act(y, activation).to(x.dtype)
