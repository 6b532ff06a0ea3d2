"""Float64 sequential recurrences: the ground truth the kernels and their references are tested against.

Token by token, sequence by sequence, in float64 on the CPU; slow on purpose and obviously right.
Shapes follow the public ops (packed variable-length sequences delimited by ``cu_seqlens``).
"""

from __future__ import annotations

import torch

f64 = torch.float64


def _cpu64(t: torch.Tensor | None) -> torch.Tensor | None:
    return None if t is None else t.detach().to("cpu", f64)


def ssd_scan_naive(x, dt, A, B, C, D=None, *, cu_seqlens, initial_states=None):
    """h_t = exp(dt_t A) h_{t-1} + dt_t x_t ⊗ B_t ; y_t = C_t · h_t + D x_t, per sequence, in float64.

    x [T, H, P], dt [T, H], A [H], B/C [T, G, N], D [H] | None, cu_seqlens [S+1],
    initial_states [S, H, P, N] | None.  Returns (y [T, H, P], final_states [S, H, P, N]), float64 CPU.
    """
    x, dt, A, B, C, D, h0 = map(_cpu64, (x, dt, A, B, C, D, initial_states))
    T, H, P = x.shape
    G, N = B.shape[1:]
    B = B.repeat_interleave(H // G, dim=1)  # [T, H, N]: head h reads group h // (H // G)
    C = C.repeat_interleave(H // G, dim=1)
    cu = [int(v) for v in cu_seqlens.tolist()]
    y = torch.zeros(T, H, P, dtype=f64)
    finals = torch.zeros(len(cu) - 1, H, P, N, dtype=f64)
    for s in range(len(cu) - 1):
        h = h0[s].clone() if h0 is not None else torch.zeros(H, P, N, dtype=f64)
        for t in range(cu[s], cu[s + 1]):
            decay = torch.exp(dt[t] * A)  # [H]
            h = decay[:, None, None] * h + (dt[t][:, None] * x[t])[:, :, None] * B[t][:, None, :]
            y[t] = torch.einsum("hpn,hn->hp", h, C[t])
            if D is not None:
                y[t] += D[:, None] * x[t]
        finals[s] = h
    return y, finals


def causal_conv1d_naive(x, weight, bias=None, *, cu_seqlens, initial_conv_states=None, activation="silu"):
    """y_t = act(bias + sum_k weight[:, k] * x_{t-(K-1)+k}), per sequence, in float64.

    Inputs before a sequence's start come from ``initial_conv_states`` [S, D, K-1] (oldest first), or 0.
    Returns (y [T, D], final_conv_states [S, D, K-1]: the last K-1 inputs, oldest first), float64 CPU.
    """
    x, weight, bias, s0 = map(_cpu64, (x, weight, bias, initial_conv_states))
    T, Dm = x.shape
    K = weight.shape[1]
    cu = [int(v) for v in cu_seqlens.tolist()]
    y = torch.zeros(T, Dm, dtype=f64)
    finals = torch.zeros(len(cu) - 1, Dm, K - 1, dtype=f64)
    for s in range(len(cu) - 1):
        window = s0[s].clone() if s0 is not None else torch.zeros(Dm, K - 1, dtype=f64)
        for t in range(cu[s], cu[s + 1]):
            full = torch.cat([window, x[t][:, None]], dim=1)  # [D, K]
            out = (full * weight).sum(dim=1) + (bias if bias is not None else 0.0)
            y[t] = out * torch.sigmoid(out) if activation == "silu" else out
            window = full[:, 1:]
        finals[s] = window
    return y, finals
