"""Expert parallelism, applied to a built model (gpt-fast ``tp.py`` style): each rank keeps E / world
experts of every MoE layer and swaps the MoE's dispatcher for an all-to-all one.

Every rank runs the whole non-expert model on its own tokens (data-parallel attention and Mamba);
per MoE layer the (token, expert) rows travel to the rank owning the expert and back, with
``torch.distributed.all_to_all_single`` (NCCL on GPU, gloo on CPU), in the modules
``moe.dispatcher.dispatch`` and ``moe.dispatcher.combine`` (so forward hooks time the token
movement apart from the experts). Split sizes need one host sync per layer, so CUDA graphs are off
under EP. After each call the dispatcher records its traffic: ``last_send_counts[r]`` rows sent to
rank r, ``last_recv_counts[r]`` rows received from rank r (bytes = rows * d_model * element size),
from which a rank x rank traffic matrix follows. ``EngineConfig.a2a_separate_streams`` gives the
all-to-alls that could queue behind each other communicators (so streams) of their own (``apply_ep``).

Run under torchrun: ``torchrun --nproc-per-node 2 -m hybridscope.engine.bench --ep --preset tiny``.
"""

from __future__ import annotations

import os
from typing import NamedTuple

import torch
import torch.distributed as dist
from torch import nn

from .model import HybridModel
from .moe import MoE


class AllToAllDispatch(nn.Module):
    """The dispatch all-to-all of one MoE layer: a module of its own so that forward hooks (and so a
    profiler's layer timing) see the token movement apart from the expert compute."""

    def __init__(self, group, world: int, n_local: int):
        super().__init__()
        self.group, self.world, self.n_local = group, world, n_local
        self.last_send_counts: list[int] = []  # rows sent to each rank by the last call
        self.last_recv_counts: list[int] = []  # rows received from each rank by the last call

    def forward(self, xp: torch.Tensor, kept: torch.Tensor, overlap: bool = False):
        """xp [T*k, d] rows sorted by global expert (kept rows first); kept [E] rows per expert.
        Returns (rows for the local experts sorted by local expert, offs [E_local] int32, ctx).
        With ``overlap`` the rows' all-to-all is left in flight: the first item is a ``Pending``
        that ``AllToAllWait`` completes, so the caller can compute in between."""
        send_e = kept.view(self.world, self.n_local).contiguous()  # [dest rank, its local expert]
        recv_e = torch.empty_like(send_e)  # [source rank, my local expert]
        dist.all_to_all_single(recv_e, send_e, group=self.group)
        send, recv = send_e.sum(1).tolist(), recv_e.sum(1).tolist()  # the host sync EP needs
        xin = xp.new_empty(sum(recv), xp.shape[1])
        work = dist.all_to_all_single(xin, xp[: sum(send)].contiguous(), recv, send, group=self.group,
                                      async_op=overlap)
        local = torch.arange(self.n_local, device=xp.device).repeat(self.world)
        perm = torch.argsort(torch.repeat_interleave(local, recv_e.flatten()), stable=True)
        offs = torch.cumsum(recv_e.sum(0), 0).to(torch.int32)
        self.last_send_counts, self.last_recv_counts = send, recv
        rows = Pending(work, xin, perm) if overlap else xin[perm]
        return rows, offs, (perm, send, recv, xp.shape[0])


class Pending(NamedTuple):
    """A dispatch all-to-all in flight: its work handle, the receive buffer, the local sort."""

    work: object
    xin: torch.Tensor
    perm: torch.Tensor


class AllToAllWait(nn.Module):
    """The end of an overlapped dispatch: waits for the rows (the transfer time not hidden behind
    the compute in between) and sorts them by local expert. A module of its own so that its wait is
    timed as MoE communication (moe_comm), not charged to the compute it overlapped."""

    def forward(self, pending: Pending) -> torch.Tensor:
        pending.work.wait()
        return pending.xin[pending.perm]


class AllToAllCombine(nn.Module):
    """The combine all-to-all of one MoE layer (see AllToAllDispatch)."""

    def __init__(self, group):
        super().__init__()
        self.group = group

    def forward(self, y: torch.Tensor, ctx) -> torch.Tensor:
        """Expert outputs [rows received, d] -> this rank's sorted rows [T*k, d] (dropped rows 0)."""
        perm, send, recv, n_rows = ctx
        arrived = torch.empty_like(y)
        arrived[perm] = y  # back to arrival order (by source rank)
        out = y.new_zeros(n_rows, y.shape[1])
        dist.all_to_all_single(out[: sum(send)], arrived, send, recv, group=self.group)
        return out


