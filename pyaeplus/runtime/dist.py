"""``torch.distributed`` as the upper layers use it: rank and world, the process group under
torchrun, the device collectives run on, contiguous shards of rows, all-gathers of objects and
tensors, and sums reduced over the ranks. Without an initialized process group every helper
answers for one process (rank 0 of 1) and communicates nothing.

Nothing here imports the rest of pyaeplus.
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["initialized", "rank_world", "setup", "destroy", "nccl", "comm_device", "shard", "local_rows",
           "all_gather_object", "all_gather_tensor", "all_reduce_sum", "any_rank", "barrier"]


def initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank_world() -> tuple[int, int]:
    """(rank, world size) of the process group, (0, 1) without one."""
    if initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def setup(device: str | torch.device) -> tuple[int, int, bool]:
    """(rank, world, we_initialized). Under torchrun (``WORLD_SIZE`` > 1) the process group is
    initialized here unless the caller did (NCCL for CUDA, gloo for CPU); the caller destroys
    it when ``we_initialized``."""
    if initialized():
        return dist.get_rank(), dist.get_world_size(), False
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and "RANK" in os.environ and dist.is_available():
        cuda = str(device).startswith("cuda") or (device == "auto" and torch.cuda.is_available())
        dist.init_process_group("nccl" if cuda else "gloo")
        return dist.get_rank(), dist.get_world_size(), True
    return 0, 1, False


def destroy() -> None:
    """Destroy the process group (the one :func:`setup` initialized)."""
    dist.destroy_process_group()


def nccl() -> bool:
    return initialized() and dist.get_backend() == "nccl"


def comm_device(device: torch.device | None = None) -> torch.device:
    """Where collective tensors live: NCCL reduces CUDA tensors only (``device`` when given, else
    the current CUDA device), gloo CPU tensors."""
    if nccl():
        if device is not None and device.type == "cuda":
            return device
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def shard(n: int, rank: int, world: int) -> tuple[int, int, int]:
    """(rows per rank, this rank's contiguous rows [lo, hi)) of ``n`` rows: ranks in order, the
    last ones shorter or empty."""
    per = -(-n // world)
    return per, min(n, rank * per), min(n, (rank + 1) * per)


def local_rows(n: int, rank: int, world: int) -> torch.Tensor:
    """This rank's rows of ``range(n)`` as int64 ids (``tensor_split``: sizes differ by at most one)."""
    return torch.tensor_split(torch.arange(n), world)[rank]


def all_gather_object(obj: Any, world: int | None = None) -> list[Any]:
    """Every rank's ``obj`` (picklable), in rank order; ``[obj]`` in one process."""
    world = rank_world()[1] if world is None else world
    if world == 1:
        return [obj]
    out: list[Any] = [None] * world
    dist.all_gather_object(out, obj)
    return out


def all_gather_tensor(t: torch.Tensor, device: torch.device | None = None) -> list[torch.Tensor]:
    """Every rank's ``t`` (same shape and dtype on every rank), in rank order, on the CPU."""
    if not initialized():
        return [t.cpu()]
    cdev = comm_device(device)
    parts = [torch.empty(t.shape, dtype=t.dtype, device=cdev) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, t.to(cdev))
    return [p.cpu() for p in parts]


def all_reduce_sum(values: list[float], device: torch.device | None = None) -> list[float]:
    """Element-wise sums over the ranks of ``values`` (float64; one collective)."""
    if not initialized() or dist.get_world_size() == 1:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=comm_device(device))
    dist.all_reduce(t)
    return t.tolist()


def any_rank(flag: bool, device: torch.device | None = None) -> bool:
    """Whether ``flag`` holds on any rank (every rank must call it)."""
    return all_reduce_sum([1.0 if flag else 0.0], device)[0] > 0


def barrier() -> None:
    if initialized() and dist.get_world_size() > 1:
        dist.barrier()
