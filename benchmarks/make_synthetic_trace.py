"""Write a synthetic Kineto trace of N events in Kineto's own layout, for import benchmarks.

Shape (from the real traces in ../shared/traces): per launched op a cpu_op (with External id,
Record function id, Ev Idx), its cudaLaunchKernel (cuda_runtime, correlation, cbid), the kernel
(grid, block, occupancy fields, stream, correlation), and the ac2g flow pair (ph s / ph f) linking
launch and kernel; every 50 ops a record_function range (user_annotation + gpu_user_annotation);
every 500 ops a cudaStreamSynchronize; thread/process metadata at the end, then
displayTimeUnit/baseTimeNanoseconds after traceEvents as Kineto writes them. Timestamps are µs
with three decimals on a steady clock (~4.5e12 µs), like torch 2.x writes them.

    python benchmarks/make_synthetic_trace.py --events 5000000 --out /tmp/synthetic_5M.pt.trace.json.gz
"""

from __future__ import annotations

import argparse
import gzip
import random
from pathlib import Path

KERNELS = (
    ("void at::native::vectorized_elementwise_kernel<4, at::native::CUDAFunctor_add<c10::BFloat16>, "
    "at::detail::Array<char*, 3> >(int, at::native::CUDAFunctor_add<c10::BFloat16>, at::detail::Array<char*, 3>)"),
    "nvjet_sm90_tst_128x256_64x4_2x1_v_bz_coopA_NNT",
    "_chunk_scan_fwd_kernel",
    ("pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<128, 128, 64, 4, false, false, cutlass::bfloat16_t>, "
    "false, false, false, false, true, true, false>(pytorch_flash::Flash_fwd_params)"),
    "fused_moe_kernel",
    "ncclDevKernel_SendRecv(ncclDevKernelArgsStorage<4096ul>)",
    ("void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, at::native::MeanOps<float, float, float, "
    "float>, unsigned int, float, 4, 4> >(at::native::ReduceOp<float, at::native::MeanOps<float, float, float, "
    "float>, unsigned int, float, 4, 4>)"),
)
OPS = ("aten::add", "aten::mm", "aten::_scaled_dot_product_flash_attention", "aten::mean", "aten::copy_",
       "aten::bmm", "aten::mul")
SCOPES = ("mamba.mixer", "attention", "moe.router", "moe.dispatch", "moe.experts", "moe.combine")
PID, TID, STREAM = 404, 404, 7
T0 = 4516737426530.828


def _us(x: float) -> str:
    return f"{x:.3f}"


def op_events(i: int, t: float, rng: random.Random) -> tuple[list[str], float]:
    """cpu_op, launch, kernel, flow s, flow f for op `i` starting at `t` µs; the next op's start."""
    ext, corr = 1000 + i, 500000 + i
    op_dur, launch_dur, k_dur = rng.uniform(5, 40), rng.uniform(2, 8), rng.uniform(1, 200)
    launch_t = t + 1.5
    k_t = launch_t + rng.uniform(5, 50)
    kname = KERNELS[i % len(KERNELS)]
    out = [
        (f'  {{\n    "ph": "X", "cat": "cpu_op", "name": "{OPS[i % len(OPS)]}", "pid": {PID}, "tid": {TID},\n'
        f'    "ts": {_us(t)}, "dur": {_us(op_dur)},\n'
        f'    "args": {{\n      "External id": {ext},"Record function id": 0, "Ev Idx": {i}\n    }}\n  }}'),
        (f'  {{\n    "ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "pid": {PID}, "tid": {TID},\n'
        f'    "ts": {_us(launch_t)}, "dur": {_us(launch_dur)},\n'
        f'    "args": {{\n      "External id": {ext},      "cbid": 211, "correlation": {corr}\n    }}\n  }}'),
        (f'  {{\n    "ph": "X", "cat": "kernel", "name": "{kname}", "pid": 0, "tid": {STREAM},\n'
        f'    "ts": {_us(k_t)}, "dur": {_us(k_dur)},\n'
        f'    "args": {{\n      "External id": {ext},      "queued": 0, "device": 0, "context": 1,'
        f'      "stream": {STREAM}, "correlation": {corr},      "registers per thread": 32,'
        f'      "shared memory": 0,      "blocks per SM": 0.484848,      "warps per SM": 1.939394,'
        f'      "grid": [{64 + i % 64}, 1, 1],      "block": [128, 1, 1],      "est. achieved occupancy %": 3\n'
        f"    }}\n  }}"),
        (f'  {{\n    "ph": "s", "id": {corr}, "pid": {PID}, "tid": {TID}, "ts": {_us(launch_t)},\n'
        f'    "cat": "ac2g", "name": "ac2g"\n  }}'),
        (f'  {{\n    "ph": "f", "id": {corr}, "pid": 0, "tid": {STREAM}, "ts": {_us(k_t)},\n'
        f'    "cat": "ac2g", "name": "ac2g", "bp": "e"\n  }}'),
    ]
    return out, t + op_dur + rng.uniform(0.5, 3)


