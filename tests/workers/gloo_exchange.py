"""A two-rank gloo workload for tests/test_analyze_collectives_gloo.py, run under torchrun.

A toy MoE layer whose rank 1 computes 100 ms longer before each all-to-all, captured in `kernels`
mode by each rank into its own store (`DB` gets a `.rank<r>` suffix under torchrun)."""

import sys
import time

import torch
import torch.distributed as dist
from torch import nn

import hybridscope

DELAY_S = 0.1  # large against scheduling noise on a loaded 2-core machine


class Exchange(nn.Module):
    def __init__(self, rank: int):
        super().__init__()
        self.rank = rank

    def forward(self, x):
        if self.rank == 1:
            time.sleep(DELAY_S)  # the straggler's extra work
        out = torch.empty_like(x)
        dist.all_to_all_single(out, x)
        return out


class ToyMoEModel(nn.Module):
    def __init__(self, rank: int):
        super().__init__()
        self.moe = Exchange(rank)

    def forward(self, x):
        return self.moe(x)


def main(db: str, steps: int) -> None:
    dist.init_process_group("gloo")
    model = ToyMoEModel(dist.get_rank())
    x = torch.ones(8, 4)
    model(x)  # one exchange before capture: both ranks are up, so the first captured step is steady
    with hybridscope.capture(db=db, model=model, mode="kernels", sample_every=1, quiet=True):
        for _ in range(steps):
            model(x)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
