"""What every kernel test compares with: relative-norm error against a float64 truth, the bound per
dtype, and fresh random seeds (replay one with HYBRIDSCOPE_SEED)."""

from __future__ import annotations

import importlib.util
import os
import random
import subprocess
import sys

import pytest
import torch

# The CPU build of torch ships without triton: tests of the Triton kernels (or of code that imports
# it while being traced) skip there, saying so.
needs_triton = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                  reason="needs triton, which the CPU build of torch does not ship")

# relative-norm error bounds of a kernel's output against the float64 recurrence / reference
REL = {torch.float32: 1e-5, torch.float16: 3e-3, torch.bfloat16: 2e-2}


def fresh_seed() -> int:
    """A new seed each run (or HYBRIDSCOPE_SEED), applied to torch; tests print it on failure."""
    s = int(os.environ.get("HYBRIDSCOPE_SEED", random.randrange(2**31)))
    torch.manual_seed(s)
    return s


def rel_err(out: torch.Tensor, truth: torch.Tensor) -> float:
    truth = truth.detach().cpu().double()
    return ((out.detach().cpu().double() - truth).norm() / truth.norm().clamp_min(1e-30)).item()


def run_under_triton_interpreter(test_file: str, seed: int) -> None:
    """Run `test_file`'s ``__main__`` (its kernel checks) in a subprocess with TRITON_INTERPRET=1,
    which must be set before the kernels are defined; asserts it passed, with its output."""
    env = {**os.environ, "TRITON_INTERPRET": "1", "HYBRIDSCOPE_SEED": str(seed)}
    proc = subprocess.run([sys.executable, test_file], check=False, env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, f"seed={seed}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