def scope_events(j: int, t0: float, t1: float) -> list[str]:
    name = SCOPES[j % len(SCOPES)]
    return [
        (f'  {{\n    "ph": "X", "cat": "user_annotation", "name": "{name}", "pid": {PID}, "tid": {TID},\n'
        f'    "ts": {_us(t0)}, "dur": {_us(t1 - t0)},\n    "args": {{\n      "External id": {j}\n    }}\n  }}'),
        (f'  {{\n    "ph": "X", "cat": "gpu_user_annotation", "name": "{name}", "pid": 0, "tid": {STREAM},\n'
        f'    "ts": {_us(t0 + 20)}, "dur": {_us(t1 - t0)},\n    "args": {{\n      "External id": {j}\n    }}\n  }}'),
    ]


def header() -> str:
    return (
        '{\n  "schemaVersion": 1,\n  "deviceProperties": [\n    {\n      "id": 0, "name": "NVIDIA H100 80GB HBM3",'
        ' "totalGlobalMem": 85017493504,\n      "computeMajor": 9, "computeMinor": 0, "numSms": 132\n    }\n  ],\n'
        '  "cupti_version": 130001,\n  "cuda_driver_version": 13000,\n  "cuda_runtime_version": 13000,\n'
        '  "traceEvents": [\n'
    )


def trailer() -> str:
    meta = [
        (f'  {{\n    "name": "process_name", "ph": "M", "ts": {_us(T0)}, "pid": {PID}, "tid": 0,\n'
        f'    "args": {{\n      "name": "python"\n    }}\n  }}'),
        (f'  {{\n    "name": "thread_name", "ph": "M", "ts": {_us(T0)}, "pid": 0, "tid": {STREAM},\n'
        f'    "args": {{\n      "name": "stream {STREAM} "\n    }}\n  }}'),
    ]
    return (",\n".join(meta) + '\n  ],\n  "traceName": "synthetic.pt.trace.json",\n'
            '  "displayTimeUnit": "ms",\n  "baseTimeNanoseconds": 1790857026000000000\n}\n')


def write(path: Path, n_events: int, seed: int = 0) -> int:
    """Write about `n_events` trace events (a multiple of the per-op pattern); return the count."""
    rng = random.Random(seed)
    opener = gzip.open(path, "wt", compresslevel=3) if path.suffix == ".gz" else open(path, "w")  # noqa: SIM115
    written, i, j, t = 0, 0, 0, T0
    with opener as f:
        f.write(header())
        batch: list[str] = []
        scope_start = t
        while written + 2 < n_events:
            evs, t = op_events(i, t, rng)
            i += 1
            if i % 50 == 0:
                evs += scope_events(j, scope_start, t)
                j, scope_start = j + 1, t
            if i % 500 == 0:
                evs.append(f'  {{\n    "ph": "X", "cat": "cuda_runtime", "name": "cudaStreamSynchronize", '
                           f'"pid": {PID}, "tid": {TID},\n    "ts": {_us(t)}, "dur": {_us(120.0)},\n'
                           f'    "args": {{\n      "cbid": 131, "correlation": {900000000 + i}\n    }}\n  }}')
                t += 121
            batch += evs
            written += len(evs)
            if len(batch) >= 20000:
                f.write(",\n".join(batch) + ",\n")
                batch = []
        f.write(",\n".join(batch) + (",\n" if batch else ""))
        f.write(trailer())
    return written + 2


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--events", type=int, default=5_000_000)
    ap.add_argument("--out", type=Path, required=True, help="*.json or *.json.gz")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    n = write(args.out, args.events, args.seed)
    print(f"{args.out}: {n:,} trace events, {args.out.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
