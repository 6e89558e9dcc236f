"""Several processes, one run: PyTorch's own torchrun launcher and DistributedDataParallel, nothing home-made.

``torchrun`` (``python -m torch.distributed.run``) starts one process per GPU (or several CPU processes) and sets
RANK, WORLD_SIZE and LOCAL_RANK; this module reads them, joins the process group and picks each process's device.
Without them the run is a single process and nothing here does anything.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Only this process writes files, draws samples and logs."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def join(device: str | None = None) -> tuple[World, torch.device]:
    """Join the process group torchrun describes (NCCL on CUDA, gloo on CPU); returns this process's place and
    device. A plain ``python -m vmix_train`` gets World() and the given (or best) device."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World(), torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and (device is None or device.startswith("cuda"))
    if use_cuda:
        chosen = torch.device("cuda", local_rank)
        torch.cuda.set_device(chosen)
    else:
        chosen = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return World(rank, size, local_rank), chosen


def leave() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def mean_across(value: float, world: World, device: torch.device) -> float:
    """The mean of a number over all processes (the logged loss is the whole global batch's)."""
    if not world.distributed:
        return value
    tensor = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return float(tensor.item()) / world.size


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()


def agree(value: int, world: World, device: torch.device) -> bool:
    """Whether every process holds the same ``value`` (e.g. the step it resumes from)."""
    if not world.distributed:
        return True
    low = torch.tensor([value], dtype=torch.int64, device=device)
    high = low.clone()
    dist.all_reduce(low, op=dist.ReduceOp.MIN)
    dist.all_reduce(high, op=dist.ReduceOp.MAX)
    return bool(low.item() == high.item())
