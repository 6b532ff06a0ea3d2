"""decompose: hand-computed percentiles, tail ratios and shares; invariants; the CLI verb."""

from __future__ import annotations

import csv
import io

import numpy as np
import orjson
import pytest
from factories import add_events, add_run, new_store, store_with
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hybridscope.analyze.decompose import WARMUP, decompose
from hybridscope.attribute.vocab import ORDER
from hybridscope.cli import main
from hybridscope.errors import NotFound, UsageError

US = 1_000  # ns

# mamba: [1, 2, 3, 4, 100] µs; moe_comm: [50, 60] µs. Laid back to back on rank 0, so the window is
# exactly the 220 µs of GPU time.
MAMBA = [1 * US, 2 * US, 3 * US, 4 * US, 100 * US]
COMM = [50 * US, 60 * US]


@pytest.fixture
def small():
    con, run = store_with(":memory:", {"mamba": MAMBA, "moe_comm": COMM})
    yield con, run
    con.close()


def test_percentiles_and_tail_ratio_by_hand(small):
    con, run = small
    t = decompose(con, run)
    assert t.column("layer_type") == ["all", "mamba", "moe_comm"]
    m = t.record(layer_type="mamba")
    # sorted x = 1,2,3,4,100 µs; h = (n-1) q = 4q; p = x[floor h] + frac(h) (x[ceil h] - x[floor h])
    assert m["n"] == 5
    assert m["p50_ns"] == pytest.approx(3 * US)  # h = 2
    assert m["p90_ns"] == pytest.approx(61.6 * US)  # h = 3.6: 4 + 0.6 * 96
    assert m["p99_ns"] == pytest.approx(96.16 * US)  # h = 3.96: 4 + 0.96 * 96
    assert m["p999_ns"] == pytest.approx(99.616 * US)  # h = 3.996: 4 + 0.996 * 96
    assert m["max_ns"] == 100 * US
    assert m["tail_ratio"] == pytest.approx(96.16 / 3)
    assert m["gpu_ns"] == 110 * US
    c = t.record(layer_type="moe_comm")
    assert c["p50_ns"] == pytest.approx(55 * US)  # h = 0.5
    assert c["p99_ns"] == pytest.approx(59.9 * US)  # h = 0.99
    assert c["tail_ratio"] == pytest.approx(59.9 / 55)
    a = t.record(layer_type="all")
    # pooled sorted: 1,2,3,4,50,60,100 µs; h = 6q
    assert a["n"] == 7
    assert a["p50_ns"] == pytest.approx(4 * US)  # h = 3
    assert a["p90_ns"] == pytest.approx(76 * US)  # h = 5.4: 60 + 0.4 * 40
    assert a["p99_ns"] == pytest.approx(97.6 * US)  # h = 5.94: 60 + 0.94 * 40
    assert a["gpu_ns"] == 220 * US


def test_percentiles_match_numpy_linear(small):
    con, run = small
    t = decompose(con, run)
    for lt, data in (("mamba", MAMBA), ("moe_comm", COMM), ("all", MAMBA + COMM)):
        r = t.record(layer_type=lt)
        want = np.percentile(data, [50, 90, 99, 99.9], method="linear")
        got = [r["p50_ns"], r["p90_ns"], r["p99_ns"], r["p999_ns"]]
        np.testing.assert_allclose(got, want, rtol=1e-12)


def test_shares_of_gpu_and_wall_time(small):
    con, run = small
    t = decompose(con, run)
    assert t.meta["wall_ns"] == 220 * US  # back to back from 0
    assert t.record(layer_type="mamba")["gpu_pct"] == pytest.approx(50.0)
    assert t.record(layer_type="moe_comm")["wall_pct"] == pytest.approx(50.0)
    assert t.record(layer_type="all")["gpu_pct"] == pytest.approx(100.0)
    assert t.record(layer_type="all")["wall_pct"] == pytest.approx(100.0)


def test_only_gpu_events_count_and_memcpy_memset_do():
    con = new_store(":memory:")
    run = add_run(con, window_ns=(0, 1_000 * US))
    add_events(con, run, [10 * US], layer_type="attention")
    add_events(con, run, [5 * US], kind="memcpy", name="Memcpy HtoD", layer_type="memory")
    add_events(con, run, [1 * US], kind="memset", name="Memset", layer_type="memory")
    add_events(con, run, [400 * US], kind="gpu_annotation", name="moe.dispatch")  # a range over kernels
    add_events(con, run, [300 * US], source="cuda_api", kind="runtime", name="cudaLaunchKernel")
    add_events(con, run, [200 * US], source="cpu", kind="cpu_op", name="aten::mm")
    add_events(con, run, [100 * US], source="annotation", kind="user_annotation", name="layer.3")
    t = decompose(con, run)
    assert t.record(layer_type="all")["n"] == 3
    assert t.record(layer_type="all")["gpu_ns"] == 16 * US
    assert t.record(layer_type="memory")["n"] == 2
    # the window is run_ranks' [t_start, t_end], pinned to 1 ms and grown by every event (all sources)
    assert t.meta["wall_ns"] == 1_016 * US
    assert t.record(layer_type="all")["wall_pct"] == pytest.approx(100 * 16 / 1016)


