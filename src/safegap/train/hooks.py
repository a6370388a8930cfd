"""The small hook through which regularisers join a training loss.

A training loop (the organism's stages 2 and 3, or ``safegap.train``) builds a
:class:`LossContext` after each forward pass that was run with ``output_hidden_states=True`` and
adds ``weight * term(ctx)`` for each registered :class:`ExtraLoss`. ReGap and TGA are such terms.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch


@dataclass
class LossContext:
    """What a regulariser may look at for one training step.

    ``hidden_states[i]`` is the output of decoder layer ``i`` (the residual stream, final norm
    *not* applied; HF's ``output_hidden_states`` entry ``i + 1`` for every layer but the last),
    shape ``(batch, seq, hidden)``; ``image_mask`` and ``text_mask`` mark image
    and text (non-padding) tokens; ``batch`` holds whatever else the data provides (for TGA: the
    caption inputs).
    """

    model: Any
    batch: Mapping[str, Any]
    hidden_states: list[torch.Tensor]
    image_mask: torch.Tensor
    text_mask: torch.Tensor
    step: int
    lm_loss: torch.Tensor
    extras: dict[str, Any] = field(default_factory=dict)


class ExtraLoss(Protocol):
    """A loss term: returns a scalar tensor and may log values into ``ctx.extras``."""

    name: str

    def __call__(self, ctx: LossContext) -> torch.Tensor: ...
