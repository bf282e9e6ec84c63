"""torchrun integration: one process per device, DistributedDataParallel, rank 0 writes.

Started plainly, everything runs in one process; started by ``torchrun --nproc_per_node N``, the
environment variables it sets (RANK, WORLD_SIZE, LOCAL_RANK) switch on the process group (NCCL on GPUs,
gloo on the CPU).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from medtextseg.utils.errors import MedTextSegError

T = TypeVar("T")


@dataclass(frozen=True)
class DistributedContext:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def from_main(self, values: list[float]) -> list[float]:
        """Rank 0's ``values`` on every rank (what it decided after validating alone)."""
        if not self.enabled:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.broadcast(tensor, src=0)
        return tensor.tolist()

    def mean(self, value: float) -> float:
        """The mean of a float over all ranks."""
        if not self.enabled:
            return value
        tensor = torch.tensor([value], dtype=torch.float64, device=self.device)
        dist.all_reduce(tensor)
        return float(tensor.item()) / self.world_size


def init_distributed() -> DistributedContext:
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return DistributedContext(rank, world_size, local_rank, device)


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def decided_by_rank_0(step: Callable[[], T]) -> T:
    """Run ``step``, a check whose outcome rank 0 decides (taking the run folder's lock: only rank 0 takes it),
    and under torchrun let every rank share that outcome: when rank 0's step raises a ``MedTextSegError``,
    every rank raises it at once, instead of the others waiting for rank 0 in the process group until its
    timeout (half an hour). Without torchrun, just ``step()``.
    """
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return step()
    try:
        result, error = step(), None
    except MedTextSegError as raised:
        result, error = None, raised
    init_distributed()
    outcome = [str(error) if error is not None else None]
    dist.broadcast_object_list(outcome, src=0)
    if outcome[0] is not None or error is not None:
        shutdown_distributed()
        raise error if error is not None else MedTextSegError(outcome[0])
    return result
