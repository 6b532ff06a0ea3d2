"""A pytest plugin: capture inside a project's own tests and assert on the decomposition.

Installed with hybridscope (entry point `pytest11`), it adds the fixture `hybridscope_capture`:

    def test_moe_tail(hybridscope_capture, model, batch):
        with hybridscope_capture(model, mode="layers") as cap:
            for _ in range(20):
                model(batch)
        d = cap.result                                   # a Decomposition of the captured run
        assert d.tail_ratio("moe_experts") < 10
        assert d.share("attention") < 0.5
        d.check("baselines.duckdb", "main", max_p99_regression="10%")  # AssertionError naming regressions

Each capture writes its own store under the test's tmp_path (kept by pytest for inspection).
This module imports nothing heavy at collection time: pytest loads it in every session.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import pytest


class Decomposition:
    """The per-layer-type table of one captured run, with accessors for assertions."""

    def __init__(self, db: Path, run_id: int):
        from hybridscope.analyze.decompose import decompose
        from hybridscope.store import db as store

        self.db, self.run_id = Path(db), run_id
        con = store.open_readonly(self.db)
        try:
            self.table = decompose(con, run_id)
        finally:
            con.close()

    def _row(self, layer_type: str) -> dict:
        try:
            return self.table.record(layer_type=layer_type)
        except KeyError:
            known = self.layer_types()
            raise AssertionError(f"no {layer_type!r} row in the decomposition (rows: {known})") from None

    def layer_types(self) -> list[str]:
        """The layer types measured (not the `all` row, nor the `warm-up` row left out of it)."""
        return [v for v in self.table.column("layer_type") if v not in ("all", "warm-up")]

    def n(self, layer_type: str) -> int:
        return self._row(layer_type)["n"]

    def p50(self, layer_type: str) -> float:
        return self._row(layer_type)["p50_ns"]

    def p99(self, layer_type: str) -> float:
        return self._row(layer_type)["p99_ns"]

    def tail_ratio(self, layer_type: str) -> float:
        return self._row(layer_type)["tail_ratio"]

    def share(self, layer_type: str) -> float:
        """Share of the run's GPU (or layer) time, 0..1."""
        return self._row(layer_type)["gpu_pct"] / 100.0

    def save_baseline(self, db: str | Path, name: str, *, force: bool = True) -> None:
        """Keep this run's distributions as baseline `name` in the store `db` (created if needed)."""
        from hybridscope.analyze.compare import baseline_of
        from hybridscope.store import baselines
        from hybridscope.store import db as store

        src = store.open_readonly(self.db)
        try:
            per, label = baseline_of(src, self.run_id)
        finally:
            src.close()
        con = store.open_store(db)
        try:
            baselines.save(con, name, self.run_id, per, force=force, label=label)
        finally:
            con.close()

    def check(self, baseline_db: str | Path, name: str, *, max_p99_regression: str = "10%",
              max_p50_regression: str = "5%"):
        """Assert no layer type regressed against baseline `name`; returns the check Table."""
        from hybridscope.analyze.compare import check_run, margin
        from hybridscope.present.table import to_text
        from hybridscope.store import baselines
        from hybridscope.store import db as store

        limits = {"p50": margin(max_p50_regression, "max_p50_regression"),
                  "p99": margin(max_p99_regression, "max_p99_regression")}
        bcon = store.open_readonly(baseline_db)
        try:
            base = baselines.load(bcon, name)
        finally:
            bcon.close()
        con = store.open_readonly(self.db)
        try:
            table = check_run(con, self.run_id, base, limits=limits,
                              meta={"title": f"capture vs baseline {name!r}"})
        finally:
            con.close()
        if table.meta["failed"]:
            raise AssertionError(f"{table.meta['regressed']} regression(s), {len(table.meta['missing'])} missing "
                                 f"group(s) against baseline {name!r}:\n"
                                 + to_text(table, width=160))
        return table


class _TestCapture:
    """What `hybridscope_capture(...)` yields: the live capture, then `.result` after the block."""

    def __init__(self, cap):
        self.capture = cap
        self.result: Decomposition | None = None

    def step(self, **kw) -> None:
        self.capture.step(**kw)


@pytest.fixture
def hybridscope_capture(tmp_path):
    """`with hybridscope_capture(model, mode='layers', **capture_options) as cap: ...`; then `cap.result`.

    Unlike a long-running capture, every step is recorded (sample_every=1) unless the test says otherwise."""
    counter = {"n": 0}

    @contextlib.contextmanager
    def run(model, **options):
        from hybridscope.live.session import capture

        counter["n"] += 1
        db = options.pop("db", tmp_path / f"hybridscope-{counter['n']}.duckdb")
        options.setdefault("quiet", True)
        options.setdefault("sample_every", 1)  # a test asserts on every step, not a sample of them
        with capture(db=db, model=model, **options) as cap:
            handle = _TestCapture(cap)
            yield handle
        summary = cap.summary
        if summary is None or summary.run_id is None:
            raise AssertionError("hybridscope captured nothing: " + "; ".join(summary.notes if summary else []))
        handle.result = Decomposition(Path(db), summary.run_id)

    return run