class AllToAllDispatcher(nn.Module):
    """Dispatch sorted rows to the ranks owning their experts; combine brings results back in place.
    Registered as ``moe.dispatcher``, so its ``dispatch`` / ``combine`` submodules sit at
    ``layers.{i}.moe.dispatcher.dispatch`` / ``.combine``; the last call's traffic is kept in
    ``last_send_counts[r]`` / ``last_recv_counts[r]`` (rows to / from rank r)."""

    needs_host_sync = True

    def __init__(self, group, world: int, n_local: int, combine_group=None, overlap: bool = False):
        super().__init__()
        self.group, self.world = group, world
        self.overlap = overlap  # the dispatch all-to-all stays in flight while the shared expert runs
        self.dispatch = AllToAllDispatch(group, world, n_local)
        self.wait = AllToAllWait()
        self.combine = AllToAllCombine(group if combine_group is None else combine_group)

    @property
    def last_send_counts(self) -> list[int]:
        return self.dispatch.last_send_counts

    @property
    def last_recv_counts(self) -> list[int]:
        return self.dispatch.last_recv_counts

    def forward(self, *args):  # the two phases are called apart, as dispatch() and combine()
        raise RuntimeError("call .dispatch(...) and .combine(...), not the dispatcher itself")


def apply_ep(model: HybridModel, group=None, separate_streams: bool | None = None) -> HybridModel:
    """Shard every MoE's experts over the ranks of ``group`` (default: the world) and install the
    all-to-all dispatcher. The model must be identical on all ranks (same config and seed).

    ``separate_streams`` (default ``model.cfg.a2a_separate_streams``): the fix for all-to-alls queued
    behind each other. Every collective of one communicator runs on that communicator's stream (one
    NCCL stream per process group and device), so with one group the dispatch and combine of a layer,
    and the all-to-alls of consecutive MoE layers, all queue on one stream. With the fix, four
    communicators over the same ranks: dispatch and combine of even-numbered MoE layers, dispatch and
    combine of odd-numbered ones; no two all-to-alls that can be in flight together share one. And
    compute overlaps the transfer where the data allows: the dispatch's rows stay in flight while
    the layer's shared expert (which needs none of them) runs; ``AllToAllWait`` then waits for the
    rest (timed as moe_comm)."""
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    if separate_streams is None:
        separate_streams = bool(getattr(getattr(model, "cfg", None), "a2a_separate_streams", False))
    groups = comm_groups(group, separate_streams)
    for i, moe in enumerate(m for m in model.modules() if isinstance(m, MoE)):
        if moe.n_experts % world:
            raise ValueError(f"n_experts={moe.n_experts} does not split over {world} ranks")
        n_local = moe.n_experts // world
        moe.experts.shard(rank * n_local, n_local)
        dispatch_group, combine_group = groups[i % len(groups)]
        moe.dispatcher = AllToAllDispatcher(dispatch_group, world, n_local, combine_group=combine_group,
                                            overlap=separate_streams and moe.shared is not None)
    return model


def comm_groups(group, separate: bool) -> list[tuple]:
    """[(dispatch group, combine group)] to cycle over consecutive MoE layers: the one group twice, or
    four communicators over ``group``'s ranks (created collectively: every rank calls this alike)."""
    if not separate:
        return [(group, group)]
    ranks = dist.get_process_group_ranks(group) if group is not None else list(range(dist.get_world_size()))
    made = [dist.new_group(ranks) for _ in range(4)]
    return [(made[0], made[1]), (made[2], made[3])]


def init_from_env(device: str = "cpu") -> tuple[int, int]:
    """Join the process group torchrun describes (NCCL for CUDA, gloo for CPU); return (rank, world)."""
    if not dist.is_initialized():
        backend = "nccl" if device.startswith("cuda") else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        dist.init_process_group(backend)
    return dist.get_rank(), dist.get_world_size()


def traffic_matrix(model: HybridModel) -> list[list[int]]:
    """Rows this rank sent to each rank in the last step, per MoE layer: [layer][dest rank]."""
    return [m.dispatcher.last_send_counts for m in model.modules() if isinstance(m, MoE)]
