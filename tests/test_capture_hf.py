"""Capture of a HF transformers NemotronH (random init): CPU with a tiny one, GPU with the
Nemotron-3-Nano-like layout of shared/traces/make_hf_models.py (skipped without transformers)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from capture_models import HF_PATTERN, engine_tiny, hf_nemotron_h, latest_run, rows, run_engine

import hybridscope

GPU_PATTERN = "MEMEM*EMEMEM*EMEMEM*E"
EXPECTED = {"M": {"mamba"}, "E": {"moe_router", "moe_experts"}, "*": {"attention"}}


def _types_by_index(con, run, source: str) -> dict[int, set[str]]:
    kinds = "('layer')" if source == "layer" else "('kernel', 'memcpy', 'memset')"
    got = rows(con, f"SELECT layer_index, list(DISTINCT layer_type) FROM events WHERE run_id = ? AND source = ? "
                    f"AND kind IN {kinds} AND layer_index IS NOT NULL GROUP BY 1", [run, source])
    return {i: set(t) for i, t in got}


def _assert_pattern(found: dict[int, set[str]], pattern: str) -> None:
    assert sorted(found) == list(range(len(pattern)))
    for i, ch in enumerate(pattern):
        assert EXPECTED[ch] <= found[i], (i, ch, found[i])
        assert not (found[i] & {"mamba", "attention", "moe_router", "moe_experts"}) - EXPECTED[ch], (i, found[i])


def _generate(model, ids, new: int):
    return model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new,
                          do_sample=False, pad_token_id=0)


def test_hf_nemotron_h_on_cpu_rows_match_the_pattern(tmp_path):
    model = hf_nemotron_h()
    ids = torch.randint(10, 250, (2, 8), generator=torch.Generator().manual_seed(0))
    reference = _generate(model, ids, 3)
    with hybridscope.capture(db=tmp_path / "hf.duckdb", model=model, quiet=True) as cap:
        out = _generate(model, ids, 3)
    assert torch.equal(out, reference) and cap.summary.faults == {}
    con, run = latest_run(tmp_path / "hf.duckdb")
    _assert_pattern(_types_by_index(con, run, "layer"), HF_PATTERN)
    # routing: 16 prompt tokens x top-2 in the prefill step, 2 tokens x 2 per decode step
    per_step = rows(con, "SELECT step, layer_index, sum(tokens) FROM routing WHERE run_id = ? GROUP BY 1, 2 "
                         "ORDER BY 1, 2", [run])
    assert per_step == [(0, 1, 32), (0, 3, 32), (1, 1, 4), (1, 3, 4), (2, 1, 4), (2, 3, 4)]


# --------------------------------------------------------------------------------------------- GPU
def _gpu_model():
    model = hf_nemotron_h(GPU_PATTERN, hidden=1024, experts=8, dtype=torch.bfloat16).cuda()
    for impl in ("grouped_mm",):  # no per-expert host sync, when this transformers has it
        try:
            model.config._experts_implementation = impl
        except AttributeError:
            pass
    return model


@pytest.fixture(scope="module")
def gpu_runs(tmp_path_factory):
    db = tmp_path_factory.mktemp("gpu") / "hf.duckdb"
    model = _gpu_model()
    ids = torch.randint(10, 250, (8, 512), device="cuda", generator=torch.Generator("cuda").manual_seed(0))
    with torch.no_grad():
        model(ids)  # warm-up: allocator, kernels' first launches
        torch.cuda.synchronize()
        summaries = {}
        for mode in ("layers", "kernels"):
            with hybridscope.capture(db=db, model=model, mode=mode, label=mode) as cap:
                for _ in range(3):
                    model(ids)
            summaries[mode] = cap.summary
    return db, summaries


@pytest.mark.gpu
def test_gpu_rows_for_every_layer_type_match_the_pattern(gpu_runs):
    db, summaries = gpu_runs
    assert all(s.faults == {} for s in summaries.values())
    con = latest_run(db)[0]
    _assert_pattern(_types_by_index(con, 1, "layer"), GPU_PATTERN)
    _assert_pattern(_types_by_index(con, 2, "cuda"), GPU_PATTERN)
    scoped = rows(con, "SELECT sum(duration_ns) FILTER (WHERE attr_method = 'scope') / sum(duration_ns) FROM events "
                       "WHERE run_id = 2 AND source = 'cuda' AND kind = 'kernel'")[0][0]
    assert scoped > 0.9


@pytest.mark.gpu
def test_gpu_layers_and_kernels_per_layer_totals_agree(gpu_runs):
    con = latest_run(gpu_runs[0])[0]
    layer = dict(rows(con, "SELECT layer_index, sum(duration_ns) FROM events WHERE run_id = 1 AND source = 'layer' "
                           "AND layer_index IS NOT NULL GROUP BY 1"))
    kern = dict(rows(con, "SELECT layer_index, sum(duration_ns) FROM events WHERE run_id = 2 AND source = 'cuda' "
                          "AND kind IN ('kernel', 'memcpy', 'memset') AND layer_index IS NOT NULL GROUP BY 1"))
    ratio = {i: layer[i] / kern[i] for i in sorted(layer)}
    print("layers/kernels per layer:", {i: round(r, 3) for i, r in ratio.items()})
    assert set(ratio) == set(range(len(GPU_PATTERN)))
    assert all(0.9 <= r <= 1.1 for r in ratio.values()), ratio


@pytest.mark.gpu
def test_gpu_routing_and_nvml_samples(gpu_runs):
    con = latest_run(gpu_runs[0])[0]
    tokens = rows(con, "SELECT DISTINCT sum(tokens) FROM routing WHERE run_id = 1 GROUP BY step, layer_index")
    assert tokens == [(8 * 512 * 2,)]  # every token picks top-2 experts in every MoE layer
    metrics = {m for (m,) in rows(con, "SELECT DISTINCT metric FROM samples WHERE run_id = 1")}
    assert {"gpu_util_pct", "mem_util_pct", "sm_clock_mhz", "power_w", "mem_used_mib", "step_ms"} <= metrics


@pytest.mark.gpu
def test_gpu_engine_layers_mode(tmp_path):
    model = engine_tiny("cuda")
    reference = run_engine(engine_tiny("cuda"))
    with hybridscope.capture(db=tmp_path / "e.duckdb", model=model, quiet=True) as cap:
        out = run_engine(model)
    assert out == reference and cap.summary.faults == {}
    con, run = latest_run(tmp_path / "e.duckdb")
    types = {t for (t,) in rows(con, "SELECT DISTINCT layer_type FROM events WHERE run_id = ? AND source = 'layer'",
                                [run])}
    assert {"mamba", "attention", "moe_router", "moe_experts", "mlp"} <= types
    excl = np.array([r[0] for r in rows(con, "SELECT duration_ns FROM events WHERE run_id = ? AND source = 'layer'",
                                          [run])])
    assert (excl >= 0).all()
