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
from typing import Any, Protocol


class ProcessGroup(Protocol):
    rank: int
    world_size: int

    @property
    def is_main(self) -> bool: ...

    @property
    def device(self) -> Any: ...

    def barrier(self) -> None: ...


class AccelerateGroup:
    """This process's place in the run, as ``accelerate.PartialState`` knows it (one process when
    nothing launched several: no launcher needed). ``device`` is None for a lone process, so the
    eval config's device (CPU by default) decides, as in a plain single-process run."""

    def __init__(self) -> None:
        import torch
        from accelerate import PartialState

        # Without CUDA, accelerate only forms a multi-process group when asked for CPU explicitly.
        use_cpu = os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true")
        self._state = PartialState(cpu=use_cpu or not torch.cuda.is_available())
        self.rank = int(self._state.process_index)
        self.world_size = int(self._state.num_processes)

    @property
    def is_main(self) -> bool:
        return bool(self._state.is_main_process)

    @property
    def device(self) -> Any:
        return self._state.device if self.world_size > 1 else None

    def barrier(self) -> None:
        self._state.wait_for_everyone()


def current_group() -> ProcessGroup:
    """The process group accelerate sees (several under ``accelerate launch`` / ``torchrun``)."""
    return AccelerateGroup()
