"""A server whose worker never returns, for tests/test_live_family.py (run under `hybridscope trace`).

The worker is a daemon started from multiprocessing's forkserver: it builds the engine's tiny preset,
serves a few requests, says so, and waits for more work until it is stopped. The server exits as
soon as the worker has served: multiprocessing then terminates the daemon (SIGTERM), as servers stop
their workers. Nothing here knows about hybridscope.

    python trace_daemon.py NEW_TOKENS
"""

import sys
import time


def worker(ready, new_tokens: int) -> None:
    import torch

    from hybridscope.engine.config import EngineConfig
    from hybridscope.engine.model import build_model
    from hybridscope.engine.scheduler import Engine, Request

    torch.set_num_threads(1)
    model = build_model(EngineConfig.from_preset("tiny"))
    reqs = [Request(rid=k, prompt=[1 + k, 2, 3, 4], max_new_tokens=new_tokens) for k in range(2)]
    done = Engine(model, cuda_graphs=False).run(reqs)
    print("daemon served", sorted(len(r.tokens) for r in done), flush=True)
    ready.set()
    while True:  # waits for work that never comes
        time.sleep(0.1)


if __name__ == "__main__":
    import multiprocessing as mp

    ctx = mp.get_context("forkserver")
    ready = ctx.Event()
    ctx.Process(target=worker, args=(ready, int(sys.argv[1])), daemon=True).start()
    if not ready.wait(120):
        sys.exit("the worker never served")
