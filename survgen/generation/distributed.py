"""`survgen generate` in many processes: `torchrun` or `accelerate launch` start one per GPU (or CPU share).

The processes share a class's candidate batches, a round of one batch each at a time.
After each round they exchange the new records, so that every process knows every
verdict, keeps the same candidates and stops at the same batch; rank 0 writes the merged
manifest. `World` is that exchange; in one process (no launcher) it returns its own
input and waits for no one, so `generate` has a single code path.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass

LAUNCHER_VARIABLES = ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")  # with WORLD_SIZE, set by both launchers


def launched_rank() -> int:
    """This process's rank as the launcher set it, 0 without one: for what only rank 0 prints or checks, known
    before any process group exists."""
    return int(os.environ.get("RANK", "0"))


class OtherProcessStopped(ValueError):
    """An exchange failed because another process of the run stopped, whose own error is the cause; a ValueError
    so that the command prints it as a message, not as a survgen bug."""


@dataclass(frozen=True)
class World:
    """The processes of one generation: this one's rank among `size`."""

    rank: int = 0
    size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def gather(self, obj) -> list:
        """Every process's `obj`, in rank order, on every process."""
        if self.size == 1:
            return [obj]
        gathered = [None] * self.size
        self._together(lambda dist: dist.all_gather_object(gathered, obj))
        return gathered

    def share(self, obj):
        """Rank 0's `obj` on every process."""
        if self.size == 1:
            return obj
        box = [obj]
        self._together(lambda dist: dist.broadcast_object_list(box, src=0))
        return box[0]

    def barrier(self) -> None:
        if self.size > 1:
            self._together(lambda dist: dist.barrier())

    def _together(self, exchange) -> None:
        import torch.distributed as dist

        try:
            exchange(dist)
        except RuntimeError as e:  # how gloo and NCCL report a process that is gone
            raise OtherProcessStopped(f"process {self.rank} of {self.size}: another process of this run stopped, "
                                      "so this one stops too; that one's error says why") from e


@contextlib.contextmanager
def joined() -> Iterator[World]:
    """This process's World: the caller's process group if there is one; else, when a launcher started several
    processes (WORLD_SIZE > 1), a group started here (NCCL on this process's GPU, LOCAL_RANK, when there is
    CUDA; gloo on CPU) and ended on the way out; else one process."""
    import torch
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        yield World(dist.get_rank(), dist.get_world_size())
        return
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        yield World()
        return
    missing = [name for name in LAUNCHER_VARIABLES if name not in os.environ]
    if missing:
        raise ValueError(f"WORLD_SIZE is {os.environ['WORLD_SIZE']} but {', '.join(missing)} not set; start the "
                         "processes with torchrun or accelerate launch, or unset WORLD_SIZE for one process")
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))  # "cuda" is then this process's GPU
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    try:
        yield World(dist.get_rank(), dist.get_world_size())
    finally:
        dist.destroy_process_group()
