"""The CI slice of the importers' fuzz harness (tests/fuzzing.py; the long run is
benchmarks/fuzz_import.py): every case imports or is refused with one line leaving the store
unchanged, and every import can be decomposed and reported."""

from __future__ import annotations

import collections

import pytest
from fuzzing import Seeds, run_case

from hybridscope.store.db import open_store

CASES = 48  # ~0.5 s each: the three formats and every seed; the benchmark runs thousands


@pytest.fixture(scope="module")
def seeds() -> Seeds:
    return Seeds()


@pytest.mark.slow
def test_fuzz_slice_has_no_traceback(seeds, tmp_path):
    con = open_store(tmp_path / "s.duckdb")
    outcomes = collections.Counter()
    bad = []
    try:
        for case in seeds.cases(CASES):
            o = run_case(con, seeds, case, tmp_path)
            outcomes[(case.fmt, o.result)] += 1
            if o.result == "traceback":
                bad.append(f"{case}: {o.detail} after {list(o.mutations)}")
    finally:
        con.close()
    assert not bad, "\n".join(bad)
    formats = {fmt for fmt, result in outcomes if result == "imported"}
    assert {"kineto", "nsys"} <= formats  # the slice reaches the analyses, not only the refusals