def test_order_follows_vocabulary_and_unattributed_is_last():
    con = new_store(":memory:")
    run = add_run(con)
    for lt in ("other", "moe_comm", None, "norm", "mamba", "attention"):
        add_events(con, run, [1 * US, 3 * US], layer_type=lt)
    t = decompose(con, run)
    listed = t.column("layer_type")
    assert listed[0] == "all"
    assert listed[1:] == sorted(listed[1:-1], key=ORDER.index) + ["unattributed"]
    assert listed[1:4] == ["mamba", "attention", "moe_comm"]


@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(groups=st.dictionaries(
    st.sampled_from([*ORDER, None]),
    st.lists(st.integers(min_value=0, max_value=10**9), min_size=1, max_size=30),
    min_size=1, max_size=6))
def test_invariant_groups_add_up_to_all(groups):
    con = new_store(":memory:")
    run = add_run(con)
    for i, (lt, durations) in enumerate(groups.items()):
        add_events(con, run, durations, layer_type=lt, name=f"k{i % 3}", layer_index=i % 2,
                   module=None if i % 4 == 0 else f"m.{i % 3}", gap_ns=10)
    everything = [d for ds in groups.values() for d in ds]
    for by in ("layer_type", "layer", "module", "kernel"):
        # the rule's warm-up (first calls > 10x their kernel's median) is apart: all + warm-up = everything
        auto = decompose(con, run, by=by).to_records()
        warm = [r for r in auto if WARMUP in (r.get("layer_type"), r.get("module"), r.get("kernel"))]
        assert auto[0]["n"] + sum(r["n"] for r in warm) == len(everything)
        assert auto[0]["gpu_ns"] + sum(r["gpu_ns"] for r in warm) == sum(everything)
        t = decompose(con, run, by=by, warmup=0)  # the definitions, on every event
        rows = t.to_records()
        total, parts = rows[0], rows[1:]
        assert total["gpu_ns"] == sum(everything)
        assert sum(p["gpu_ns"] for p in parts) == total["gpu_ns"]
        assert sum(p["n"] for p in parts) == total["n"] == len(everything)
        if total["gpu_ns"]:
            assert sum(p["gpu_pct"] for p in parts) == pytest.approx(100.0)
            assert sum(p["wall_pct"] for p in parts) == pytest.approx(total["wall_pct"])
        assert total["max_ns"] == max(everything)
        for p in parts:
            assert p["p50_ns"] <= p["p90_ns"] <= p["p99_ns"] <= p["p999_ns"] <= p["max_ns"]
    by_type = decompose(con, run, warmup=0)
    for lt, durations in groups.items():
        r = by_type.record(layer_type=lt or "unattributed")
        want = np.percentile(durations, [50, 99], method="linear")
        assert [r["p50_ns"], r["p99_ns"]] == pytest.approx(list(want), rel=1e-9, abs=1e-6)
    con.close()


def test_ranks_pool_windows_and_filter():
    con = new_store(":memory:")
    run = add_run(con, ranks=(0, 1), window_ns=(0, 1_000 * US))
    con.execute("UPDATE run_ranks SET t_end_ns = ? WHERE rank = 1", [500 * US])
    add_events(con, run, [40 * US, 60 * US], rank=0, layer_type="moe_comm")
    add_events(con, run, [200 * US], rank=1, layer_type="moe_comm")
    pooled = decompose(con, run)
    assert pooled.meta["wall_ns"] == 1_500 * US  # rank-time: 1 ms + 0.5 ms
    assert pooled.meta["ranks"] == [0, 1]
    assert pooled.record(layer_type="all")["wall_pct"] == pytest.approx(20.0)  # 300 µs / 1.5 ms
    assert pooled.record(layer_type="moe_comm")["p50_ns"] == pytest.approx(60 * US)  # pooled 40, 60, 200
    one = decompose(con, run, rank=1)
    assert one.meta["wall_ns"] == 500 * US
    assert one.record(layer_type="all")["wall_pct"] == pytest.approx(40.0)
    assert one.record(layer_type="moe_comm")["n"] == 1
    with pytest.raises(NotFound, match="no rank 5"):
        decompose(con, run, rank=5)


