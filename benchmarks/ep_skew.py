"""Expert parallel across GPUs: balanced vs skewed routing, every rank captured, merged, analysed.

    python benchmarks/ep_skew.py --out DIR [--ranks 2] [--skew 3] [--requests 32] [--preset P]

For each routing (skew 0, then --skew toward experts 0 and 1, which live on rank 0), `--ranks`
processes (NCCL on GPUs, gloo on CPU) run the reference engine expert-parallel, serving the same
request stream under `kernels`-mode capture (NCCL kernels with their split sizes), each rank into
its own store; the ranks are merged into one run of DIR/ep.duckdb. Beside the capture, a forward
hook on each dispatch module sums the rows the engine itself sent to every peer (ground truth for
the traffic matrix). Then, per run: moe_comm p50/p99/tail ratio, the straggler wait share of step
time, throughput, the traffic matrix vs the dispatch counts; and `diff` balanced -> skewed.
Results: DIR/ep_skew.json and a table on stdout.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from dataclasses import asdict, replace
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from hybridscope import demo


def rank_main(rank: int, world: int, port: int, work: str, o: dict) -> None:
    import torch.distributed as dist

    from hybridscope.capture.session import capture
    from hybridscope.engine.ep import AllToAllDispatch
    from hybridscope.engine.scheduler import Engine

    model, cfg = demo.prepare_rank(rank, world, port, o)
    sent = [0] * world  # rows this rank's engine sent to each peer, summed over layers and steps
    counting = {"on": False}

    def count(module, args, output):
        if counting["on"]:
            for peer, n in enumerate(module.last_send_counts):
                sent[peer] += int(n)

    for m in model.modules():
        if isinstance(m, AllToAllDispatch):
            m.register_forward_hook(count)
    engine = Engine(model, cuda_graphs=False, seed=o["seed"] + rank)
    requests = demo.requests_for(o, rank, cfg.vocab_size)
    with capture(db=Path(work) / "ep.duckdb", model=model, mode="kernels", label=f"skew {o['skew']:g}",
                 sample_every=1, quiet=True) as cap:  # every step: the run is short, the waits are the point
        counting["on"] = True
        done = engine.run(requests)
        counting["on"] = False
    if rank == 0:
        demo.write_requests(Path(cap.summary.db), cap.summary.run_id, engine.t0, done)
    (Path(work) / f"sent.rank{rank}.json").write_text(json.dumps(sent))
    dist.destroy_process_group()


def run_one(opts: demo.DemoOptions, db: Path) -> tuple[int, dict]:
    """One routing setting: ranks under capture, merged into `db`; (run id, {rank: rows sent per peer})."""
    import torch.multiprocessing as mp

    from hybridscope.store import db as store
    from hybridscope.store import merge

    work = Path(tempfile.mkdtemp(prefix="ep-skew-"))
    try:
        mp.start_processes(rank_main, args=(opts.world, demo.free_port(), str(work), asdict(opts)),
                           nprocs=opts.world, join=True, start_method="spawn")
        con = store.open_store(db)
        try:
            run_id = merge.merge(con, [merge.inspect(p) for p in sorted(work.glob("ep*.duckdb"))],
                                 label=f"ep{opts.world} skew {opts.skew:g}")
        finally:
            con.close()
        sent = {r: json.loads((work / f"sent.rank{r}.json").read_text()) for r in range(opts.world)}
        return run_id, sent
    finally:
        shutil.rmtree(work, ignore_errors=True)


def summarize(db: Path, run_id: int, sent: dict) -> dict:
    from hybridscope.analyze import collectives as col
    from hybridscope.analyze.compare import throughput
    from hybridscope.analyze.decompose import decompose
    from hybridscope.store import db as store

    con = store.open_readonly(db)
    try:
        dec = decompose(con, run_id)
        comm = next((r for r in dec.to_records() if r["layer_type"] == "moe_comm"), None)
        waits = col.rank_waits(con, run_id).to_records()
        strag = col.stragglers(con, run_id).to_records()
        traffic = col.traffic(con, run_id, payload_only=True).to_records()
        thr, unit = throughput(con, run_id)
    finally:
        con.close()
    # payload only: dispatch first exchanges split sizes (int64), then the rows; combine sends the
    # rows back, so the matrix counts each routed row twice (there and back) per direction
    share = [s["wait_share_pct"] for s in strag if s["wait_share_pct"] is not None]
    return {
        "run_id": run_id,
        "moe_comm": {k: comm[k] for k in ("n", "p50_ns", "p99_ns", "tail_ratio", "gpu_pct", "wall_pct")} if comm else None,
        "wait_per_rank": {w["rank"]: {"wait_ns": w["wait_ns"], "wait_pct": w["wait_pct"], "last": w["straggler_n"]}
                          for w in waits},
        "step_wait_share_pct_median": sorted(share)[len(share) // 2] if share else None,
        "stragglers": {str(r): sum(1 for s in strag if s["straggler"] == r) for r in sent},
        "traffic_rows": {f"{t['src_rank']}->{t['dst_rank']}": t["rows"] for t in traffic},
        "engine_sent_rows": {f"{r}->{p}": n for r, peers in sent.items() for p, n in enumerate(peers)},
        "throughput": thr, "throughput_unit": unit,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--skew", type=float, default=3.0)
    p.add_argument("--requests", type=int, default=None)
    p.add_argument("--preset", default=None)
    p.add_argument("--device", default=None)
    a = p.parse_args(argv)
    base = demo.default_options(device=a.device, ranks=a.ranks, requests=a.requests, skew=0.0, mode="kernels")
    if a.preset:
        base = replace(base, preset=a.preset)
    a.out.mkdir(parents=True, exist_ok=True)
    db = a.out / "ep.duckdb"
    results = {}
    for skew in (0.0, a.skew):
        run_id, sent = run_one(replace(base, skew=skew), db)
        results[f"skew {skew:g}"] = summarize(db, run_id, sent)
    from hybridscope.analyze.compare import diff_table, run_samples
    from hybridscope.store import db as store

    con = store.open_readonly(db)
    try:
        ids = [r["run_id"] for r in results.values()]
        verdict = diff_table(run_samples(con, ids[0]), run_samples(con, ids[1]), meta={}).meta["verdict"]
    finally:
        con.close()
    results["diff balanced -> skewed"] = verdict
    results["options"] = {**asdict(base), "skew": a.skew}
    (a.out / "ep_skew.json").write_text(json.dumps(results, indent=2, default=str))
    for name, r in results.items():
        if not isinstance(r, dict) or "traffic_rows" not in r:
            continue
        m = r["moe_comm"]
        if m:
            print(f"{name}: moe_comm p50 {m['p50_ns'] / 1e3:.1f} us, p99 {m['p99_ns'] / 1e3:.1f} us, "
                  f"tail {m['tail_ratio']:.1f}x, {m['gpu_pct']:.1f}% GPU; step wait share (median) "
                  f"{r['step_wait_share_pct_median']}; stragglers {r['stragglers']}; "
                  f"throughput {r['throughput']} {r['throughput_unit']}")
        print(f"  {name}: traffic rows {r['traffic_rows']}  engine sent {r['engine_sent_rows']}  "
              f"match: {r['traffic_rows'] == r['engine_sent_rows']}")
    print(verdict)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
