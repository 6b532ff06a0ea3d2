"""Micro-benchmark of the engine's Mamba2 kernels: Triton against the PyTorch references, on one GPU.

    python benchmarks/bench_kernels.py [--out results.json]

Shapes: H=64, P=64, N=128, G=8, bf16; prefill T = 8 x 512 packed tokens (conv width K=4 over
D = H*P + 2*G*N channels); decode S = 8 and S = 64. Every op is checked against its reference first.
Times are medians of CUDA-event timings: "graph" replays calls captured in a CUDA graph (GPU time per
call, no launch overhead), "eager" launches each call from Python (what an engine without graphs
sees). The prefill references sync with the host and are timed eager, so the prefill speedup is eager
against eager; the decode speedup is graph against graph. Decode ops rotate over
enough state buffers to exceed the 50 MB L2, so every call reads its state from HBM;
ssm_state_update's bandwidth counts the fp32 state read and written plus its inputs and output,
against a device-to-device copy measured in the same run. Also: per-kernel times of the SSD scan
(torch.profiler) and a small sweep of its launch parameters (ssd_triton.CONFIG).
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics

import torch
import torch.nn.functional as F

from hybridscope.engine import kernels as K
from hybridscope.engine.kernels import ssd_triton

H, P, N, G, KW = 64, 64, 128, 8, 4
DT = torch.bfloat16


def timed(fn, iters=30, warmup=3) -> float:
    """Median milliseconds per call, eager."""
    for _ in range(warmup):
        fn()
    ev = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(iters)]
    for a, b in ev:
        a.record()
        fn()
        b.record()
    torch.cuda.synchronize()
    return statistics.median(a.elapsed_time(b) for a, b in ev)


def graphed(fns, calls=24, reps=10) -> float:
    """Median milliseconds per call, replaying ``calls`` calls (cycling over ``fns``) in one CUDA graph."""
    fns = fns if isinstance(fns, list) else [fns]
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for fn in fns:
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for i in range(calls):
            fns[i % len(fns)]()
    return timed(g.replay, iters=reps, warmup=2) / calls


def kernel_breakdown(fn) -> dict:
    """Mean GPU microseconds per call of each kernel ``fn`` launches (torch.profiler, 10 calls)."""
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(10):
            fn()
        torch.cuda.synchronize()
    return {e.key: e.device_time_total / 10 for e in prof.key_averages() if e.device_time_total > 0}


def copy_bandwidth() -> float:
    """GB/s of a 1 GiB device-to-device copy (bytes read + written)."""
    a = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    ms = timed(lambda: b.copy_(a), iters=10)
    return 2 * a.numel() / ms / 1e6


def rel(a, b) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def scan_inputs(T: int, S: int):
    x = torch.randn(T, H, P, device="cuda", dtype=DT)
    dt = F.softplus(torch.randn(T, H, device="cuda") - 2).to(DT)
    A = -torch.rand(H, device="cuda") * 4 - 0.1
    B, C = (torch.randn(T, G, N, device="cuda", dtype=DT) for _ in range(2))
    return (x, dt, A, B, C, torch.randn(H, device="cuda")), torch.randn(S, H, P, N, device="cuda")


def prefill(rows: list, extra: dict) -> None:
    lens = [512] * 8
    T = sum(lens)
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32, device="cuda")
    args, h0 = scan_inputs(T, 8)
    yr, fr = K.ssd_chunk_scan_ref(*args, cu_seqlens=cu, initial_states=h0, chunk_size=64)
    t_ref = timed(lambda: K.ssd_chunk_scan_ref(*args, cu_seqlens=cu, initial_states=h0, chunk_size=64))

    def run(cs):
        return lambda: K.ssd_chunk_scan(*args, cu_seqlens=cu, initial_states=h0, chunk_size=cs, backend="triton")

    for cs in (64, 128, 256):
        y, f = run(cs)()
        t, te = graphed(run(cs), calls=10), timed(run(cs))
        rows.append({"op": "ssd_chunk_scan", "shape": f"T={T} (8x512) chunk={cs}", "triton_ms": t,
                     "eager_ms": te, "ref_ms": t_ref, "speedup": t_ref / te,
                     "rel_err_y": rel(y, yr), "rel_err_state": rel(f, fr)})
        extra[f"ssd_kernels_us_chunk{cs}"] = kernel_breakdown(run(cs))
    sweep = []
    default = dict(ssd_triton.CONFIG)
    variants = [{}, {"scan_warps": 8}, {"scan_block_m": 32}, {"state_warps": 8}, {"state_block_n": 64},
                {"stages": 3}, {"scan_warps": 8, "state_warps": 8}]
    from triton.compiler.errors import CompilationError
    from triton.runtime.errors import OutOfResources

    for cs in (64, 128):
        for v in variants:
            ssd_triton.CONFIG.update(default, **v)
            try:
                y, _ = run(cs)()
                sweep.append({"chunk": cs, **v, "ms": graphed(run(cs), calls=10), "rel_err_y": rel(y, yr)})
            except (CompilationError, OutOfResources, RuntimeError) as exc:  # reported, not fatal
                sweep.append({"chunk": cs, **v, "error": repr(exc)[:200]})
    ssd_triton.CONFIG.update(default)
    extra["ssd_config_sweep"] = sweep
    Dc = H * P + 2 * G * N
    xc = torch.randn(T, Dc, device="cuda", dtype=DT)
    w, b = torch.randn(Dc, KW, device="cuda", dtype=DT), torch.randn(Dc, device="cuda", dtype=DT)
    s0 = torch.randn(8, Dc, KW - 1, device="cuda", dtype=DT)
    yr, fr = K.causal_conv1d_ref(xc, w, b, cu_seqlens=cu, initial_conv_states=s0)
    conv = lambda: K.causal_conv1d(xc, w, b, cu_seqlens=cu, initial_conv_states=s0, backend="triton")
    y, f = conv()
    t, te = graphed(conv), timed(conv)
    t_ref = timed(lambda: K.causal_conv1d_ref(xc, w, b, cu_seqlens=cu, initial_conv_states=s0))
    rows.append({"op": "causal_conv1d", "shape": f"T={T} D={Dc} K={KW}", "triton_ms": t, "eager_ms": te,
                 "ref_ms": t_ref, "speedup": t_ref / te, "rel_err_y": rel(y, yr), "rel_err_state": rel(f, fr),
                 "gb_s": 2 * xc.numel() * xc.element_size() / t / 1e6})


def decode(rows: list, S: int, copy_gbs: float) -> None:
    x = torch.randn(S, H, P, device="cuda", dtype=DT)
    dt = F.softplus(torch.randn(S, H, device="cuda") - 2).to(DT)
    A = -torch.rand(H, device="cuda") * 4 - 0.1
    B, C = (torch.randn(S, G, N, device="cuda", dtype=DT) for _ in range(2))
    D = torch.randn(H, device="cuda")
    state_bytes = S * H * P * N * 4
    states = [torch.randn(S, H, P, N, device="cuda") for _ in range(max(2, -(-200_000_000 // state_bytes)))]
    s1, s2 = states[0].clone(), states[0].clone()
    e = rel(K.ssm_state_update(s1, x, dt, A, B, C, D, backend="triton"), K.ssm_state_update_ref(s2, x, dt, A, B, C, D))
    e_state = rel(s1, s2)
    calls = len(states) * max(1, 24 // len(states))
    tri = graphed([lambda st=st: K.ssm_state_update(st, x, dt, A, B, C, D, backend="triton") for st in states], calls)
    ref = graphed([lambda st=st: K.ssm_state_update_ref(st, x, dt, A, B, C, D) for st in states], calls)
    eager = timed(lambda: K.ssm_state_update(states[0], x, dt, A, B, C, D, backend="triton"), iters=100)
    nbytes = 2 * state_bytes + 2 * x.numel() * 2 + 2 * B.numel() * 2 + dt.numel() * 2
    gbs = nbytes / tri / 1e6
    rows.append({"op": "ssm_state_update", "shape": f"S={S}", "triton_ms": tri, "ref_ms": ref, "speedup": ref / tri,
                 "eager_ms": eager, "rel_err_y": e, "rel_err_state": e_state, "gb_s": gbs,
                 "pct_of_copy_bw": 100 * gbs / copy_gbs, "state_buffers": len(states)})
    Dc = H * P + 2 * G * N
    cst = torch.randn(S, Dc, KW - 1, device="cuda", dtype=DT)
    xc = torch.randn(S, Dc, device="cuda", dtype=DT)
    w, b = torch.randn(Dc, KW, device="cuda", dtype=DT), torch.randn(Dc, device="cuda", dtype=DT)
    c1, c2 = cst.clone(), cst.clone()
    e = rel(K.causal_conv1d_update(c1, xc, w, b, backend="triton"), K.causal_conv1d_update_ref(c2, xc, w, b))
    tri = graphed(lambda: K.causal_conv1d_update(cst, xc, w, b, backend="triton"))
    ref = graphed(lambda: K.causal_conv1d_update_ref(cst, xc, w, b))
    rows.append({"op": "causal_conv1d_update", "shape": f"S={S} D={Dc}", "triton_ms": tri, "ref_ms": ref,
                 "speedup": ref / tri, "eager_ms": timed(lambda: K.causal_conv1d_update(cst, xc, w, b), iters=100),
                 "rel_err_y": e, "rel_err_state": rel(c1, c2)})


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", help="write the rows and environment as JSON here")
    args = ap.parse_args()
    import triton

    env = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "triton": triton.__version__,
               "date": datetime.date.today().isoformat()}
    copy_gbs = copy_bandwidth()
    env["copy_gb_s"] = copy_gbs
    rows: list[dict] = []
    extra: dict = {}
    prefill(rows, extra)
    for S in (8, 64):
        decode(rows, S, copy_gbs)
    print(" ".join(f"{k}={v}" for k, v in env.items()))
    for k, v in extra.items():
        print(k, json.dumps(v, default=str))
    print(f"{'op':22} {'shape':30} {'graph ms':>9} {'eager ms':>9} {'ref ms':>8} {'speedup':>8} {'GB/s':>6} {'rel err':>8}")
    for r in rows:
        gb = f"{r['gb_s']:.0f}" if "gb_s" in r else "-"
        print(f"{r['op']:22} {r['shape']:30} {r['triton_ms']:9.4f} {r['eager_ms']:9.4f} {r['ref_ms']:8.4f} "
              f"{r['speedup']:8.1f} {gb:>6} {r['rel_err_y']:8.1e}")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"env": env, "rows": rows, **extra}, fh, indent=1)


if __name__ == "__main__":
    main()