def test_window_falls_back_to_the_events_span():
    con = new_store(":memory:")
    run = add_run(con)
    add_events(con, run, [10 * US], start_ns=100 * US)
    add_events(con, run, [10 * US], start_ns=190 * US, source="cpu", kind="cpu_op")
    con.execute("UPDATE run_ranks SET t_start_ns = NULL, t_end_ns = NULL")
    t = decompose(con, run)
    assert t.meta["wall_ns"] == 100 * US  # 100 µs .. 200 µs, every source
    assert t.record(layer_type="all")["wall_pct"] == pytest.approx(10.0)


def test_by_layer_module_and_kernel():
    con = new_store(":memory:")
    run = add_run(con)
    add_events(con, run, [5 * US, 7 * US], layer_type="attention", layer_index=1, module="layers.1.attn",
               name="flash_fwd")
    add_events(con, run, [9 * US], layer_type="mamba", layer_index=0, module="layers.0.mixer", name="ssd")
    add_events(con, run, [1 * US], layer_type="moe_comm", layer_index=0, module="it's.quoted", name="nccl")
    add_events(con, run, [30 * US], layer_type="memory", name="Memcpy DtoD", kind="memcpy")
    layer = decompose(con, run, by="layer")
    assert [(r["layer_index"], r["layer_type"]) for r in layer.to_records()] == [
        (None, "all"), (0, "mamba"), (0, "moe_comm"), (1, "attention"), (None, "memory")]
    assert layer.record(layer_index=1)["p50_ns"] == pytest.approx(6 * US)
    module = decompose(con, run, by="module")
    assert module.column("module") == ["all", "(no module)", "layers.1.attn", "layers.0.mixer", "it's.quoted"]
    kernel = decompose(con, run, by="kernel", top=2)
    assert kernel.column("kernel") == ["all", "Memcpy DtoD", "flash_fwd"]
    assert kernel.meta["groups"] == 4
    assert kernel.record(kernel="all")["gpu_ns"] == 52 * US  # 'all' still covers every group
    assert any("top 2 of 4" in n for n in kernel.meta["notes"])


@pytest.mark.parametrize("by, key", [("layer_type", "layer_type"), ("layer", "layer_type"),
                                     ("module", "module"), ("kernel", "kernel")])
def test_top_keeps_the_groups_with_the_most_gpu_time_for_every_by(by, key):
    """GPU time per type: mamba 3 µs, attention 40 µs, moe_experts 2 µs, moe_comm 25 µs. In vocabulary
    (and layer) order mamba comes first, but --top 2 keeps attention and moe_comm, in that order."""
    con = new_store(":memory:")
    run = add_run(con)
    for i, (layer_type, durations) in enumerate([("mamba", [1 * US, 2 * US]), ("attention", [40 * US]),
                                                  ("moe_experts", [2 * US]), ("moe_comm", [5 * US, 20 * US])]):
        add_events(con, run, durations, layer_type=layer_type, layer_index=i, module=f"m.{layer_type}",
                   name=f"k_{layer_type}")
    t = decompose(con, run, by=by, top=2)
    names = {"layer_type": "{}", "layer": "{}", "module": "m.{}", "kernel": "k_{}"}[by]
    assert t.column(key)[1:] == [names.format("attention"), names.format("moe_comm")]
    assert t.record(**{key: "all"})["gpu_ns"] == 70 * US
    assert "top 2 of 4" in t.meta["notes"][-1]


def test_edge_cases_empty_zero_median_single_event():
    con = new_store(":memory:")
    run = add_run(con)
    add_events(con, run, [500], source="cpu", kind="cpu_op")
    empty = decompose(con, run)
    assert empty.to_records() == [{
        "layer_type": "all", "n": 0, "p50_ns": None, "p90_ns": None, "p99_ns": None, "p999_ns": None,
        "max_ns": None, "tail_ratio": None, "gpu_ns": 0, "gpu_pct": None, "wall_pct": 0.0}]
    assert "no GPU events" in empty.meta["notes"][0]
    add_events(con, run, [0, 0, 0, 10], layer_type="other")
    add_events(con, run, [7], layer_type="norm")
    t = decompose(con, run)
    assert t.record(layer_type="other")["tail_ratio"] is None  # p50 = 0
    assert t.record(layer_type="other")["p99_ns"] == pytest.approx(9.7)  # h = 2.97: 0 + 0.97 * 10
    single = t.record(layer_type="norm")
    assert single["p50_ns"] == single["p999_ns"] == single["max_ns"] == 7
    assert single["tail_ratio"] == pytest.approx(1.0)


def test_bad_arguments():
    con, run = store_with(":memory:", {"mamba": [1]})
    with pytest.raises(UsageError, match="--by"):
        decompose(con, run, by="stream")
    with pytest.raises(UsageError, match="--top"):
        decompose(con, run, top=0)


