"""Decode kernels of the attention and MoE layers (``attn_decode``, ``moe_route``, ``moe_experts_gemv``)
and the norms / Mamba2 step sizes (``rms_norm``, ``gated_rms_norm``, ``mamba_dt``) against float64; the Triton kernels on GPU (``gpu`` marker) and under Triton's CPU
interpreter (a subprocess; fp32/fp16: the interpreter's bf16 dot is not faithful).

Inputs are fresh random every run (seed from HYBRIDSCOPE_SEED if set; every message carries it).
Error metric: ||out - truth|| / ||truth||. Bounds: fp32 1e-5, fp16 3e-3, bf16 2e-2 (inputs are
rounded to the dtype before the float64 truth; the bound covers output and hidden-activation rounding).
"""

from __future__ import annotations

import math
import os

import pytest
import torch
import torch.nn.functional as F
from kernel_numerics import REL, fresh_seed, needs_triton, rel_err, run_under_triton_interpreter

from hybridscope.engine import kernels as K
from hybridscope.engine.config import EngineConfig
from hybridscope.engine.model import build_model
from hybridscope.engine.moe import moe_ref

gpu = pytest.mark.gpu


@pytest.fixture
def seed():
    return fresh_seed()


# ---- float64 truths ------------------------------------------------------------------------------
def route_f64(logits, bias, kind, k, norm, scale):
    lg = logits.double()
    if kind == "sigmoid":
        scores = torch.sigmoid(lg)
        ids = torch.topk(scores + bias.double(), k, dim=-1).indices
        w = scores.gather(-1, ids)
    else:
        w, ids = torch.topk(lg.softmax(-1), k, dim=-1)
    if norm:
        w = w / w.sum(-1, keepdim=True)
    return w * scale, ids, torch.bincount(ids.reshape(-1), minlength=logits.shape[1]).double()


def act_f64(h, activation):
    if activation == "relu2":
        return F.relu(h) ** 2
    g, u = h.chunk(2, dim=-1)
    return g * torch.sigmoid(g) * u


def gemv_f64(x, ids, w, wu, wd, activation, su=None, sd=None, res=None):
    """Per token, per selected expert, in float64: the naive loop."""
    y = torch.zeros(x.shape, dtype=torch.float64)
    for t in range(x.shape[0]):
        xt = x[t].double()
        for j in range(ids.shape[1]):
            e = int(ids[t, j])
            y[t] += float(w[t, j]) * (wd[e].double() @ act_f64(wu[e].double() @ xt, activation))
        if su is not None:
            y[t] += sd.double() @ act_f64(su.double() @ xt, activation)
        if res is not None:
            y[t] += res[t].double()
    return y


