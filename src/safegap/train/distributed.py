"""Sums over all processes, with gradients, so every loss is a *global* quantity.

Every rank computes the same global value (a mean over all tokens or rows of the step's batch
on all processes). The backward of a differentiable all-reduce sums the gradients of all ranks,
which DDP then averages, so each rank's parameters receive exactly the gradient of the global
value: a run on N processes matches one process with an N-times larger batch. With one process
(or no process group) these are identity operations.
"""

from __future__ import annotations

import torch
import torch.distributed as dist


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def global_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over processes; differentiable (its backward sums the gradients of all ranks)."""
    if world_size() == 1:
        return tensor
    from torch.distributed.nn.functional import all_reduce

    return all_reduce(tensor.contiguous(), op=dist.ReduceOp.SUM)  # type: ignore[no-any-return]


@torch.no_grad()
def global_sum_detached(tensor: torch.Tensor) -> torch.Tensor:
    """Sum over processes of a tensor that needs no gradient (counts, norms for logging)."""
    out = tensor.detach().clone()
    if world_size() > 1:
        dist.all_reduce(out, op=dist.ReduceOp.SUM)
    return out


def masked_sum_count(states: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``(sum of states[mask] in float32, number of masked tokens)`` for ``(B, S, D)`` states."""
    weights = mask.to(torch.float32).unsqueeze(-1)
    total = (states.to(torch.float32) * weights).sum(dim=(0, 1))
    return total, mask.sum().to(torch.float32)


def global_masked_mean(states: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, float]:
    """Mean of ``states[mask]`` pooled over the batch on every process, and the global count.

    The mean is 0 (still attached to the graph) when no process has a masked token.
    """
    total, count = masked_sum_count(states, mask)
    total = global_sum(total)
    n = float(global_sum_detached(count).item())
    return total / max(n, 1.0), n
