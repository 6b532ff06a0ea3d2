"""Serving benchmark of the reference engine: what a serving engine shows.

    python -m hybridscope.engine.bench --preset tiny                       # CPU, well under a minute
    python -m hybridscope.engine.bench --preset nemotron3-nano-mini --device cuda --requests 64 --rate 20
    torchrun --nproc-per-node 2 -m hybridscope.engine.bench --preset tiny --ep   # expert parallel

Reports output tokens/s, TTFT and ITL p50/p99, step latency, and memory split into KV cache and SSM
state (allocated, and used at the step with the most cached tokens). Requests arrive as a Poisson
process (``--rate`` per second; 0 = all at once); ``--skew`` biases routing toward ``--skew-experts``.
A warm-up pass (the same workload on GPU, to capture every CUDA graph; two short requests on CPU)
runs first and is excluded.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys

import torch

from .config import PRESETS, EngineConfig, load_fixes
from .model import build_model
from .moe import reset_routing_counters, routing_counters
from .scheduler import Engine, Request, summarize


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m hybridscope.engine.bench", description=__doc__.split("\n")[0])
    p.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    p.add_argument("--device", default="cpu", help="cpu | cuda | cuda:N")
    p.add_argument("--requests", type=int, default=16)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--gen-len", type=int, default=32)
    p.add_argument("--rate", type=float, default=0.0, help="arrivals per second (Poisson); 0 = all at t=0")
    p.add_argument("--max-batch", type=int, default=None, help="request slots (default: the preset's)")
    p.add_argument("--max-seq-len", type=int, default=None)
    p.add_argument("--skew", type=float, default=0.0, help="routing skew in logit-std units (0 = none)")
    p.add_argument("--skew-experts", default="0", help="comma-separated expert ids that --skew favours")
    p.add_argument("--capacity-factor", type=float, default=None)
    p.add_argument("--fixes", default=None,
                   help="engine fixes to serve with: a TOML file from `hybridscope advise --emit` (docs/engine.md)")
    p.add_argument("--temperature", type=float, default=0.0)
    p.add_argument("--no-graphs", action="store_true", help="eager decode on GPU (module hooks fire)")
    p.add_argument(
        "--compile",
        choices=["none", "ops", "decode"],
        default="none",
        help="GPU: torch.compile the element-wise ops, or whole blocks for decode",
    )
    p.add_argument("--ep", action="store_true", help="expert parallel over the torchrun world")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (tiny ops: 1 is fastest)")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    return p.parse_args(argv)


def make_requests(n: int, prompt_len: int, gen_len: int, rate: float, vocab: int, seed: int) -> list[Request]:
    """n requests with random prompt tokens; Poisson arrivals at ``rate``/s (0: all at t=0)."""
    g = torch.Generator().manual_seed(seed)
    gaps = torch.empty(n).exponential_(1.0, generator=g) / rate if rate > 0 else torch.zeros(n)
    arrivals = torch.cumsum(gaps, 0) - gaps[0]
    return [
        Request(i, torch.randint(1, vocab, (prompt_len,), generator=g).tolist(), gen_len, float(arrivals[i]))
        for i in range(n)
    ]


def build_config(args: argparse.Namespace) -> EngineConfig:
    overrides = {"seed": args.seed, "skew": args.skew, "capacity_factor": args.capacity_factor}
    if args.fixes:
        overrides.update(load_fixes(args.fixes))  # a capacity_factor in the file wins over the flag's default
    overrides["skew_experts"] = tuple(int(e) for e in args.skew_experts.split(",") if e)
    if args.max_batch:
        overrides["max_batch"] = args.max_batch
    need = args.prompt_len + args.gen_len
    base = PRESETS[args.preset].get("max_seq_len", 512)
    overrides["max_seq_len"] = args.max_seq_len or max(max(base, need), need)
    return EngineConfig.from_preset(args.preset, **overrides)


def run(args: argparse.Namespace) -> dict:
    """Build, warm up, serve; return the summary, memory split and step counts as plain data."""
    rank, world = 0, 1
    torch.set_num_threads(args.threads)
    if args.ep:
        from .ep import apply_ep, init_from_env

        rank, world = init_from_env(args.device)
    cfg = build_config(args)
    model = build_model(cfg, args.device)
    if args.ep:
        apply_ep(model)
    eng = Engine(
        model,
        cuda_graphs=False if args.no_graphs else None,
        compile=False if args.compile == "none" else args.compile,
        temperature=args.temperature,
        seed=args.seed + rank,
    )
    reqs = make_requests(
        args.requests, args.prompt_len, args.gen_len, args.rate, cfg.vocab_size, args.seed + rank
    )
    warm = copy.deepcopy(reqs) if eng.device.type == "cuda" else copy.deepcopy(reqs[:2])
    for r in warm:
        r.arrival, r.max_new_tokens = (
            0.0,
            min(r.max_new_tokens, args.gen_len if eng.device.type == "cuda" else 4),
        )
    eng.run(warm)
    eng.steps, eng.finished = [], []
    reset_routing_counters(model)  # the warm-up routed too
    done = eng.run(reqs)
    routing = routing_counters(model)
    peak = max(eng.steps, key=lambda s: sum(s.cached_tokens))
    out = {
        "preset": cfg.name,
        "device": str(eng.device),
        "dtype": cfg.dtype,
        "rank": rank,
        "world": world,
        "cuda_graphs": eng.cuda_graphs,
        "args": vars(args),
        **summarize(done, eng.steps),
        "memory": eng.cache.memory_breakdown(peak.cached_tokens),
        "peak_live_requests": len(peak.cached_tokens),
        "peak_cached_tokens": sum(peak.cached_tokens),
        "fixes": {k: getattr(cfg, k) for k in ("route_imbalance_cap", "a2a_separate_streams")},
        "rerouted_share": (routing["rerouted_rows"] / routing["routed_rows"]) if routing["routed_rows"] else None,
    }
    if eng.device.type == "cuda":
        out["memory"]["cuda_max_allocated"] = torch.cuda.max_memory_allocated(eng.device)
    if args.ep:
        from .ep import traffic_matrix

        out["last_step_rows_sent_per_layer"] = traffic_matrix(model)
    return out


def _mib(n: float) -> str:
    return f"{n / 2**20:,.2f} MiB"


def render(res: dict) -> str:
    """The result as a few aligned lines (ms for latencies)."""
    a, m = res["args"], res["memory"]
    ms = lambda k: f"{res[k] * 1e3:8.2f} ms" if not math.isnan(res[k]) else "       - "
    rate = f"{a['rate']:g}/s" if a["rate"] else "all at t=0"
    lines = [
        (
            f"hybridscope engine bench: {res['preset']} on {res['device']} ({res['dtype']}), rank {res['rank']}"
            f"/{res['world']}, cuda_graphs={res['cuda_graphs']}"
        ),
        (
            f"  workload    {res['requests']} requests, prompt {a['prompt_len']}, gen {a['gen_len']}, arrivals {rate}, "
            f"skew {a['skew']:g} on experts {a['skew_experts']}"
        ),
        (
            f"  throughput  {res['tokens_per_s']:10.1f} output tok/s   ({res['output_tokens']} tokens, {res['steps']} "
            f"steps, {res['decode_steps']} decode, {res['graph_steps']} from CUDA graphs)"
        ),
        f"  TTFT        p50 {ms('ttft_p50')}   p99 {ms('ttft_p99')}",
        f"  ITL         p50 {ms('itl_p50')}   p99 {ms('itl_p99')}",
        f"  step        p50 {ms('step_p50')}   p99 {ms('step_p99')}",
        (
            f"  memory      KV cache   {_mib(m['kv_cache_used']):>14} used of {_mib(m['kv_cache_allocated'])} allocated"
            f"  (peak: {res['peak_live_requests']} requests, {res['peak_cached_tokens']} cached tokens)"
        ),
        (
            f"              SSM state  {_mib(m['ssm_state_used']):>14} used of {_mib(m['ssm_state_allocated'])} allocated"
            f"  (+ conv state {_mib(m['conv_state_used'])})"
        ),
    ]
    if "cuda_max_allocated" in m:
        lines.append(
            f"              device peak allocated {_mib(m['cuda_max_allocated'])} (weights + caches + work)"
        )
    if res["rerouted_share"] is not None and res["fixes"]["route_imbalance_cap"] is not None:
        lines.append(f"  routing     imbalance cap {res['fixes']['route_imbalance_cap']:g}: "
                     f"{100 * res['rerouted_share']:.2f}% of (token, expert) rows re-routed")
    if "last_step_rows_sent_per_layer" in res:
        lines.append(
            f"  EP traffic  rows sent to each rank, last step, first MoE layer: "
            f"{res['last_step_rows_sent_per_layer'][0]}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        res = run(args)
    except ValueError as exc:  # a bad combination of options: one line, no traceback
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(render(res))
    if args.json:
        with open(args.json if res["world"] == 1 else f"{args.json}.rank{res['rank']}", "w") as f:
            json.dump(res, f, indent=1, default=str)
        print(f"Wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
