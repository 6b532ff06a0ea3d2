"""Capture never takes the workload down: failing hooks, sampler, router reads and writer."""

from __future__ import annotations

import json

import pytest
import torch
from capture_models import ToyModel, engine_tiny, latest_run, reference_tokens, rows, run_engine

import hybridscope
from hybridscope.live import hooks, layers, sampler


def _boom(*args, **kwargs):
    raise RuntimeError("injected failure")


@pytest.fixture
def reference():
    return reference_tokens()


def _notes(db) -> dict:
    con, run = latest_run(db)
    return json.loads(rows(con, "SELECT notes FROM runs WHERE run_id = ?", [run])[0][0])["ranks"]["0"]


@pytest.mark.parametrize("target, place", [
    ((hooks.Recorder, "pre"), "hook.pre"),
    ((hooks.Recorder, "post"), "hook.post"),
    ((layers.CpuTimer, "mark"), "hook.pre"),
])
def test_a_raising_hook_leaves_output_identical_and_is_reported(target, place, reference, tmp_path, monkeypatch,
                                                                capsys):
    monkeypatch.setattr(*target, _boom)
    model = engine_tiny()
    with hybridscope.capture(db=tmp_path / "f.duckdb", model=model) as cap:
        out = run_engine(model)
    assert out == reference
    fault = cap.summary.faults[place]
    assert fault["count"] > 0 and fault["first"] == "RuntimeError: injected failure"
    assert _notes(tmp_path / "f.duckdb")["faults"][place]["count"] == fault["count"]
    assert f"{place} {fault['count']} (RuntimeError: injected failure)" in capsys.readouterr().err


def test_a_place_that_keeps_failing_is_switched_off(tmp_path, monkeypatch):
    monkeypatch.setattr(hooks.Recorder, "pre", _boom)
    model = ToyModel(torch.tensor([[0, 1]]), num_experts=2)
    with hybridscope.capture(db=tmp_path / "g.duckdb", model=model, sample_every=1, quiet=True) as cap:
        ys = [model(torch.ones(1, 2)) for _ in range(50)]  # 50 calls x 3 hooked modules > the limit
    assert all(torch.equal(y, torch.full((1, 2), 2.0)) for y in ys)
    assert cap.summary.faults["hook.pre"]["count"] == cap.faults.limit  # then no more tries


def test_a_raising_sampler_is_reported_and_the_run_still_lands(reference, tmp_path, monkeypatch):
    monkeypatch.setattr(sampler.Sampler, "_sample_once", _boom)
    model = engine_tiny()
    with hybridscope.capture(db=tmp_path / "s.duckdb", model=model, sampler_interval=0.001, quiet=True) as cap:
        out = run_engine(model)
    assert out == reference
    assert cap.summary.faults["sampler"]["count"] >= 1
    con, run = latest_run(tmp_path / "s.duckdb")
    assert rows(con, "SELECT count(*) FROM samples WHERE run_id = ? AND metric = 'cpu_util_pct'", [run]) == [(0,)]
    assert rows(con, "SELECT count(*) FROM steps WHERE run_id = ?", [run]) == [(3,)]


def test_a_router_without_ids_is_a_counted_fault(tmp_path):
    model = ToyModel(torch.tensor([[0, 1]]), num_experts=2)
    model.layers[0].moe.router.forward = lambda x: (torch.zeros(1, 2), torch.zeros(1, 2))  # no ids
    with hybridscope.capture(db=tmp_path / "n.duckdb", model=model, quiet=True) as cap:
        y = model(torch.ones(1, 2))
    assert torch.equal(y, torch.full((1, 2), 2.0))
    assert cap.summary.faults["hook.post"]["first"].startswith("ValueError: router layers.0.moe.router")


def test_an_unwritable_store_falls_back_beside_it(tmp_path):
    bad = tmp_path / "not_a_db.duckdb"
    bad.write_bytes(b"this is not a duckdb file" * 100)
    model = ToyModel(torch.tensor([[0, 1]]), num_experts=2)
    with hybridscope.capture(db=bad, model=model, quiet=True) as cap:
        model(torch.ones(1, 2))
    assert cap.summary.faults["writer"]["count"] == 1
    assert cap.summary.db != str(bad) and cap.summary.db.endswith(".duckdb")
    con, run = latest_run(cap.summary.db)
    assert rows(con, "SELECT count(*) FROM routing WHERE run_id = ?", [run]) == [(2,)]
    assert bad.read_bytes() == b"this is not a duckdb file" * 100  # nothing stored was touched


def test_the_workloads_own_exception_passes_through_and_the_run_is_written(tmp_path):
    model = ToyModel(torch.tensor([[0, 1]]), num_experts=2)
    with pytest.raises(KeyError), hybridscope.capture(db=tmp_path / "k.duckdb", model=model, quiet=True) as cap:
        model(torch.ones(1, 2))
        raise KeyError("the user's bug")
    assert cap.summary.run_id == 1 and cap.summary.faults == {}


def test_mirror_copies_only_what_was_appended_and_stays_equal_to_its_list():
    from hybridscope.live.hooks import Mirror

    items: list[int] = []
    m = Mirror(items)
    assert m.array().tolist() == []
    seen = []
    for chunk in (list(range(5)), list(range(100, 1100)), [7] * 3000):  # grows past its 1024 start
        items.extend(chunk)
        a = m.array()
        seen.append(a)
        assert a.dtype.name == "int64" and a.tolist() == items
    assert seen[0].tolist() == list(range(5))  # an earlier view keeps its values after growth
    assert m.n == len(items) and m.buf.size >= len(items)
