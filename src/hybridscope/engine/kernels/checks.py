"""The kernels' argument checks: shapes, dtypes and options of every op, in one place.

Each op (`attn_decode.py`, `ssd.py`, ...) checks its arguments before dispatching to its backend,
and each Triton launcher (`*_triton.py`) checks them again before allocating; both import the
checks from here, so an op and its Triton module never import each other in a circle.
"""

from __future__ import annotations

import torch

CONV_ACTIVATIONS = ("silu", None)  # causal_conv1d
ROUTERS = ("sigmoid", "softmax")  # moe_route
MOE_ACTIVATIONS = ("relu2", "swiglu")  # moe_experts_gemv


def check_attn_args(q, k_new, v_new, k_cache, v_cache, positions, kv_len) -> tuple[int, int, int, int]:
    """Validate shapes; return (B, Hq, Hkv, D)."""
    if q.dim() != 3 or k_cache.dim() != 4:
        raise ValueError(f"q must be [B, Hq, D] and caches [slots, Hkv, L, D]; got {tuple(q.shape)}, "
                         f"{tuple(k_cache.shape)}")
    B, Hq, D = q.shape
    S, Hkv, L, Dc = k_cache.shape
    if v_cache.shape != k_cache.shape or Dc != D or S < B or Hq % Hkv:
        raise ValueError(f"caches must be [slots >= {B}, Hkv | {Hq}, L, {D}]; got {tuple(k_cache.shape)}, "
                         f"{tuple(v_cache.shape)}")
    if k_new.shape != (B, Hkv, D) or v_new.shape != (B, Hkv, D):
        raise ValueError(f"k_new and v_new must be [B, Hkv, D]={[B, Hkv, D]}; got {tuple(k_new.shape)}, "
                         f"{tuple(v_new.shape)}")
    if positions.shape != (B,):
        raise ValueError(f"positions must be [B]={[B]}, got {tuple(positions.shape)}")
    if not 1 <= kv_len <= L:
        raise ValueError(f"kv_len={kv_len} outside 1..{L}")
    return B, Hq, Hkv, D


def check_conv_args(x, weight, bias, activation) -> tuple[int, int]:
    """Validate x [T, D], weight [D, K], bias [D] | None; return (D, K)."""
    if x.dim() != 2 or weight.dim() != 2 or weight.shape[0] != x.shape[1]:
        raise ValueError(f"x must be [T, D] and weight [D, K]; got {tuple(x.shape)}, {tuple(weight.shape)}")
    Dm, K = weight.shape
    if K < 2:
        raise ValueError(f"kernel width K must be >= 2, got {K}")
    if bias is not None and bias.shape != (Dm,):
        raise ValueError(f"bias must be [D]={[Dm]}, got {tuple(bias.shape)}")
    if activation not in CONV_ACTIVATIONS:
        raise ValueError(f"activation must be one of {CONV_ACTIVATIONS}, got {activation!r}")
    return Dm, K


def check_dt_args(dt, dt_bias, A_log) -> tuple[int, int]:
    if dt.dim() != 2 or dt_bias.shape != (dt.shape[1],) or A_log.shape != (dt.shape[1],):
        raise ValueError(f"dt must be [T, H], dt_bias and A_log [H]; got {tuple(dt.shape)}, "
                         f"{tuple(dt_bias.shape)}, {tuple(A_log.shape)}")
    return dt.shape


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


def check_gemv_args(x, ids, weights, w_up, w_down, activation, shared_up, shared_down, residual=None):
    """Validate grouped-GEMV inputs; return (T, d, k, E, I, I_shared) (I_shared 0 without shared)."""
    if x.dim() != 2:
        raise ValueError(f"x must be [T, d], got {tuple(x.shape)}")
    T, d = x.shape
    if activation not in MOE_ACTIVATIONS:
        raise ValueError(f"activation must be one of {MOE_ACTIVATIONS}, got {activation!r}")
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


def check_norm_args(x, z, weight, groups) -> tuple[int, int]:
    """Validate shapes; return (T, d)."""
    if x.dim() != 2:
        raise ValueError(f"input must be [T, d], got {tuple(x.shape)}")
    T, d = x.shape
    if z is not None and z.shape != (T, d):
        raise ValueError(f"z must be [T, d]={[T, d]}, got {tuple(z.shape)}")
    if weight.shape != (d,):
        raise ValueError(f"weight must be [d]={[d]}, got {tuple(weight.shape)}")
    if groups < 1 or d % groups:
        raise ValueError(f"d={d} is not a multiple of groups={groups}")
    return T, d


def check_scan_args(x, dt, A, B, C, D, cu_seqlens, initial_states) -> tuple[int, int, int, int, int, int]:
    """Validate shapes of a packed scan; return (T, H, P, G, N, S)."""
    if x.dim() != 3:
        raise ValueError(f"x must be [T, H, P], got {tuple(x.shape)}")
    T, H, P = x.shape
    if B.dim() != 3 or B.shape[0] != T or C.shape != B.shape:
        raise ValueError(f"B and C must both be [T={T}, G, N], got {tuple(B.shape)} and {tuple(C.shape)}")
    G, N = B.shape[1:]
    if H % G:
        raise ValueError(f"heads H={H} must be a multiple of groups G={G}")
    if dt.shape != (T, H) or A.shape != (H,) or (D is not None and D.shape != (H,)):
        raise ValueError(f"dt must be [T, H]=[{T}, {H}], A and D [H]; got {tuple(dt.shape)}, {tuple(A.shape)}")
    if cu_seqlens.dim() != 1 or cu_seqlens.numel() < 2:
        raise ValueError("cu_seqlens must be [S+1] with S >= 1")
    S = cu_seqlens.numel() - 1
    if initial_states is not None and initial_states.shape != (S, H, P, N):
        raise ValueError(f"initial_states must be [S, H, P, N]={[S, H, P, N]}, got {tuple(initial_states.shape)}")
    return T, H, P, G, N, S


def check_update_args(state, x, dt, A, B, C, D) -> tuple[int, int, int, int, int]:
    """Validate decode shapes; return (S, H, P, G, N)."""
    if state.dim() != 4 or state.dtype != torch.float32:
        raise ValueError(f"state must be float32 [S, H, P, N], got {state.dtype} {tuple(state.shape)}")
    S, H, P, N = state.shape
    if x.shape != (S, H, P) or dt.shape != (S, H) or A.shape != (H,):
        raise ValueError(f"x must be [S, H, P]={[S, H, P]}, dt [S, H], A [H]; got {tuple(x.shape)}, "
                         f"{tuple(dt.shape)}, {tuple(A.shape)}")
    if B.dim() != 3 or B.shape[0] != S or B.shape[2] != N or C.shape != B.shape or H % B.shape[1]:
        raise ValueError(f"B and C must be [S, G, N] with H % G == 0; got {tuple(B.shape)}, {tuple(C.shape)}")
    if D is not None and D.shape != (H,):
        raise ValueError(f"D must be [H], got {tuple(D.shape)}")
    return S, H, P, B.shape[1], N
