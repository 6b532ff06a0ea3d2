"""Expert parallelism over gloo under torchrun, for tests/test_live_family.py (run under `hybridscope trace`).

Each rank joins the process group, builds the engine's tiny preset, keeps its share of the experts
(`engine.ep.apply_ep`: all-to-all dispatch and combine) and serves a few requests. Nothing here
knows about hybridscope's capture: the trace arms itself in each rank.

    torchrun --standalone --nproc-per-node 2 trace_ep.py [NEW_TOKENS]
"""

import sys

import torch
import torch.distributed as dist

from hybridscope.engine.config import EngineConfig
from hybridscope.engine.ep import apply_ep
from hybridscope.engine.model import build_model
from hybridscope.engine.scheduler import Engine, Request


def main(new_tokens: int) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo")
    rank = dist.get_rank()
    model = build_model(EngineConfig.from_preset("tiny"))
    apply_ep(model)
    reqs = [Request(rid=k, prompt=[1 + k + rank, 2, 3, 4, 5], max_new_tokens=new_tokens) for k in range(2)]
    done = Engine(model, cuda_graphs=False).run(reqs)
    # one write of one whole line: two ranks share the pipe, and print() writes text and newline apart
    sys.stdout.write(f"rank {rank}: {sorted(len(r.tokens) for r in done)}\n")
    sys.stdout.flush()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 3)
