"""Host cost of a CUDA-graph replay under live capture, as the run grows (CPU, fake CUDA).

    python benchmarks/bench_replay_host.py [--chunks 5] [--chunk 4000]

The replay wrapper (live/graphs.py) runs on the model's thread at every replay: the step
boundary, and one replay in `graph_every` the readback of its timing events. Its host time adds to
a decode step that syncs every step (greedy sampling reads the tokens). Measured with the fake
CUDA of tests/test_live_graphs.py (events on a fake clock: no GPU cost counted), per chunk of
replays, with and without the Prometheus exporter: a cost that grows from chunk to chunk grows
with the run's length (before 2026-12-05 the readback converted every instance recorded so far).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--chunks", type=int, default=5)
    ap.add_argument("--chunk", type=int, default=4000)
    args = ap.parse_args()
    import pytest
    import test_live_graphs as fake
    from test_live_graphs_gpu import ToyModel

    import hybridscope
    from hybridscope.demo import free_port

    mp = pytest.MonkeyPatch()
    patch = fake.fake_cuda.__wrapped__(mp)
    next(patch)
    model, x = ToyModel(d=8), torch.randn(2, 8)
    for every in (16, 2):
        for metrics in (False, True):
            out = []
            with tempfile.TemporaryDirectory() as d, torch.no_grad():
                kw = {"metrics_port": free_port()} if metrics else {}
                with hybridscope.capture(db=Path(d) / "r.duckdb", model=model, quiet=True, graph_every=every,
                                         max_events=10_000_000, **kw):
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph):
                        model(x)
                    for _ in range(args.chunk):
                        graph.replay()  # warm
                    for _ in range(args.chunks):
                        t = time.perf_counter()
                        for _ in range(args.chunk):
                            graph.replay()
                        out.append((time.perf_counter() - t) / args.chunk * 1e6)
            print(f"graph_every {every:2d}{' + exporter' if metrics else '           '}: µs per replay by chunk of "
                  f"{args.chunk}: " + ", ".join(f"{v:.1f}" for v in out))
    mp.undo()


if __name__ == "__main__":
    main()
