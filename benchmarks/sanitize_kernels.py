"""Run the Mamba2 prefill kernels on every test shape under `compute-sanitizer --tool memcheck`:

    compute-sanitizer --tool memcheck python benchmarks/sanitize_kernels.py

An out-of-bounds access (global or shared) is reported by the sanitizer; the script itself checks
the results against the torch references, so a clean run means in bounds and right."""

import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "engine"))
from test_kernels import SCAN_CASES, conv_inputs, scan_inputs

import hybridscope.engine.kernels as K

torch.manual_seed(0)
cases = [(lens, H, P, G, N, cs, init, dt) for lens, H, P, G, N, cs, init in SCAN_CASES
         for dt in (torch.float32, torch.bfloat16)]
cases.append(([1, 7, 64, 130], 8, 16, 2, 32, 64, True, torch.bfloat16))  # the CUDA-graph test's shape
cases.append(([512] * 8, 64, 64, 8, 128, 64, True, torch.bfloat16))  # the engine's
for lens, H, P, G, N, cs, init, dt in cases:
    inp = scan_inputs(lens, H, P, G, N, dt, init, "cuda")
    y, f = K.ssd_chunk_scan(**inp, chunk_size=cs)
    yr, fr = K.ssd_chunk_scan(**inp, chunk_size=cs, backend="torch")
    err = ((y.float() - yr.float()).norm() / yr.float().norm().clamp_min(1e-30)).item()
    cv = conv_inputs(lens, 4 * H, 4, dt, init, "cuda")
    yc, fc = K.causal_conv1d(**cv)
    ycr, fcr = K.causal_conv1d(**cv, backend="torch")
    cerr = ((yc.float() - ycr.float()).norm() / ycr.float().norm().clamp_min(1e-30)).item()
    torch.cuda.synchronize()
    print(f"lens={lens[:4]}{'...' if len(lens) > 4 else ''} H={H} P={P} N={N} chunk={cs} {dt}: "
          f"scan rel err {err:.1e}, conv rel err {cerr:.1e}")
