"""Which process am I? One process, or one of several under ``accelerate launch``.

Launch several with ``accelerate launch --multi_gpu --num_processes N`` (GPUs, or CPU processes
with gloo on a machine without CUDA) or ``torchrun``. Note that ``accelerate launch --cpu
--num_processes N`` starts a *single* process unless an MPI host file is given.

The harness shards whole batches across processes (batch ``g`` goes to process ``g % world``);
each process appends to its own JSONL and the main process merges after a barrier. A batch is
generated identically whichever process runs it, so the merged result equals a one-process run.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Protocol


class ProcessGroup(Protocol):
    rank: int
    world_size: int

    @property
    def is_main(self) -> bool: ...

    @property
    def device(self) -> Any: ...

    def barrier(self) -> None: ...


@dataclass
class SingleProcess:
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> Any:
        return None

    def barrier(self) -> None:
        return None


class AccelerateGroup:
    """``accelerate.PartialState`` semantics: ranks, the process's device and a barrier."""

    def __init__(self) -> None:
        import torch
        from accelerate import PartialState

        # Without CUDA, accelerate only forms a multi-process group when asked for CPU explicitly.
        cpu = not torch.cuda.is_available() or os.environ.get("ACCELERATE_USE_CPU", "").lower() in (
            "1",
            "true",
        )
        self._state = PartialState(cpu=cpu)
        self.rank = int(self._state.process_index)
        self.world_size = int(self._state.num_processes)

    @property
    def is_main(self) -> bool:
        return bool(self._state.is_main_process)

    @property
    def device(self) -> Any:
        return self._state.device

    def barrier(self) -> None:
        self._state.wait_for_everyone()


def launched_with_several_processes() -> bool:
    """``torchrun`` / ``accelerate launch --multi_gpu`` set WORLD_SIZE; MPI launchers their own."""
    names = ("WORLD_SIZE", "PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "MV2_COMM_WORLD_SIZE")
    return any(int(os.environ.get(name, "1") or "1") > 1 for name in names)


def current_group() -> ProcessGroup:
    """The accelerate group when launched with several processes, else a single process."""
    return AccelerateGroup() if launched_with_several_processes() else SingleProcess()
