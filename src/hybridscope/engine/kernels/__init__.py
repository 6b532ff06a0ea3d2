"""Mamba2 kernels of the reference engine: Triton on CUDA, plain-PyTorch references beside them.

Public ops (each dispatches explicitly, see ``_backend``; ``backend='triton'|'torch'`` overrides):
    ssd_chunk_scan(x, dt, A, B, C, D=None, *, cu_seqlens, initial_states=None, chunk_size=64)
        -> (y [T, H, P], final_states [S, H, P, N] fp32)          prefill, packed sequences
    ssm_state_update(state, x, dt, A, B, C, D=None) -> y [S, H, P]  decode, state updated in place
    causal_conv1d(x, weight, bias, *, cu_seqlens, initial_conv_states=None, activation='silu')
        -> (y [T, D], final_conv_states [S, D, K-1])               prefill
    causal_conv1d_update(conv_state, x, weight, bias, activation='silu') -> y [S, D]   decode
Every op also takes ``backend=None|'triton'|'torch'`` (keyword-only). Each has ``<op>_ref`` (same
arguments, no ``backend``); ``naive`` holds the float64 sequential ground truth.

Decode ops of the other layer types (same dispatch; see their modules):
    attn_decode(q, k_new, v_new, k_cache, v_cache, positions, kv_len) -> o [B, Hq, D]  GQA + KV append
    moe_route(logits, correction_bias, kind, top_k, norm_topk, scale, load=None)
        -> (weights [T, k], ids [T, k], load [E], logits fp32 [T, E])
    moe_experts_gemv(x, ids, weights, w_up, w_down, activation, shared_up, shared_down, residual)
        -> y [T, d]
    rms_norm(x, weight, eps); gated_rms_norm(y, z, weight, groups, eps) -> [T, d]       norms
    mamba_dt(dt_raw, dt_bias, A_log) -> (dt fp32 [T, H], A [H])                       Mamba2 step sizes
"""

from ._backend import select_backend, triton_status
from .attn_decode import attn_decode, attn_decode_ref
from .conv1d import causal_conv1d, causal_conv1d_ref, causal_conv1d_update, causal_conv1d_update_ref
from .mamba_dt import mamba_dt, mamba_dt_ref
from .moe_gemv import moe_experts_gemv, moe_experts_gemv_ref, moe_route, moe_route_ref
from .rmsnorm import gated_rms_norm, gated_rms_norm_ref, rms_norm, rms_norm_ref
from .ssd import ssd_chunk_scan, ssd_chunk_scan_ref
from .ssm_update import ssm_state_update, ssm_state_update_ref

__all__ = [
    "attn_decode",
    "attn_decode_ref",
    "causal_conv1d",
    "causal_conv1d_ref",
    "causal_conv1d_update",
    "causal_conv1d_update_ref",
    "gated_rms_norm",
    "gated_rms_norm_ref",
    "mamba_dt",
    "mamba_dt_ref",
    "moe_experts_gemv",
    "moe_experts_gemv_ref",
    "moe_route",
    "moe_route_ref",
    "rms_norm",
    "rms_norm_ref",
    "select_backend",
    "ssd_chunk_scan",
    "ssd_chunk_scan_ref",
    "ssm_state_update",
    "ssm_state_update_ref",
    "triton_status",
]
