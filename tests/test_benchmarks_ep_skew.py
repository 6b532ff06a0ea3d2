"""benchmarks/ep_skew.py without spawning ranks: the scenarios' wiring, the prefill scenario's steps on
the engine (one process), and the command line."""

from __future__ import annotations

import importlib.util
from dataclasses import asdict

import pytest
from paths import ROOT

spec = importlib.util.spec_from_file_location("ep_skew", ROOT / "benchmarks" / "ep_skew.py")
ep_skew = importlib.util.module_from_spec(spec)
spec.loader.exec_module(ep_skew)


@pytest.fixture(scope="module")
def cpu_base():
    from hybridscope import demo

    return demo.default_options(device="cpu", ranks=2, skew=0.0, mode="kernels")


def test_decode_scenario_is_the_demo_workload(cpu_base):
    o = ep_skew.scenario_options("decode", cpu_base, None)
    # the demo's options, with the engine's prompt-token budget per step spelled out (the demo's None
    # means the engine's default, 4096)
    assert {k: o[k] for k in asdict(cpu_base) if k != "step_tokens"} == {
        k: v for k, v in asdict(cpu_base).items() if k != "step_tokens"}
    assert cpu_base.step_tokens is None
    assert o["step_tokens"] == 4096 and o["warm_requests"] == 2
    assert ep_skew.scenario_options("decode", cpu_base, 5)["requests"] == 5


def test_prefill_scenario_fills_every_step_with_the_same_prompts(cpu_base):
    from hybridscope import demo
    from hybridscope.engine.config import EngineConfig
    from hybridscope.engine.model import build_model
    from hybridscope.engine.scheduler import Engine

    o = ep_skew.scenario_options("prefill", cpu_base, 16)
    prompt, step_tokens, _, overrides = ep_skew.PREFILL["cpu"]
    assert (o["prompt_len"], o["gen_len"], o["rate"], o["jitter"]) == (prompt, 1, 0.0, False)
    assert o["skew_experts"] == ep_skew.PREFILL_HOT and o["overrides"] == overrides
    assert o["warm_requests"] * prompt == o["step_tokens"] == step_tokens
    cfg = EngineConfig.from_preset(o["preset"], **o["overrides"])
    reqs = demo.requests_for(o, 1, cfg.vocab_size)
    assert {(len(r.prompt), r.max_new_tokens, r.arrival) for r in reqs} == {(prompt, 1, 0.0)}
    engine = Engine(build_model(cfg), cuda_graphs=False, max_prefill_tokens=o["step_tokens"])
    engine.run(reqs)
    # 16 prompts, 512 tokens a step: two full prefill steps, no decode
    assert [(s.kind, s.prefill_tokens, s.decode_tokens) for s in engine.steps] == [("prefill", step_tokens, 0)] * 2
    # a routed row through a widened tiny expert: up [512, 64] and down [64, 512], 2 FLOPs a MAC
    assert ep_skew.flop_per_row(o) == 2 * 64 * (512 + 512)


def test_unknown_scenario_is_a_usage_error(tmp_path):
    with pytest.raises(SystemExit) as e:
        ep_skew.main(["--out", str(tmp_path), "--scenario", "decode,train"])
    assert e.value.code == 2
