"""Per-rank Parquet sets: written beside the store, read back as a store by the same analyses."""

from __future__ import annotations

import pytest
from factories import add_events, add_run, new_store

from hybridscope.analyze.collectives import rank_waits
from hybridscope.analyze.decompose import decompose
from hybridscope.errors import BadInput, NotFound
from hybridscope.store import parquet


def test_roundtrip_gives_the_same_analyses(tmp_path):
    con = new_store(tmp_path / "s.duckdb")
    run = add_run(con, ranks=(0, 1))
    for rank, starts in ((0, [100, 1100]), (1, [400, 1000])):
        add_events(con, run, [1000 - starts[0], 2000 - starts[1]], rank=rank, ts_ns=starts,
                   name="ncclDevKernel_SendRecv", layer_type="moe_comm")
        add_events(con, run, [10, 20, 30], rank=rank, layer_type="mamba", start_ns=3000)
    other = add_run(con)
    add_events(con, other, [5], layer_type="mamba")
    out = tmp_path / "pq"
    written = parquet.export_run(con, run, out)
    assert {p.name for p in written} >= {"events", "runs", "run_ranks"}
    assert (out / "events" / f"run_id={run}" / "rank=1").is_dir()
    direct = decompose(con, run).rows, rank_waits(con, run).rows
    pq = parquet.open_set(out)
    assert (decompose(pq, run).rows, rank_waits(pq, run).rows) == direct
    assert pq.execute("SELECT count(*) FROM events").fetchall()[0][0] == 10  # the other run was not exported
    pq.close()
    parquet.export_run(con, run, out)  # again: replaces, does not duplicate
    pq = parquet.open_set(out)
    assert pq.execute("SELECT count(*) FROM events").fetchall()[0][0] == 10


def test_bad_sets(tmp_path):
    with pytest.raises(NotFound):
        parquet.open_set(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(BadInput):
        parquet.open_set(tmp_path / "empty")


def test_ranks_verb_reads_db_and_parquet_alike(tmp_path, capsys):
    from hybridscope.cli import main

    path = tmp_path / "s.duckdb"
    con = new_store(path)
    run = add_run(con, ranks=(0, 1))
    add_events(con, run, [900], rank=0, ts_ns=[100], name="ncclDevKernel_SendRecv", step=0)
    add_events(con, run, [600], rank=1, ts_ns=[400], name="ncclDevKernel_SendRecv", step=0)
    con.close()
    with pytest.raises(SystemExit) as e:
        main(["export", "--db", str(path), "--parquet", str(tmp_path / "pq")])
    assert e.value.code == 0
    outputs = []
    for src in (["--db", str(path)], ["--parquet", str(tmp_path / "pq")]):
        with pytest.raises(SystemExit) as e:
            main(["ranks", *src, "--show", "waits", "--format", "csv"])
        assert e.value.code == 0
        outputs.append(capsys.readouterr().out)
    assert outputs[0] == outputs[1]
    assert outputs[0].splitlines()[1].startswith("0,1,900,300,")
    with pytest.raises(SystemExit) as e:
        main(["ranks", "--db", str(path), "--parquet", str(tmp_path / "pq")])
    assert e.value.code == 2


def test_export_needs_a_target(tmp_path):
    from hybridscope.cli import main

    path = tmp_path / "s.duckdb"
    new_store(path).close()
    with pytest.raises(SystemExit) as e:
        main(["export", "--db", str(path)])
    assert e.value.code == 2
