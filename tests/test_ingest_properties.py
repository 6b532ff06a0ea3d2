"""Property tests: damaged traces give a clean BadInput or a whole import, never a half-written store.

Inputs are real (small) Kineto traces from ../shared/traces/external (HTA's test data), cut short
or with bytes overwritten at random, plain and gzipped. After every attempt the store's row
counts are either exactly as before (BadInput) or grown by exactly what the result reports.
"""

from __future__ import annotations

import gzip

import pytest
from damage import import_whole_or_nothing
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from paths import EXTERNAL

from hybridscope.ingest import import_files
from hybridscope.store.db import open_store

SMALL = ("hta_critical_path_event_sync_trace.json.gz", "hta_triton_example_triton_example.json.gz")
SETTINGS = settings(max_examples=20, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


def _plain(name: str) -> bytes:
    path = EXTERNAL / name
    if not path.exists():
        pytest.skip(f"{path} not present")
    return gzip.decompress(path.read_bytes())


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    """One open store with a good import in it, shared by the examples (each leaves it whole)."""
    con = open_store(tmp_path_factory.mktemp("props") / "s.duckdb")
    import_files(con, [EXTERNAL / SMALL[1]], progress=False) if (EXTERNAL / SMALL[1]).exists() else None
    yield con
    con.close()


def _attempt(con, tmp_path, data: bytes, suffix: str) -> None:
    path = tmp_path / f"damaged{suffix}"
    path.write_bytes(data)
    import_whole_or_nothing(con, path)


@SETTINGS
@given(cut=st.floats(0.0, 1.0), name=st.sampled_from(SMALL), gz=st.booleans())
def test_truncated_traces(store, tmp_path, cut, name, gz):
    text = _plain(name)
    data = text[: int(len(text) * cut)]
    _attempt(store, tmp_path, gzip.compress(data) if gz else data, ".json.gz" if gz else ".json")


@SETTINGS
@given(name=st.sampled_from(SMALL), edits=st.lists(st.tuples(st.floats(0.0, 1.0), st.integers(0, 255)),
                                                     min_size=1, max_size=4))
def test_corrupted_bytes_in_plain_json(store, tmp_path, name, edits):
    data = bytearray(_plain(name))
    for where, value in edits:
        data[min(int(where * len(data)), len(data) - 1)] = value
    _attempt(store, tmp_path, bytes(data), ".json")


@SETTINGS
@given(name=st.sampled_from(SMALL), where=st.floats(0.0, 1.0), value=st.integers(0, 255),
       cut=st.one_of(st.none(), st.floats(0.0, 1.0)))
def test_corrupted_or_truncated_gzip(store, tmp_path, name, where, value, cut):
    data = bytearray(gzip.compress(_plain(name)))
    data[min(int(where * len(data)), len(data) - 1)] = value
    if cut is not None:
        data = data[: int(len(data) * cut)]
    _attempt(store, tmp_path, bytes(data), ".json.gz")
