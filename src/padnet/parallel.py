"""This process's place in a data-parallel run, as core code (mode partition) needs it.

[`current`][padnet.parallel.current] reads an initialised `torch.distributed` process group and gives one process on the CPU
without one; [`padnet.training.distributed`][padnet.training.distributed] joins the group for `torchrun` runs.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class Context:
    """This process's place in the run: `rank` ∈ [0, `world_size`), and its `device`."""

    rank: int = 0
    world_size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    @property
    def main(self) -> bool:
        """True on the process that writes files and shows progress (rank 0)."""
        return self.rank == 0

    def shard(self, tensor: torch.Tensor) -> torch.Tensor:
        """This process's chunk of a global batch along dim 0 (sizes differ by at most one), on its device."""
        chunk = tensor.tensor_split(self.world_size)[self.rank] if self.world_size > 1 else tensor
        return chunk.to(self.device)

    def all_reduce_(self, tensors: list[torch.Tensor]) -> None:
        """Sum each tensor over all processes, in place (one collective for the lot)."""
        if self.world_size == 1 or not tensors:
            return
        flat = torch.cat([t.reshape(-1).to(self.device) for t in tensors])
        dist.all_reduce(flat)
        for t, part in zip(tensors, flat.split([t.numel() for t in tensors])):
            t.copy_(part.view_as(t))

    def barrier(self) -> None:
        if self.world_size > 1:
            dist.barrier()


def current() -> Context:
    """The context of an initialised process group (partitioning uses it), else one process on the CPU. Its
    device is the one the group's backend reduces on: this process's GPU for NCCL, else the CPU."""
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        nccl = dist.get_backend() == "nccl"
        device = torch.device("cuda", torch.cuda.current_device()) if nccl else torch.device("cpu")
        return Context(dist.get_rank(), dist.get_world_size(), device)
    return Context()
