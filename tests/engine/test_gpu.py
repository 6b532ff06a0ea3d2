"""GPU: CUDA-graph decode equals eager decode; cached decode equals a full forward with the Triton
kernels; the bench runs. Skipped without CUDA."""

from __future__ import annotations

import pytest
import torch

from hybridscope.engine.bench import main as bench_main
from hybridscope.engine.config import EngineConfig
from hybridscope.engine.model import Batch, build_model
from hybridscope.engine.scheduler import Engine, Request

pytestmark = pytest.mark.gpu


def _requests(n: int, vocab: int, seed: int = 0) -> list[Request]:
    g = torch.Generator().manual_seed(seed)
    return [
        Request(i, torch.randint(1, vocab, (int(L),), generator=g).tolist(), 12, arrival=0.0)
        for i, L in enumerate(torch.randint(5, 90, (n,), generator=g))
    ]


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_cuda_graph_decode_equals_eager_decode(dtype):
    cfg = EngineConfig.from_preset("tiny", dtype=dtype, max_batch=8)
    model = build_model(cfg, "cuda")
    logits = {}
    for graphs in (False, True):
        eng = Engine(model, cuda_graphs=graphs)
        outs = logits[graphs] = []
        eng.logits_hook = lambda reqs, lg, dense, outs=outs: outs.append((dense, lg.clone()))
        eng.run(_requests(6, cfg.vocab_size))
        assert sum(s.graph for s in eng.steps) == (
            sum(s.kind == "decode" for s in eng.steps) if graphs else 0
        )
    assert len(logits[False]) == len(logits[True])
    tol = {"float32": (1e-4, 1e-4), "bfloat16": (2e-2, 2e-2)}[dtype]
    for (d0, a), (d1, b) in zip(logits[False], logits[True]):
        assert d0 == d1
        torch.testing.assert_close(a, b, rtol=tol[0], atol=tol[1])


def test_cached_decode_equals_full_forward_with_triton_kernels():
    model = build_model(EngineConfig.from_preset("tiny", chunk_size=16), "cuda")
    seq = torch.randint(0, 256, (40,), device="cuda")
    full = model(seq, Batch.packed([0], [0], [40], "cuda"), model.new_cache(), all_logits=True)
    cache = model.new_cache()
    out = [model(seq[:33], Batch.packed([3], [0], [33], "cuda"), cache)[0]]
    for t in range(33, 40):
        pos = torch.zeros(4, dtype=torch.long, device="cuda")
        pos[3] = t
        toks = torch.zeros(4, dtype=torch.long, device="cuda")
        toks[3] = seq[t]
        out.append(model(toks, Batch.dense_decode(pos, 64), cache)[3])
    torch.testing.assert_close(torch.stack(out), full[32:40], rtol=1e-3, atol=1e-3)


def test_bench_runs_on_gpu(tmp_path, capsys):
    out = tmp_path / "bench.json"
    assert bench_main(["--preset", "tiny", "--device", "cuda", "--requests", "8", "--json", str(out)]) == 0
    text = capsys.readouterr().out
    assert "tok/s" in text and "KV cache" in text and "SSM state" in text
    assert out.exists()