def attn_f64(q, kc, vc, positions, kv_len):
    """Causal GQA attention of each row's query over keys 0..pos of its slot, float64."""
    B, Hq, D = q.shape
    G = Hq // kc.shape[1]
    o = torch.zeros(B, Hq, D, dtype=torch.float64)
    for b in range(B):
        n = min(int(positions[b]) + 1, kv_len)
        for h in range(Hq):
            k, v = kc[b, h // G, :n].double(), vc[b, h // G, :n].double()
            p = torch.softmax(k @ q[b, h].double() / math.sqrt(D), dim=0)
            o[b, h] = p @ v
    return o


def rms_f64(x, z, w, groups, eps):
    g = x.double() if z is None else x.double() * F.silu(z.double())
    T, d = g.shape
    g = g.view(T, groups, d // groups)
    return (g / torch.sqrt((g * g).mean(-1, keepdim=True) + eps)).view(T, d) * w.double()


# ---- input factories -----------------------------------------------------------------------------
def gemv_inputs(T, d, k, E, I, Is, activation, dtype, device="cpu", residual=True):
    m = 2 if activation == "swiglu" else 1
    kw = {"device": device}
    ids = torch.stack([torch.randperm(E, **kw)[:k] for _ in range(T)])  # k distinct experts per token
    return {
        "x": torch.randn(T, d, **kw).to(dtype),
        "ids": ids,
        "weights": torch.rand(T, k, **kw),
        "w_up": (torch.randn(E, m * I, d, **kw) / math.sqrt(d)).to(dtype),
        "w_down": (torch.randn(E, d, I, **kw) / math.sqrt(I)).to(dtype),
        "activation": activation,
        "shared_up": (torch.randn(m * Is, d, **kw) / math.sqrt(d)).to(dtype) if Is else None,
        "shared_down": (torch.randn(d, Is, **kw) / math.sqrt(Is)).to(dtype) if Is else None,
        "residual": torch.randn(T, d, **kw).to(dtype) if residual else None,
    }


def attn_inputs(B, Hq, Hkv, D, L, positions, dtype, device="cpu"):
    kw = {"device": device}
    return {
        "q": torch.randn(B, Hq, D, **kw).to(dtype),
        "k_new": torch.randn(B, Hkv, D, **kw).to(dtype),
        "v_new": torch.randn(B, Hkv, D, **kw).to(dtype),
        "k_cache": torch.randn(B + 1, Hkv, L, D, **kw).to(dtype),
        "v_cache": torch.randn(B + 1, Hkv, L, D, **kw).to(dtype),
        "positions": torch.tensor(positions, device=device),
    }


ROUTE_CASES = [(1, 8, 2), (5, 32, 6), (37, 12, 3), (40, 128, 8)]  # (T, E, k): one and several programs
GEMV_CASES = [(1, 48, 6, 32, 24, 40), (3, 40, 2, 5, 24, 56), (2, 33, 1, 3, 17, 0)]  # (T, d, k, E, I, I_s)
ATTN_CASES = [  # (B, Hq, Hkv, D, L, kv_len, positions): ragged positions, G = 1, 2, 4, 16
    (1, 4, 2, 16, 300, 256, [200]),
    (3, 8, 2, 32, 200, 200, [0, 63, 199]),
    (2, 6, 6, 16, 128, 128, [64, 5]),
    (2, 32, 2, 64, 520, 512, [511, 130]),
]


# ---- checks shared by the CPU reference tests, the GPU tests and the interpreter run -----------------
def check_route(backend, kind, norm, case, dtype, s, device="cpu"):
    T, E, k = case
    # distinct logits in every row (a random permutation of a grid, jittered): ties would make the
    # order among equal scores implementation-defined (the kernel gives the lower id)
    grid = torch.argsort(torch.rand(T, E, device=device), dim=1).float() * (8.0 / E) - 4.0
    logits = (grid + torch.rand(T, E, device=device) * (2.0 / E)).to(dtype)
    bias = torch.randn(E, device=device) * 0.1
    load = torch.full((E,), -1.0, device=device)  # stale values must be overwritten
    w, ids, ld, lg = K.moe_route(logits, bias, kind, k, norm, 2.5, load=load, backend=backend)
    tw, tids, tload = route_f64(logits.cpu(), bias.cpu(), kind, k, norm, 2.5)
    assert torch.equal(ids.cpu(), tids), f"seed={s} {kind} {case}"
    assert rel_err(w, tw) < 1e-6, f"seed={s} {kind} {case}: {rel_err(w, tw)}"
    assert ld is load and torch.equal(load.cpu().double(), tload), f"seed={s}"
    assert lg.dtype == torch.float32 and torch.equal(lg.cpu(), logits.float().cpu())


def check_gemv(backend, case, activation, dtype, s, device="cpu", bound=REL):
    inp = gemv_inputs(*case, activation, dtype, device)
    out = K.moe_experts_gemv(**inp, backend=backend)
    truth = gemv_f64(*(v.cpu() if torch.is_tensor(v) else v for v in inp.values()))
    assert out.dtype == dtype and out.shape == inp["x"].shape
    err = rel_err(out, truth)
    assert err < bound[dtype], f"seed={s} {case} {activation} {dtype}: {err:.2e}"


def check_attn(backend, case, dtype, s, device="cpu", bound=REL):
    B, Hq, Hkv, D, L, kv_len, positions = case
    inp = attn_inputs(B, Hq, Hkv, D, L, positions, dtype, device)
    before_k, before_v = inp["k_cache"].clone(), inp["v_cache"].clone()
    out = K.attn_decode(**inp, kv_len=kv_len, backend=backend)
    rows = torch.arange(B, device=device)
    before_k[rows, :, inp["positions"]] = inp["k_new"]
    before_v[rows, :, inp["positions"]] = inp["v_new"]
    assert torch.equal(inp["k_cache"], before_k) and torch.equal(inp["v_cache"], before_v), f"seed={s}"
    truth = attn_f64(inp["q"].cpu(), before_k.cpu(), before_v.cpu(), inp["positions"].cpu(), kv_len)
    err = rel_err(out, truth)
    assert err < bound[dtype], f"seed={s} {case} {dtype}: {err:.2e}"


NORM_CASES = [(1, 2688, 1), (3, 200, 4), (5, 4096, 8), (2, 96, 3)]  # (T, d, groups)


def check_norms(backend, case, dtype, s, device="cpu", bound=REL):
    T, d, groups = case
    zbuf = torch.randn(T, 2 * d, device=device).to(dtype)  # z a strided view, as in Mamba2's in_proj split
    x, z, w = torch.randn(T, d, device=device).to(dtype), zbuf[:, d:], torch.randn(d, device=device).to(dtype)
    out = K.gated_rms_norm(x, z, w, groups, 1e-5, backend=backend)
    err = rel_err(out, rms_f64(x.cpu(), z.cpu(), w.cpu(), groups, 1e-5))
    assert out.dtype == dtype and err < bound[dtype], f"seed={s} gated {case} {dtype}: {err:.2e}"
    out = K.rms_norm(x, w, 1e-5, backend=backend)
    err = rel_err(out, rms_f64(x.cpu(), None, w.cpu(), 1, 1e-5))
    assert out.dtype == dtype and err < bound[dtype], f"seed={s} rms {case} {dtype}: {err:.2e}"


def check_dt(backend, dtype, s, device="cpu"):
    """Elementwise relative error: Mamba2's dt lives at softplus^-1(1e-3..1e-1) ~ -7..-2, where a naive
    log(1 + exp(x)) loses ~1e-4; rows 0-3 are that range, rows 4-6 wide (past the threshold 20 too)."""
    raw = torch.cat([torch.rand(4, 48) * -8 - 2, torch.randn(3, 48) * 12]).to(device).to(dtype)
    bias, a_log = torch.randn(48, device=device) * 0.1, torch.randn(48, device=device)
    dt, A = K.mamba_dt(raw[:, 8:32], bias[:24], a_log[:24], backend=backend)  # strided rows
    x = raw[:, 8:32].cpu().double() + bias[:24].cpu().double()
    truth = torch.where(x > 20, x, torch.log1p(torch.exp(x)))
    assert dt.dtype == A.dtype == torch.float32
    worst = ((dt.cpu().double() - truth).abs() / truth).max().item()
    # fp32 softplus = exp, log1p and a division on the GPU's fp32 units: a few ulp each (2.4e-6 seen on an
    # H200 with bf16 inputs, 2026-11-22); a naive log(1 + exp(x)) would be off by ~1e-4 at these x
    assert worst < 1e-5, f"seed={s} {dtype}: {worst:.2e}"
    assert rel_err(A, -torch.exp(a_log[:24].cpu().double())) < 1e-6, f"seed={s}"


# ---- CPU: the references -------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["sigmoid", "softmax"])
@pytest.mark.parametrize("norm", [True, False])
@pytest.mark.parametrize("case", ROUTE_CASES)
def test_route_ref_matches_f64(kind, norm, case, seed):
    check_route("torch", kind, norm, case, torch.float32, seed)


@pytest.mark.parametrize("activation", ["relu2", "swiglu"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", GEMV_CASES)
def test_experts_gemv_ref_matches_f64(case, activation, dtype, seed):
    check_gemv("torch", case, activation, dtype, seed)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", ATTN_CASES)
def test_attn_decode_ref_matches_f64(case, dtype, seed):
    check_attn("torch", case, dtype, seed)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", NORM_CASES)
def test_norm_refs_match_f64(case, dtype, seed):
    check_norms("torch", case, dtype, seed)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_mamba_dt_ref_matches_f64(dtype, seed):
    check_dt("torch", dtype, seed)


def test_attn_decode_steps_equal_causal_prefill(seed):
    """Token-by-token decode into an empty cache equals causal attention over the whole sequence."""
    Hq, Hkv, D, n = 8, 2, 16, 23
    q, k, v = torch.randn(n, Hq, D), torch.randn(n, Hkv, D), torch.randn(n, Hkv, D)
    kc, vc = torch.zeros(1, Hkv, 32, D), torch.zeros(1, Hkv, 32, D)
    outs = [K.attn_decode(q[t : t + 1], k[t : t + 1], v[t : t + 1], kc, vc, torch.tensor([t]), 32)[0]
            for t in range(n)]
    full = F.scaled_dot_product_attention(
        q.transpose(0, 1)[None].double(), k.transpose(0, 1)[None].double(), v.transpose(0, 1)[None].double(),
        is_causal=True, enable_gqa=True,
    )[0].transpose(0, 1)
    assert rel_err(torch.stack(outs), full) < REL[torch.float32], f"seed={seed}"


@pytest.mark.parametrize("T", [1, 2, 4])
def test_moe_gemv_path_equals_per_token_reference(T, seed):
    """MoE.forward on the decode path (T * top_k <= experts) equals the naive per-expert loop, and
    adds the residual; with more rows it takes the grouped path (same answer)."""
    moe = build_model(EngineConfig.from_preset("tiny", n_experts=8, top_k=2)).layers[1].moe
    assert moe.gemv_path(T) and not moe.gemv_path(5)
    x, res = torch.randn(T, 64), torch.randn(T, 64)
    truth = moe_ref(moe, x)
    assert rel_err(moe(x), truth) < REL[torch.float32], f"seed={seed}"
    assert rel_err(moe(x, residual=res), truth + res) < REL[torch.float32], f"seed={seed}"
    assert torch.equal(moe.router.load, torch.bincount(moe.router(x).ids.reshape(-1), minlength=8).float())


def test_bad_shapes_raise_one_clear_error():
    inp = gemv_inputs(2, 16, 2, 4, 8, 8, "relu2", torch.float32)
    with pytest.raises(ValueError, match="w_down"):
        K.moe_experts_gemv(**{**inp, "w_down": inp["w_down"][:, :, :4]})
    with pytest.raises(ValueError, match="activation"):
        K.moe_experts_gemv(**{**inp, "activation": "gelu"})
    with pytest.raises(ValueError, match="top_k"):
        K.moe_route(torch.randn(2, 4), torch.zeros(4), "sigmoid", 5, True, 1.0)
    a = attn_inputs(2, 4, 2, 16, 32, [3, 4], torch.float32)
    with pytest.raises(ValueError, match="k_new"):
        K.attn_decode(**{**a, "k_new": a["k_new"][:, :1]}, kv_len=32)
    with pytest.raises(ValueError, match="kv_len"):
        K.attn_decode(**a, kv_len=64)


def test_backend_choice_is_logged():
    """CPU input: the reference, and the choice recorded (logged once) with its reason."""
    check_attn(None, ATTN_CASES[0], torch.float32, 0)
    assert ("attn_decode", "torch", "cpu input") in K._backend._announced


# ---- Triton under the CPU interpreter -------------------------------------------------------------
@needs_triton
def test_triton_kernels_under_cpu_interpreter(seed):
    """The kernels' logic without a GPU: TRITON_INTERPRET=1 must precede their definition, hence the
    subprocess (this file's ``__main__``); ~10 s."""
    run_under_triton_interpreter(__file__, seed)


def _interpret_main() -> None:
    s = int(os.environ["HYBRIDSCOPE_SEED"])
    torch.manual_seed(s)
    for dtype in (torch.float32, torch.float16):
        for kind in ("sigmoid", "softmax"):
            for case in ROUTE_CASES[:3]:
                check_route("triton", kind, True, case, dtype, s)
        for act in ("relu2", "swiglu"):
            for case in GEMV_CASES:
                check_gemv("triton", case, act, dtype, s)
        for case in ATTN_CASES[:3]:
            check_attn("triton", case, dtype, s)
        for case in NORM_CASES:
            check_norms("triton", case, dtype, s)
        check_dt("triton", dtype, s)


# ---- GPU -----------------------------------------------------------------------------------------
@gpu
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_triton_decode_kernels_match_f64(dtype, seed):
    for kind in ("sigmoid", "softmax"):
        for case in ROUTE_CASES:
            check_route("triton", kind, True, case, torch.float32, seed, "cuda")
    for act in ("relu2", "swiglu"):
        for case in GEMV_CASES:
            check_gemv("triton", case, act, dtype, seed, "cuda")
    for case in ATTN_CASES:
        check_attn("triton", case, dtype, seed, "cuda")
    for case in NORM_CASES:
        check_norms("triton", case, dtype, seed, "cuda")
    check_dt("triton", dtype, seed, "cuda")


@gpu
def test_triton_moe_gemv_nemotron_shapes(seed):
    """The real widths (d 2688, I 1856, shared 3712, 32 experts, top-6), bf16."""
    check_gemv("triton", (1, 2688, 6, 32, 1856, 3712), "relu2", torch.bfloat16, seed, "cuda")


@gpu
def test_decode_kernels_replay_under_cuda_graph(seed):
    inp = gemv_inputs(2, 64, 2, 8, 32, 48, "relu2", torch.bfloat16, "cuda")
    a = attn_inputs(2, 8, 2, 64, 300, [299, 17], torch.bfloat16, "cuda")
    logits, bias, load = torch.randn(2, 8, device="cuda"), torch.zeros(8, device="cuda"), torch.zeros(8, device="cuda")

    def step():
        r = K.moe_route(logits, bias, "sigmoid", 2, True, 1.0, load=load)
        return r[0], K.moe_experts_gemv(**inp), K.attn_decode(**a, kv_len=300)

    eager = step()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = step()
    graph.replay()
    torch.cuda.synchronize()
    for e, g in zip(eager, out):
        assert torch.equal(e, g), f"seed={seed}"


if __name__ == "__main__":
    _interpret_main()
