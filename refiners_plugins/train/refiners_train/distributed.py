"""Data-parallel processes through torch.distributed: joining a group started by ``torchrun``, or starting one.

Gradients are averaged by :class:`torch.nn.parallel.DistributedDataParallel` (see :mod:`refiners_train.trainer`);
this module only sets up the process group: ``gloo`` on CPU, ``nccl`` on CUDA.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

__all__ = ["ProcessGroup", "free_port", "join_group", "leave_group", "spawn"]


@dataclass(frozen=True)
class ProcessGroup:
    """This process's place: ``rank`` among ``world_size`` processes, ``local_rank`` on its machine."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Whether this process writes files and draws progress (rank 0)."""
        return self.rank == 0


def _environment_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def join_group(device: torch.device) -> ProcessGroup:
    """Join the process group the environment describes (``torchrun`` or :func:`spawn` set ``RANK``,
    ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``); a lone process gets rank 0 of 1."""
    world_size = _environment_size()
    if world_size <= 1:
        return ProcessGroup()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(device)
        dist.init_process_group(backend=backend, rank=rank, world_size=world_size)
    return ProcessGroup(rank, world_size, local_rank)


def leave_group() -> None:
    """Destroy the process group, if any."""
    if dist.is_initialized():
        dist.destroy_process_group()


def free_port() -> int:
    """A TCP port free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


def _child(rank: int, world_size: int, port: int, target: Callable[[Any], None], argument: Any) -> None:
    os.environ.update(
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world_size),
    )
    if "OMP_NUM_THREADS" not in os.environ:  # as torchrun does: processes must not fight over the cores
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // world_size))
    target(argument)


def spawn(num_processes: int, target: Callable[[Any], None], argument: Any) -> None:
    """Run ``target(argument)`` in ``num_processes`` new processes forming one group on this machine.

    ``target`` must be a module-level function and ``argument`` picklable. An exception in a child is
    raised here (``torch.multiprocessing.ProcessRaisedException``).
    """
    import torch.multiprocessing as mp

    mp.spawn(_child, args=(num_processes, free_port(), target, argument), nprocs=num_processes, join=True)
