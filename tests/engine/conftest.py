"""Engine tests run torch on one CPU thread: their ops are tiny, and on a shared 2-core machine the
OpenMP pool spins against other processes (one tiny-model decode step: 19 ms on 1 thread, 400 ms on 2)."""

from __future__ import annotations

import pytest
import torch


@pytest.fixture(autouse=True)
def _one_cpu_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
