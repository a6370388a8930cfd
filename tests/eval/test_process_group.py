"""The eval process group is accelerate's PartialState; with no launcher it is this process alone."""

from __future__ import annotations

import torch.distributed as dist

from safegap.eval.distributed import current_group


def test_no_launcher_is_one_process_on_the_configs_device() -> None:
    group = current_group()
    assert (group.rank, group.world_size, group.is_main) == (0, 1, True)
    assert group.device is None  # the eval config's device decides (CPU by default)
    group.barrier()  # a no-op that must not need a process group
    assert not (dist.is_available() and dist.is_initialized())
