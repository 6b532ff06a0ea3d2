"""Explicit backend choice for the Mamba2 kernels: 'triton' or 'torch', logged once per op and choice.

The rule: Triton when the input is on CUDA and triton imports, else the plain-PyTorch reference.
A caller may force either with ``backend=``. Forcing 'triton' on a CPU tensor is refused unless
``TRITON_INTERPRET=1`` (Triton's CPU interpreter, for debugging kernel logic without a GPU).
Nothing falls back silently: the choice and its reason go to ``logging.getLogger('hybridscope.engine')``.
"""

from __future__ import annotations

import functools
import logging
import os

import torch

log = logging.getLogger("hybridscope.engine")

BACKENDS = ("triton", "torch")
_announced: set[tuple[str, str, str]] = set()


@functools.lru_cache(maxsize=1)
def triton_status() -> tuple[bool, str]:
    """(importable, version-or-reason) for triton, probed once per process."""
    try:
        import triton
    except ImportError as exc:  # recorded and logged by select_backend, never swallowed
        return False, f"triton not importable ({exc})"
    return True, f"triton {triton.__version__}"


def _interpret() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def select_backend(op: str, x: torch.Tensor, backend: str | None) -> str:
    """Return 'triton' or 'torch' for ``op`` applied to tensor ``x``; log the choice once."""
    ok, detail = triton_status()
    if backend is not None:
        if backend not in BACKENDS:
            raise ValueError(f"{op}: backend must be one of {BACKENDS}, got {backend!r}")
        if backend == "triton":
            if not ok:
                raise RuntimeError(f"{op}: backend='triton' requested but {detail}")
            if not x.is_cuda and not _interpret():
                raise RuntimeError(f"{op}: backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1)")
        choice, reason = backend, "requested"
    elif x.is_cuda and ok:
        choice, reason = "triton", detail
    elif x.is_cuda:
        choice, reason = "torch", f"CUDA input but {detail}"
    else:
        choice, reason = "torch", f"{x.device.type} input"
    key = (op, choice, reason)
    if key not in _announced:
        _announced.add(key)
        log.info("%s: backend=%s (%s)", op, choice, reason)
    return choice
