"""Continuous batching on a fake clock: admission, mixing, retirement, TTFT/ITL by hand; outputs equal
each request generated alone."""

from __future__ import annotations

import pytest
import torch

from hybridscope.engine.config import EngineConfig
from hybridscope.engine.model import Batch, build_model
from hybridscope.engine.scheduler import Engine, Request, summarize

STEP = 0.010  # every forward costs exactly 10 ms of fake time


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t

    def sleep(self, dt: float) -> None:
        self.t += dt


@pytest.fixture
def model():
    return build_model(EngineConfig.from_preset("tiny"))


def make_engine(model, **kw) -> tuple[Engine, FakeClock]:
    clock = FakeClock()
    model.register_forward_pre_hook(lambda *a: clock.sleep(STEP))
    eng = Engine(model, clock=clock, sleep=clock.sleep, **kw)
    return eng, clock


def test_admission_mixing_retirement_and_latencies_on_a_fake_clock():
    model = build_model(EngineConfig.from_preset("tiny"))
    eng, _ = make_engine(model)
    a = Request(0, [1, 2, 3, 4, 5], max_new_tokens=3, arrival=0.0)
    b = Request(1, [6, 7, 8, 9], max_new_tokens=2, arrival=0.015)
    c = Request(2, [3, 3], max_new_tokens=1, arrival=0.100)  # arrives after everyone left: idle wait
    done = eng.run([a, b, c])
    assert [s.kind for s in eng.steps] == ["prefill", "decode", "mixed", "decode", "prefill"]
    assert [s.n_seqs for s in eng.steps] == [1, 1, 2, 1, 1]
    assert [(s.prefill_tokens, s.decode_tokens) for s in eng.steps] == [(5, 0), (0, 1), (4, 1), (0, 1), (2, 0)]
    assert [r.rid for r in done] == [0, 1, 2]  # a retires in step 3, b in step 4, c in step 5
    assert a.token_times == pytest.approx([0.010, 0.020, 0.030])
    assert b.token_times == pytest.approx([0.030, 0.040])  # admitted at 0.020, joined a's decode
    assert (a.ttft, b.ttft, c.ttft) == pytest.approx((0.010, 0.015, 0.010))
    assert a.itl == pytest.approx([0.010, 0.010]) and b.itl == pytest.approx([0.010])
    assert c.token_times == pytest.approx([0.110])
    s = summarize(done, eng.steps)
    assert s["output_tokens"] == 6 and s["tokens_per_s"] == pytest.approx(6 / 0.110)
    assert s["ttft_p50"] == pytest.approx(0.010) and s["itl_p50"] == pytest.approx(0.010)
    assert s["step_p50"] == pytest.approx(STEP)


def test_slots_are_reused_and_queueing_counts_in_ttft(model):
    eng, _ = make_engine(model, max_batch=1)
    reqs = [Request(i, [5 + i] * 4, max_new_tokens=2, arrival=0.0) for i in range(3)]
    eng.run(reqs)
    assert [r.slot for r in reqs] == [0, 0, 0]
    assert [r.ttft for r in reqs] == pytest.approx([0.010, 0.030, 0.050])  # each waits for the last


def test_prefill_budget_limits_admission_per_step(model):
    eng, _ = make_engine(model, max_prefill_tokens=10)
    reqs = [Request(i, [1] * 6, max_new_tokens=1, arrival=0.0) for i in range(3)]
    eng.run(reqs)
    assert [s.prefill_tokens for s in eng.steps] == [6, 6, 6]  # 6 + 6 > 10: one prompt per step


def test_rejects_requests_that_do_not_fit(model):
    eng, _ = make_engine(model, max_seq_len=16)
    with pytest.raises(ValueError, match="max_seq_len"):
        eng.submit([Request(0, [1] * 10, max_new_tokens=10)])


def _alone(model, prompt: list[int], n: int) -> list[int]:
    """Greedy generation of one request with its own cache, no batching."""
    cache, out = model.new_cache(max_batch=1), []
    logits = model(torch.tensor(prompt), Batch.packed([0], [0], [len(prompt)], "cpu"), cache)
    for i in range(n):
        out.append(int(logits[0].argmax()))
        logits = model(torch.tensor(out[-1:]), Batch.dense_decode(torch.tensor([len(prompt) + i]), 256), cache)
    return out


def test_continuous_batching_matches_each_request_alone(model):
    gen = torch.Generator().manual_seed(7)
    reqs = [Request(i, torch.randint(1, 256, (int(n),), generator=gen).tolist(), max_new_tokens=int(m),
                    arrival=0.004 * i)
            for i, (n, m) in enumerate(zip(torch.randint(3, 30, (7,), generator=gen),
                                           torch.randint(1, 9, (7,), generator=gen)))]
    eng, _ = make_engine(model, max_batch=4)
    eng.run(reqs)
    assert {s.kind for s in eng.steps} == {"prefill", "mixed", "decode"}
    for r in reqs:
        assert r.tokens == _alone(model, r.prompt, r.max_new_tokens), r.rid
