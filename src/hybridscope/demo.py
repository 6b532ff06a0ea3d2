"""`hybridscope demo`: the main job on the embedded default.

Runs the project's reference engine (the `tiny` preset on CPU; `nemotron3-nano-mini` on a GPU) as a
small expert-parallel deployment — two ranks over gloo on CPU, or NCCL when two GPUs are there —
serving requests that arrive over time (continuous batching) with routing skewed toward a few
experts, captures every rank (`layers` mode: module hooks and CUDA events, cheap enough to leave
on), merges the ranks into one run, records the requests' TTFT/ITL beside it, and hands the store
to the report. With one GPU the engine runs in one process (no MoE communication to show).

Orchestration only: the workload is `hybridscope.engine`, the measurement `hybridscope.capture`,
the numbers `hybridscope.analyze`; this module wires them the way a user would.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

from hybridscope.errors import EnvironmentProblem, UsageError


@dataclass(frozen=True)
class DemoOptions:
    preset: str            # engine preset
    device: str            # 'cpu' or 'cuda'
    world: int             # ranks (expert parallel when > 1)
    requests: int          # per rank
    prompt_len: int
    gen_len: int
    rate: float            # arrivals per second per rank (Poisson); 0 = all at once
    skew: float            # routing skew toward `skew_experts`, in logit-std units
    skew_experts: tuple[int, ...]
    mode: str              # capture mode
    seed: int = 0
    overrides: dict = field(default_factory=dict)  # EngineConfig fields over the preset's
    jitter: bool = True    # lengths drawn from [half, full] of prompt_len / gen_len; False: exactly those
    burst: float = 1.0     # share of steps whose routing is skewed (hot spots that come and go); 1: every step
    step_tokens: int | None = None  # prompt tokens per step (the engine's max_prefill_tokens); None: its default
    workload: str = "decode"


WORKLOADS = ("decode", "hotspots")


def default_options(*, device: str | None = None, ranks: int | None = None, requests: int | None = None,
                    skew: float = 2.0, mode: str = "layers", seed: int = 0, workload: str = "decode") -> DemoOptions:
    """CPU: tiny preset, 2 gloo ranks. GPU: nemotron3-nano-mini, 2 NCCL ranks when 2 GPUs, else 1.

    Workloads: 'decode' (requests arriving over time, short prompts, routing skewed every step) and
    'hotspots' (compute-bound prefill, every request at t=0 with a fixed-length prompt, a fixed number
    of prompt tokens per step, and routing skewed toward experts 0-3, all on rank 0, in 30% of the
    steps, drawn from one seeded sequence: the hot spots come and go, so the rank holding the hot
    experts is the straggler of some steps only; CPU: experts widened to 1024 so that their GEMMs
    weigh in the step as on a GPU, 768 requests a rank = 96 steps of 512 prompt tokens, ~10 s on
    2 cores: enough steps for `diff`'s whole-step test to see a change of the moe_comm p99).
    `hotspots` is the A/B workload of the engine fixes (benchmarks/fix_ab.py, README "Close the
    loop")."""
    try:
        import torch
    except ImportError:
        raise EnvironmentProblem("the demo runs the engine, which needs torch: "
                                 "pip install torch==2.13.0 && pip install -e '.[engine]'") from None
    gpus = torch.cuda.device_count() if torch.cuda.is_available() else 0
    device = device or ("cuda" if gpus else "cpu")
    if device not in ("cpu", "cuda"):
        raise UsageError(f"--device must be cpu or cuda, not {device!r}")
    if device == "cuda" and not gpus:
        raise EnvironmentProblem("--device cuda asked, but torch sees no CUDA GPU")
    world = ranks if ranks is not None else (2 if device == "cpu" or gpus >= 2 else 1)
    if world < 1 or (device == "cuda" and world > gpus):
        raise UsageError(f"--ranks {world} does not fit this machine ({gpus} GPU(s) on {device})")
    if workload not in WORKLOADS:
        raise UsageError(f"--workload must be one of {', '.join(WORKLOADS)}, not {workload!r}")
    if workload == "hotspots":
        if device == "cpu":
            return DemoOptions("tiny", "cpu", world, requests or 768, 64, 1, 0.0, skew, (0, 1, 2, 3), mode, seed,
                               {"d_expert": 1024}, False, 0.3, 512, workload)
        return DemoOptions("nemotron3-nano-mini", "cuda", world, requests or 256, 1024, 1, 0.0, skew, (0, 1, 2, 3),
                           mode, seed, {}, False, 0.3, 4096, workload)
    if device == "cpu":
        return DemoOptions("tiny", "cpu", world, requests or 12, 24, 12, 400.0, skew, (0, 1), mode, seed)
    return DemoOptions("nemotron3-nano-mini", "cuda", world, requests or 32, 256, 32, 200.0, skew, (0, 1), mode, seed)


def run_demo(out_dir: Path, opts: DemoOptions) -> tuple[Path, int]:
    """Run the demo workload; return (store path, run id) of the merged run in `out_dir`/run.duckdb."""
    from hybridscope.store import db as store

    out_dir.mkdir(parents=True, exist_ok=True)
    db = out_dir / "run.duckdb"
    work = Path(tempfile.mkdtemp(prefix="hybridscope-demo-"))
    try:
        if opts.world == 1:
            _rank_main(0, 1, 0, str(work), asdict(opts))
        else:
            import torch.multiprocessing as mp

            try:
                mp.start_processes(_rank_main, args=(opts.world, free_port(), str(work), asdict(opts)),
                                   nprocs=opts.world, join=True, start_method="spawn")
            except mp.ProcessException as e:  # the rank printed its own traceback above
                raise EnvironmentProblem(f"a demo rank failed: {e}") from None
        parts = sorted(work.glob("demo*.duckdb"))  # capture names a torchrun rank's store demo.rank{R}.duckdb
        if len(parts) != opts.world:
            raise EnvironmentProblem(f"the demo's ranks wrote {len(parts)} of {opts.world} stores: {[p.name for p in parts]}")
        from hybridscope.store import merge

        con = store.open_store(db)  # may hold earlier demo runs: this one is added beside them
        try:
            from hybridscope.engine.config import FIX_KNOBS

            fixes = " +fixes" if any(k in opts.overrides for k in FIX_KNOBS) else ""
            kind = "" if opts.workload == "decode" else f" {opts.workload}"
            run_id = merge.merge(con, [merge.inspect(p) for p in parts],
                                 label=f"demo {opts.preset} x{opts.world}{kind} skew {opts.skew:g}{fixes}")
            write_engine_notes(con, run_id, opts, sorted(work.glob("engine.rank*.json")))
        finally:
            con.close()
        return db, run_id
    finally:
        shutil.rmtree(work, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def prepare_rank(rank: int, world: int, port: int, o: dict):
    """One rank's model, ready to serve: process group joined (world > 1), engine built from the
    options with skew, experts sharded, and warmed up as a server does before taking traffic (the
    first calls pay one-time costs, allocations and kernel compilation, that are no part of the
    steady-state tail). Returns (model, config)."""
    import torch

    from hybridscope.engine.config import EngineConfig
    from hybridscope.engine.model import build_model
    from hybridscope.engine.scheduler import Engine

    torch.set_num_threads(1)  # two ranks on two cores: one thread each
    if world > 1:
        import torch.distributed as dist

        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ["MASTER_PORT"] = str(port)
        if o["device"] == "cuda":
            torch.cuda.set_device(rank)
        dist.init_process_group("nccl" if o["device"] == "cuda" else "gloo", rank=rank, world_size=world)
    cfg = EngineConfig.from_preset(o["preset"], seed=o["seed"], skew=o["skew"], skew_experts=tuple(o["skew_experts"]),
                                   **o["overrides"])
    model = build_model(cfg, device=f"cuda:{rank}" if o["device"] == "cuda" else "cpu")
    if world > 1:
        from hybridscope.engine.ep import apply_ep

        apply_ep(model)
    warm = requests_for({**o, "requests": 2, "rate": 0.0}, rank + 10_000, cfg.vocab_size)
    Engine(model, cuda_graphs=False, seed=o["seed"]).run(warm)
    return model, cfg


def _rank_main(rank: int, world: int, port: int, work: str, o: dict) -> None:
    """One rank: serve the requests under capture, write the requests table."""
    from hybridscope.engine.moe import reset_routing_counters, routing_counters
    from hybridscope.engine.scheduler import Engine
    from hybridscope.live.session import capture

    model, cfg = prepare_rank(rank, world, port, o)
    if o["burst"] < 1.0:
        skew_in_bursts(model, o)
    # graphed decode on a GPU, as served in production: capture times the replays (live.graphs)
    engine = Engine(model, seed=o["seed"] + rank, max_prefill_tokens=o["step_tokens"] or 4096)
    requests = requests_for(o, rank, cfg.vocab_size)
    db = Path(work) / "demo.duckdb"
    # every step: the demo is short and shows the distribution (capture's default samples 1 step in 8)
    reset_routing_counters(model)  # the warm-up routed too
    with capture(db=db, model=model, mode=o["mode"], label=f"demo rank {rank}", sample_every=1, quiet=True) as cap:
        done = engine.run(requests)
    (Path(work) / f"engine.rank{rank}.json").write_text(json.dumps(routing_counters(model)))
    summary = cap.summary
    if rank == 0 and summary is not None and summary.run_id is not None:
        write_requests(Path(summary.db), summary.run_id, engine.t0, done)
    if world > 1:
        import torch.distributed as dist

        dist.destroy_process_group()


def skew_in_bursts(model, o: dict) -> None:
    """Routing skewed by o['skew'] toward o['skew_experts'] in a share o['burst'] of the model's calls
    (one call = one engine step), drawn from a sequence seeded by o['seed'] alone: every rank, and
    every run with the same seed, skews the same steps (ranks run their steps in lockstep)."""
    import numpy as np

    from hybridscope.engine.moe import Router

    routers = [m for m in model.modules() if isinstance(m, Router)]
    skewed = np.random.default_rng(o["seed"]).random(1 << 16) < o["burst"]
    calls = [0]

    def set_skew(module, args):
        s = o["skew"] if skewed[calls[0] % skewed.size] else 0.0
        for r in routers:
            r.set_skew(s, o["skew_experts"])
        calls[0] += 1

    model.register_forward_pre_hook(set_skew)


def requests_for(o: dict, rank: int, vocab: int):
    """Poisson arrivals (all at t=0 when rate is 0), prompt and generation lengths between half and all
    of the options' (exactly theirs without jitter), seeded per rank."""
    import numpy as np

    from hybridscope.engine.scheduler import Request

    rng = np.random.default_rng(o["seed"] * 1000 + rank)
    gaps = rng.exponential(1.0 / o["rate"], o["requests"]) if o["rate"] > 0 else np.zeros(o["requests"])
    arrivals = np.cumsum(gaps) - gaps[0]
    out = []
    for i, t in enumerate(arrivals):
        plen, glen = o["prompt_len"], o["gen_len"]
        if o["jitter"]:
            plen = int(rng.integers(plen // 2, plen + 1))
            glen = int(rng.integers(max(1, glen // 2), glen + 1))
        out.append(Request(rid=i, prompt=rng.integers(1, vocab, plen).tolist(), max_new_tokens=glen,
                           arrival=float(t)))
    return out


def write_requests(db: Path, run_id: int, t0: float, done) -> None:
    """The requests' serving times on the capture's clock (perf_counter ns), as a server logs them."""
    from hybridscope.store import db as store

    def ns(t: float) -> int:
        return round((t0 + t) * 1e9)

    con = store.open_store(db)
    try:
        with store.transaction(con):
            store.insert_columns(con, "requests", {
                "run_id": [run_id] * len(done),
                "request_id": [r.rid for r in done],
                "arrival_ns": [ns(r.arrival) for r in done],
                "first_token_ns": [ns(r.token_times[0]) if r.token_times else None for r in done],
                "finish_ns": [ns(r.token_times[-1]) if r.token_times else None for r in done],
                "prompt_tokens": [len(r.prompt) for r in done],
                "output_tokens": [len(r.tokens) for r in done],
            })
    finally:
        con.close()


def write_engine_notes(con, run_id: int, opts: DemoOptions, files: list[Path]) -> None:
    """Record in the run's notes (notes.engine) the engine overrides the demo ran with (the fixes) and
    the ranks' routing counters, so a report or an A/B can say what the fix changed."""
    from hybridscope.store import db as store

    counts = [json.loads(f.read_text()) for f in files]
    routed = sum(c["routed_rows"] for c in counts)
    rerouted = sum(c["rerouted_rows"] for c in counts)
    engine = {"preset": opts.preset, "overrides": {k: _plain(v) for k, v in opts.overrides.items()},
              "routed_rows": routed, "rerouted_rows": rerouted,
              "rerouted_share": rerouted / routed if routed else None}
    with store.transaction(con):
        con.execute("UPDATE runs SET notes = json_merge_patch(coalesce(notes, '{}'), $patch) WHERE run_id = $run",
                    {"patch": json.dumps({"engine": engine}), "run": run_id})


def _plain(v):
    if isinstance(v, dict):
        return {"/".join(map(str, k)) if isinstance(k, tuple) else str(k): _plain(x) for k, x in v.items()}
    return list(v) if isinstance(v, tuple) else v
