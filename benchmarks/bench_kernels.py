"""Micro-benchmark of the engine's Mamba2 kernels: Triton against the PyTorch references, on one GPU.

    python benchmarks/bench_kernels.py [--out results.json]

Shapes: H=64, P=64, N=128, G=8, bf16; prefill T = 8 x 512 packed tokens (conv width K=4 over
D = H*P + 2*G*N channels); decode S = 8 and S = 64. Every op is checked against its reference first.
Times are medians of CUDA-event timings: "eager" launches each call from Python (what an engine
without graphs sees), "graph" replays 20 calls captured in a CUDA graph (GPU time per call).
ssm_state_update's bandwidth counts the fp32 state read and written plus its inputs and output,
against a device-to-device copy measured in the same run.
"""

from __future__ import annotations

import argparse
import datetime
import json
import statistics

import torch
import torch.nn.functional as F

from hybridscope.engine import kernels as K

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


def graphed(fn, calls=20, reps=10) -> float:
    """Median milliseconds per call, replaying ``calls`` calls captured in one CUDA graph."""
    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream().wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        for _ in range(calls):
            fn()
    return timed(g.replay, iters=reps, warmup=2) / calls


def copy_bandwidth() -> float:
    """GB/s of a 1 GiB device-to-device copy (bytes read + written)."""
    a = torch.empty(2**30, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    ms = timed(lambda: b.copy_(a), iters=10)
    return 2 * a.numel() / ms / 1e6


def rel(a, b) -> float:
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


def prefill(rows: list) -> None:
    lens = [512] * 8
    T = sum(lens)
    cu = torch.tensor([0, *torch.tensor(lens).cumsum(0).tolist()], dtype=torch.int32, device="cuda")
    x = torch.randn(T, H, P, device="cuda", dtype=DT)
    dt = F.softplus(torch.randn(T, H, device="cuda") - 2).to(DT)
    A = -torch.rand(H, device="cuda") * 4 - 0.1
    B, C = (torch.randn(T, G, N, device="cuda", dtype=DT) for _ in range(2))
    D = torch.randn(H, device="cuda")
    h0 = torch.randn(8, H, P, N, device="cuda")
    args = (x, dt, A, B, C, D)
    yr, fr = K.ssd_chunk_scan_ref(*args, cu_seqlens=cu, initial_states=h0, chunk_size=64)
    t_ref = timed(lambda: K.ssd_chunk_scan_ref(*args, cu_seqlens=cu, initial_states=h0, chunk_size=64))
    for cs in (64, 128, 256):
        def run(cs=cs):
            return K.ssd_chunk_scan(*args, cu_seqlens=cu, initial_states=h0, chunk_size=cs, backend="triton")
        y, f = run()
        t = timed(run)
        rows.append({"op": "ssd_chunk_scan", "shape": f"T={T} (8x512) chunk={cs}", "triton_ms": t, "ref_ms": t_ref,
                         "speedup": t_ref / t, "rel_err_y": rel(y, yr), "rel_err_state": rel(f, fr)})
    Dc = H * P + 2 * G * N
    xc = torch.randn(T, Dc, device="cuda", dtype=DT)
    w, b = torch.randn(Dc, KW, device="cuda", dtype=DT), torch.randn(Dc, device="cuda", dtype=DT)
    s0 = torch.randn(8, Dc, KW - 1, device="cuda", dtype=DT)
    yr, fr = K.causal_conv1d_ref(xc, w, b, cu_seqlens=cu, initial_conv_states=s0)
    y, f = K.causal_conv1d(xc, w, b, cu_seqlens=cu, initial_conv_states=s0, backend="triton")
    t = timed(lambda: K.causal_conv1d(xc, w, b, cu_seqlens=cu, initial_conv_states=s0, backend="triton"))
    t_ref = timed(lambda: K.causal_conv1d_ref(xc, w, b, cu_seqlens=cu, initial_conv_states=s0))
    gbs = 2 * xc.numel() * xc.element_size() / t / 1e6
    rows.append({"op": "causal_conv1d", "shape": f"T={T} D={Dc} K={KW}", "triton_ms": t, "ref_ms": t_ref,
                     "speedup": t_ref / t, "rel_err_y": rel(y, yr), "rel_err_state": rel(f, fr), "gb_s": gbs})


def decode(rows: list, S: int, copy_gbs: float) -> None:
    state = torch.randn(S, H, P, N, device="cuda")
    x = torch.randn(S, H, P, device="cuda", dtype=DT)
    dt = F.softplus(torch.randn(S, H, device="cuda") - 2).to(DT)
    A = -torch.rand(H, device="cuda") * 4 - 0.1
    B, C = (torch.randn(S, G, N, device="cuda", dtype=DT) for _ in range(2))
    D = torch.randn(H, device="cuda")
    s1, s2 = state.clone(), state.clone()
    e = rel(K.ssm_state_update(s1, x, dt, A, B, C, D, backend="triton"), K.ssm_state_update_ref(s2, x, dt, A, B, C, D))
    e_state = rel(s1, s2)
    tri = graphed(lambda: K.ssm_state_update(state, x, dt, A, B, C, D, backend="triton"))
    ref = graphed(lambda: K.ssm_state_update_ref(state, x, dt, A, B, C, D))
    eager = timed(lambda: K.ssm_state_update(state, x, dt, A, B, C, D, backend="triton"), iters=100)
    nbytes = 2 * state.numel() * 4 + 2 * x.numel() * 2 + 2 * B.numel() * 2 + dt.numel() * 2
    gbs = nbytes / tri / 1e6
    rows.append({"op": "ssm_state_update", "shape": f"S={S}", "triton_ms": tri, "ref_ms": ref, "speedup": ref / tri,
                     "eager_ms": eager, "rel_err_y": e, "rel_err_state": e_state, "gb_s": gbs,
                     "pct_of_copy_bw": 100 * gbs / copy_gbs})
    Dc = H * P + 2 * G * N
    cst = torch.randn(S, Dc, KW - 1, device="cuda", dtype=DT)
    xc = torch.randn(S, Dc, device="cuda", dtype=DT)
    w, b = torch.randn(Dc, KW, device="cuda", dtype=DT), torch.randn(Dc, device="cuda", dtype=DT)
    c1, c2 = cst.clone(), cst.clone()
    e = rel(K.causal_conv1d_update(c1, xc, w, b, backend="triton"), K.causal_conv1d_update_ref(c2, xc, w, b))
    tri = graphed(lambda: K.causal_conv1d_update(cst, xc, w, b, backend="triton"))
    ref = graphed(lambda: K.causal_conv1d_update_ref(cst, xc, w, b))
    rows.append({"op": "causal_conv1d_update", "shape": f"S={S} D={Dc}", "triton_ms": tri, "ref_ms": ref,
                     "speedup": ref / tri, "rel_err_y": e, "rel_err_state": rel(c1, c2)})


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
    prefill(rows)
    for S in (8, 64):
        decode(rows, S, copy_gbs)
    print(" ".join(f"{k}={v}" for k, v in env.items()))
    print(f"{'op':22} {'shape':30} {'triton ms':>10} {'ref ms':>9} {'speedup':>8} {'GB/s':>7} {'rel err y':>9}")
    for r in rows:
        gb = f"{r['gb_s']:.0f}" if "gb_s" in r else "-"
        print(f"{r['op']:22} {r['shape']:30} {r['triton_ms']:10.4f} {r['ref_ms']:9.4f} {r['speedup']:8.1f} "
              f"{gb:>7} {r['rel_err_y']:9.1e}")
    if args.out:
        with open(args.out, "w") as fh:
            json.dump({"env": env, "rows": rows}, fh, indent=1)


if __name__ == "__main__":
    main()
