"""Expert parallelism with 2 gloo processes on CPU equals the single-process model."""

from __future__ import annotations

import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from hybridscope.engine.config import EngineConfig
from hybridscope.engine.ep import apply_ep
from hybridscope.engine.model import Batch, build_model
from hybridscope.engine.scheduler import Engine, Request

WORLD = 2


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        cfg = EngineConfig.from_preset("tiny", skew=1.0, skew_experts=(1,))  # uneven splits between ranks
        model = build_model(cfg)
        ids = torch.randint(0, cfg.vocab_size, (2, 19), generator=torch.Generator().manual_seed(rank))
        single = _run(model, ids)
        apply_ep(model)
        sharded = _run(model, ids)
        moe = next(m for m in model.modules() if type(m).__name__ == "MoE")
        res = {
            "single": single,
            "ep": sharded,
            "send": moe.dispatcher.last_send_counts,
            "recv": moe.dispatcher.last_recv_counts,
            "load": moe.router.load.clone(),
            "n_local": moe.experts.up.shape[0],
        }
        # serving under EP with unequal work per rank: the idle rank must keep joining the all-to-alls
        reqs = [
            Request(i, [3 + i] * (4 + 3 * rank), max_new_tokens=6 - 4 * rank) for i in range(3 - 2 * rank)
        ]
        res["served"] = [len(r.tokens) for r in Engine(model).run(reqs)]
        torch.save(res, os.path.join(out_dir, f"r{rank}.pt"))
    finally:
        dist.destroy_process_group()


def _run(model, ids) -> list[torch.Tensor]:
    """Prefill two sequences, then three dense decode steps; all logits."""
    cache = model.new_cache()
    outs = [model(ids[:, :16].reshape(-1), Batch.packed([0, 1], [0, 0], [16, 16], "cpu"), cache)]
    for t in range(16, 19):
        outs.append(model(ids[:, t], Batch.dense_decode(torch.tensor([t, t]), 32), cache))
    return outs


def test_ep_two_gloo_ranks_equal_single_process(tmp_path):
    # fork: the children reuse the imported torch (spawn re-imports it: ~10 s more on a busy CPU)
    mp.start_processes(
        _worker, args=(_free_port(), str(tmp_path)), nprocs=WORLD, join=True, start_method="fork"
    )
    res = [torch.load(tmp_path / f"r{r}.pt") for r in range(WORLD)]
    assert res[0]["served"] == [6, 6, 6] and res[1]["served"] == [2]
    for r in res:
        assert r["n_local"] == 4
        for a, b in zip(r["single"], r["ep"]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    # traffic: what rank a sent to rank b is what b received from a, and equals a's router load
    # on b's experts (last MoE layer, last decode step: 2 tokens x top-2 = 4 rows per rank)
    for a in range(WORLD):
        for b in range(WORLD):
            assert res[a]["send"][b] == res[b]["recv"][a]
        assert res[a]["send"] == [int(res[a]["load"][4 * b : 4 * b + 4].sum()) for b in range(WORLD)]
        assert sum(res[a]["send"]) == 4