# -- the CLI verb ---------------------------------------------------------------------------------


@pytest.fixture
def db_file(db_path):
    con, _ = store_with(db_path, {"mamba": MAMBA, "moe_comm": COMM})
    con.close()
    return db_path


def _cli(argv: list[str]) -> int:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    return exc.value.code


def test_cli_table_json_csv(db_file, capsys):
    assert _cli(["decompose", "--db", str(db_file)]) == 0
    text = capsys.readouterr().out
    lines = [ln.split() for ln in text.splitlines()]
    rows = {ln[0]: ln for ln in lines if ln and ln[0] in ("all", "mamba", "moe_comm")}
    assert rows["mamba"][1:3] == ["5", "3.00"] and rows["mamba"][3] == "µs"
    assert "32.1×" in rows["mamba"] and "50.0%" in rows["moe_comm"]

    assert _cli(["decompose", "--db", str(db_file), "--format", "json"]) == 0
    doc = orjson.loads(capsys.readouterr().out)
    assert doc["name"] == "decompose_layer_type"
    assert doc["rows"][1]["layer_type"] == "mamba"
    assert doc["rows"][1]["p99_ns"] == pytest.approx(96_160)

    assert _cli(["decompose", "--db", str(db_file), "-f", "csv", "--by", "kernel", "--run", "1", "--rank", "0"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert [r["kernel"] for r in rows] == ["all", "k_mamba", "k_moe_comm"]
    assert float(rows[0]["p50_ns"]) == pytest.approx(4_000)


@pytest.mark.parametrize("argv, code, message", [
    (["--run", "7"], 1, "no run 7"),
    (["--rank", "3"], 1, "no rank 3"),
    (["--by", "stream"], 2, "--by must be one of"),
    (["--format", "xml"], 2, "--format must be one of"),
])
def test_cli_errors_are_one_line(db_file, capsys, argv, code, message):
    assert _cli(["decompose", "--db", str(db_file), *argv]) == code
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


def test_cli_missing_db_and_empty_store(tmp_path, capsys):
    assert _cli(["decompose", "--db", str(tmp_path / "nope.duckdb")]) == 1
    assert "no database" in capsys.readouterr().err
    new_store(tmp_path / "empty.duckdb").close()
    assert _cli(["decompose", "--db", str(tmp_path / "empty.duckdb")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no runs" in err[0]


def test_docs_worked_example():
    """The example of docs/analyses.md, number by number."""
    con = new_store(":memory:")
    run = add_run(con, window_ns=(0, 1_000 * US))
    add_events(con, run, [10 * US] * 4, layer_type="mamba")
    add_events(con, run, [4 * US, 5 * US, 6 * US, 8 * US, 30 * US, 200 * US], layer_type="moe_comm")
    t = decompose(con, run)
    c = t.record(layer_type="moe_comm")
    assert [c["p50_ns"], c["p90_ns"], c["p99_ns"], c["p999_ns"]] == pytest.approx(
        [7 * US, 115 * US, 191.5 * US, 199.15 * US])
    assert c["tail_ratio"] == pytest.approx(191.5 / 7)
    assert c["gpu_ns"] == 253 * US
    assert c["gpu_pct"] == pytest.approx(100 * 253 / 293)
    assert c["wall_pct"] == pytest.approx(25.3)
    a = t.record(layer_type="all")
    assert [a["p50_ns"], a["p99_ns"]] == pytest.approx([10 * US, 184.7 * US])
    assert a["tail_ratio"] == pytest.approx(18.47)
    assert (a["gpu_ns"], a["wall_pct"]) == (293 * US, pytest.approx(29.3))


def test_layers_mode_and_host_api_runs_are_decomposed_over_what_they_measured(tmp_path):
    from factories import add_events, add_run, new_store

    from hybridscope.analyze.decompose import decompose

    con = new_store(tmp_path / "m.duckdb")
    layers = add_run(con, source="capture")
    add_events(con, layers, [10, 30], source="layer", kind="layer", layer_type="mamba")
    add_events(con, layers, [5], source="annotation", kind="user_annotation", name="scope")
    t = decompose(con, layers)
    assert t.meta["measure"] == "layers"
    assert t.record(layer_type="all")["gpu_ns"] == 40 and t.record(layer_type="mamba")["n"] == 2
    host = add_run(con, source="ingero")
    add_events(con, host, [100, 300], source="host_api", kind="runtime", name="cudaLaunchKernel")
    add_events(con, host, [7], source="host_api", kind="sync", name="cudaDeviceSync")
    t = decompose(con, host)
    assert t.meta["measure"] == "host_api" and t.meta["by"] == "kernel"
    assert t.record(kernel="cudaLaunchKernel")["p50_ns"] == 200
