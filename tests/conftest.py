"""Shared fixtures: real traces from ../shared, temporary stores, the gpu marker."""

from __future__ import annotations

from pathlib import Path

import pytest
from paths import TRACES


def _has_cuda() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def pytest_collection_modifyitems(config, items):
    if _has_cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def shared_trace():
    """Path to a file of ../shared/traces (skips when shared/ is not beside the checkout)."""

    def get(name: str) -> Path:
        path = TRACES / name
        if not path.exists():
            pytest.skip(f"{path} not present")
        return path

    return get


@pytest.fixture
def db_path(tmp_path) -> Path:
    return tmp_path / "run.duckdb"
