"""MoE routing: tokens per expert, per MoE layer and step, from the router's top-k output.

The router's post hook hands its output here. The expert ids are the first integer tensor in
it (HF routers return `(logits, weights, ids)`, the project's engine returns ids among its
outputs). Counting happens on the ids' device with `scatter_add_` into `n_experts + 1` bins --
never `torch.bincount`, whose CUDA version reads the maximum back to the host (a sync) -- and the
last bin collects ids outside [0, n_experts) so that a wrong expert count cannot trip a device
assert inside the user's model. Counts stay on the device; they are stacked and copied back in
batches (non-blocking, into pinned memory, read once their copy event has completed), and at flush.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def topk_ids(output):
    """The first integer (non-bool) tensor in a module output: tensor, tuple/list, dict or dataclass."""
    import torch

    stack = [output]
    while stack:
        x = stack.pop(0)
        if isinstance(x, torch.Tensor):
            if not x.is_floating_point() and not x.is_complex() and x.dtype != torch.bool:
                return x
        elif isinstance(x, (tuple, list)):
            stack.extend(x)
        elif isinstance(x, Mapping):
            stack.extend(x.values())
        elif hasattr(x, "__dataclass_fields__"):
            stack.extend(getattr(x, f) for f in x.__dataclass_fields__)
    return None


class Routing:
    """Bounded store of per-(step, layer) expert counts; see the module docstring."""

    def __init__(self, capacity: int, batch: int = 4096):
        import torch

        self.torch = torch
        self.capacity = capacity
        self.batch = batch
        self.live: list[tuple[int, int, object]] = []   # (step, layer, counts on device)
        self.copies: list[tuple[list, object, object]] = []  # (keys, host tensor, event or None)
        self.done: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []  # (step, layer, counts)
        self.n_rows = 0
        self.drops = 0
        self.out_of_range = 0
        self.unknown: set[str] = set()

    def add(self, step: int, spec, output) -> None:
        if spec.n_experts is None:
            self.unknown.add(spec.path)
            return
        if self.n_rows >= self.capacity:
            self.drops += 1
            return
        ids = topk_ids(output)
        if ids is None:
            raise ValueError(f"router {spec.path} returned no integer tensor of expert ids")
        torch = self.torch
        flat = ids.reshape(-1).long()
        n = spec.n_experts
        flat = torch.where((flat >= 0) & (flat < n), flat, torch.full_like(flat, n))
        counts = torch.zeros(n + 1, dtype=torch.int64, device=flat.device)
        counts.scatter_add_(0, flat, torch.ones_like(flat))
        self.live.append((step, -1 if spec.layer_index is None else spec.layer_index, counts))
        self.n_rows += 1

    def step_boundary(self) -> None:
        """Start a copy back of a full batch; collect copies that have landed. Never waits."""
        if len(self.live) >= self.batch:
            self._copy(self.live)
            self.live = []
        self._collect(final=False)

    def _copy(self, items) -> None:
        torch = self.torch
        # counts of different routers may differ in length: pad to the widest
        width = max(c.numel() for _, _, c in items)
        stacked = torch.stack([torch.nn.functional.pad(c, (0, width - c.numel()), value=-1) for _, _, c in items])
        keys = [(s, layer, c.numel()) for s, layer, c in items]
        if stacked.is_cuda:
            host = torch.empty(stacked.shape, dtype=stacked.dtype, pin_memory=True)
            host.copy_(stacked, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
        else:
            host, event = stacked, None
        self.copies.append((keys, host, event))

    def _collect(self, final: bool) -> None:
        keep = []
        for keys, host, event in self.copies:
            if event is not None and not final and not event.query():
                keep.append((keys, host, event))
                continue
            if event is not None:
                event.synchronize()
            arr = host.numpy()
            for row, (step, layer, width) in enumerate(keys):
                counts = arr[row, :width]
                self.out_of_range += int(counts[-1])
                experts = np.arange(width - 1)
                self.done.append((np.full(width - 1, step), np.full(width - 1, layer), experts, counts[:-1]))
        self.copies = keep

    def columns(self, rank: int) -> dict[str, np.ndarray]:
        """All counts as `routing` columns (step, layer_index, expert, tokens); waits for copies."""
        if self.live:
            self._copy(self.live)
            self.live = []
        self._collect(final=True)
        if not self.done:
            return {}
        step, layer, expert, tokens = (np.concatenate(c) for c in zip(*self.done))
        return {"rank": np.full(len(step), rank, np.int32), "step": step.astype(np.int32),
                "layer_index": layer.astype(np.int32), "expert": expert.astype(np.int32),
                "tokens": tokens.astype(np.int64)}
