"""Expert parallelism, applied to a built model (gpt-fast ``tp.py`` style): each rank keeps E / world
experts of every MoE layer and swaps the MoE's dispatcher for an all-to-all one.

Every rank runs the whole non-expert model on its own tokens (data-parallel attention and Mamba);
per MoE layer the (token, expert) rows travel to the rank owning the expert and back, with
``torch.distributed.all_to_all_single`` (NCCL on GPU, gloo on CPU), in the modules
``moe.dispatcher.dispatch`` and ``moe.dispatcher.combine`` (so forward hooks time the token
movement apart from the experts). Split sizes need one host sync per layer, so CUDA graphs are off
under EP. After each call the dispatcher records its traffic: ``last_send_counts[r]`` rows sent to
rank r, ``last_recv_counts[r]`` rows received from rank r (bytes = rows * d_model * element size),
from which a rank x rank traffic matrix follows.

Run under torchrun: ``torchrun --nproc-per-node 2 -m hybridscope.engine.bench --ep --preset tiny``.
"""

from __future__ import annotations

import os

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

    def forward(self, xp: torch.Tensor, kept: torch.Tensor):
        """xp [T*k, d] rows sorted by global expert (kept rows first); kept [E] rows per expert.
        Returns (rows for the local experts sorted by local expert, offs [E_local] int32, ctx)."""
        send_e = kept.view(self.world, self.n_local).contiguous()  # [dest rank, its local expert]
        recv_e = torch.empty_like(send_e)  # [source rank, my local expert]
        dist.all_to_all_single(recv_e, send_e, group=self.group)
        send, recv = send_e.sum(1).tolist(), recv_e.sum(1).tolist()  # the host sync EP needs
        xin = xp.new_empty(sum(recv), xp.shape[1])
        dist.all_to_all_single(xin, xp[: sum(send)].contiguous(), recv, send, group=self.group)
        local = torch.arange(self.n_local, device=xp.device).repeat(self.world)
        perm = torch.argsort(torch.repeat_interleave(local, recv_e.flatten()), stable=True)
        offs = torch.cumsum(recv_e.sum(0), 0).to(torch.int32)
        self.last_send_counts, self.last_recv_counts = send, recv
        return xin[perm], offs, (perm, send, recv, xp.shape[0])


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

    def __init__(self, group, world: int, n_local: int):
        super().__init__()
        self.group, self.world = group, world
        self.dispatch = AllToAllDispatch(group, world, n_local)
        self.combine = AllToAllCombine(group)

    @property
    def last_send_counts(self) -> list[int]:
        return self.dispatch.last_send_counts

    @property
    def last_recv_counts(self) -> list[int]:
        return self.dispatch.last_recv_counts

    def forward(self, *args):  # the two phases are called apart, as dispatch() and combine()
        raise RuntimeError("call .dispatch(...) and .combine(...), not the dispatcher itself")


def apply_ep(model: HybridModel, group=None) -> HybridModel:
    """Shard every MoE's experts over the ranks of ``group`` (default: the world) and install the
    all-to-all dispatcher. The model must be identical on all ranks (same config and seed)."""
    world, rank = dist.get_world_size(group), dist.get_rank(group)
    for moe in (m for m in model.modules() if isinstance(m, MoE)):
        if moe.n_experts % world:
            raise ValueError(f"n_experts={moe.n_experts} does not split over {world} ranks")
        n_local = moe.n_experts // world
        moe.experts.shard(rank * n_local, n_local)
        moe.dispatcher = AllToAllDispatcher(group, world, n_local)
    return model


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
