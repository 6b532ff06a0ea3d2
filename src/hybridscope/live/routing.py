"""MoE routing: tokens per expert, per MoE layer and step, from the router's top-k output.

The router's post hook hands its output here. The expert ids are the first integer tensor in
it (HF routers return `(logits, weights, ids)`, the project's engine returns ids among its
outputs). Counting happens on the ids' device with `scatter_add_` into `n_experts + 2` bins --
never `torch.bincount`, whose CUDA version reads the maximum back to the host (a sync) -- the
first and last bins collecting ids outside [0, n_experts), so that a wrong expert count cannot trip
a device assert inside the user's model. Counts stay on the device and are copied back a block of
rows at a time (non-blocking, into pinned memory, read once their copy event has completed), and
at flush.
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


def expert_ids(spec, output):
    """The expert ids of a router's output (`topk_ids`); ValueError when it holds none."""
    ids = topk_ids(output)
    if ids is None:
        raise ValueError(f"router {spec.path} returned no integer tensor of expert ids")
    return ids


def _width(n_experts: int) -> int:
    """The bins of a router's row: ids below 0, each expert, ids from n_experts up."""
    return n_experts + 2


class Routing:
    """Bounded store of per-(step, layer) expert counts; see the module docstring.

    Counts go into rows of preallocated device blocks (one block per (device, width), `batch`
    rows, zeroed once), so a router call costs three small kernels: clamp, shift, scatter-add.
    Row layout for n experts: [ids < 0, expert 0, ..., expert n-1, ids >= n]. A full block is
    copied back whole."""

    def __init__(self, capacity: int, batch: int = 1024):
        import torch

        self.torch = torch
        self.capacity = capacity
        self.batch = batch
        self.blocks: dict[tuple, tuple[object, list]] = {}  # (device, width) -> (rows, keys)
        self.ones: dict[tuple, object] = {}                 # (device, numel) -> ones
        self.shifts: dict[tuple, object] = {}               # (device, rows, width) -> first bin per row
        self.copies: list[tuple[list, object, object]] = []  # (keys, host tensor, event or None)
        self.done: list[tuple[np.ndarray, ...]] = []         # (step, layer, expert, tokens)
        self.n_rows = 0
        self.drops = 0
        self.out_of_range = 0
        self.unknown: set[str] = set()

    def known(self, spec) -> bool:
        """Whether the router's expert count is known; an unknown one is noted (`unknown`)."""
        if spec.n_experts is None:
            self.unknown.add(spec.path)
            return False
        return True

    def add(self, step: int, spec, output) -> None:
        if not self.known(spec):
            return
        if self.n_rows >= self.capacity:
            self.drops += 1
            return
        ids = expert_ids(spec, output)
        torch, n = self.torch, spec.n_experts
        flat = ids.reshape(-1)
        bins = torch.clamp(flat, -1, n).add_(1)  # never an index outside the row
        if bins.dtype != torch.int64:
            bins = bins.long()
        row = self._row(flat.device, _width(n), (step, -1 if spec.layer_index is None else spec.layer_index))
        row.scatter_add_(0, bins, self._ones(flat.device, bins.numel()))
        self.n_rows += 1

    def prewarm(self, device, n_experts) -> None:
        """Device blocks for routers of these expert counts now (at arm), not in the first routed
        step: a first allocation there can wait on the device, and that router's layer span would
        carry the wait (the first MoE layer of an eager prefill read 11 % above its kernels on an
        H200; with the blocks allocated here it is within the test's 10 %, H200 2026-12-05 05:50 UTC)."""
        for width in sorted({_width(n) for n in n_experts}):
            if (device, width) not in self.blocks:
                self._new_block(device, width, self.batch)

    def add_held(self, step: int, held: list) -> None:
        """The routers of one CUDA-graph replay (live.graphs): `held` = [(spec, ids)], the expert
        ids each router returned when the graph was captured, whose memory the replay has just
        rewritten. Counted with a few kernels for all routers of one expert count (queued after the
        replay on the current stream, before any later replay can rewrite them)."""
        torch = self.torch
        groups: dict[tuple, list] = {}
        for spec, ids in held:
            groups.setdefault((spec.n_experts, ids.numel(), ids.dtype, ids.device), []).append((spec, ids))
        for (n, _numel, _dtype, device), items in groups.items():
            if self.n_rows + len(items) > self.capacity:
                self.drops += len(items)
                continue
            keys = [(step, -1 if s.layer_index is None else s.layer_index) for s, _ in items]
            rows = self._rows(device, _width(n), keys)
            flat = torch.stack([ids.reshape(-1) for _, ids in items])  # [L, T*k]
            bins = torch.clamp(flat, -1, n).long().add_(self._shift(device, len(items), _width(n)))  # row l: l*(n+2) + 1 + id
            rows.view(-1).scatter_add_(0, bins.view(-1), self._ones(device, bins.numel()))
            self.n_rows += len(items)

    def _shift(self, device, n_rows: int, width: int):
        shift = self.shifts.get((device, n_rows, width))
        if shift is None:
            shift = self.shifts[(device, n_rows, width)] = (self.torch.arange(n_rows, device=device) * width + 1)[:, None]
        return shift

    def _row(self, device, width: int, key: tuple[int, int]):
        return self._rows(device, width, [key])[0]

    def _rows(self, device, width: int, keys: list):
        """Rows of a device block for `keys` (consecutive: one view)."""
        block = self.blocks.get((device, width))
        if block is None or len(block[1]) + len(keys) > block[0].shape[0]:
            if block is not None and block[1]:
                self._copy(*block)
            block = self._new_block(device, width, max(self.batch, len(keys)))
        rows, have = block
        first = len(have)
        have.extend(keys)
        return rows[first:first + len(keys)]

    def _new_block(self, device, width: int, n_rows: int) -> tuple:
        block = self.blocks[(device, width)] = (self.torch.zeros(n_rows, width, dtype=self.torch.int64, device=device), [])
        return block

    def _ones(self, device, numel: int):
        ones = self.ones.get((device, numel))
        if ones is None:
            ones = self.ones[(device, numel)] = self.torch.ones(numel, dtype=self.torch.int64, device=device)
        return ones

    def step_boundary(self, live: bool = False) -> None:
        """Collect copies that have landed. Never waits. `live` (observers want counts now): partly
        filled blocks are copied back too (non-blocking), to be collected once landed."""
        if live:
            for rows, keys in self.blocks.values():
                if keys:
                    self._copy(rows, keys)
            self.blocks = {}
        self._collect(final=False)

    def _copy(self, rows, keys) -> None:
        torch = self.torch
        used = rows[: len(keys)]
        if used.is_cuda:
            host = torch.empty(used.shape, dtype=used.dtype, pin_memory=True)
            host.copy_(used, non_blocking=True)
            event = torch.cuda.Event()
            event.record()
        else:
            host, event = used, None
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
            n = arr.shape[1] - 2
            self.out_of_range += int(arr[:, 0].sum() + arr[:, -1].sum())
            step, layer = (np.asarray(c, np.int64) for c in zip(*keys))
            k = len(keys)
            self.done.append((np.repeat(step, n), np.repeat(layer, n), np.tile(np.arange(n), k),
                              arr[:, 1:-1].reshape(-1)))
        self.copies = keep

    def columns(self, rank: int) -> dict[str, np.ndarray]:
        """All counts as `routing` columns (step, layer_index, expert, tokens); waits for copies."""
        for rows, keys in self.blocks.values():
            if keys:
                self._copy(rows, keys)
        self.blocks = {}
        self._collect(final=True)
        if not self.done:
            return {}
        step, layer, expert, tokens = (np.concatenate(c) for c in zip(*self.done))
        return {"rank": np.full(len(step), rank, np.int32), "step": step.astype(np.int32),
                "layer_index": layer.astype(np.int32), "expert": expert.astype(np.int32),
                "tokens": tokens.astype(np.int64)}
