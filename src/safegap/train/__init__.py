"""Training with alignment regularisers: the trainer (``safegap train``), ReGap and TGA terms.

The regularisers plug into any loop through :mod:`safegap.train.hooks`; see ``docs/training.md``.
"""

from safegap.train.config import TrainConfig, TrainResult
from safegap.train.hooks import (
    ExtraLoss,
    LossContext,
    StatefulLoss,
    add_extra_losses,
    capture_hidden_states,
    token_masks,
)
from safegap.train.regap import ReGapLoss
from safegap.train.tga import TGALoss, caption_batch
from safegap.train.trainer import train

__all__ = [
    "ExtraLoss",
    "LossContext",
    "ReGapLoss",
    "StatefulLoss",
    "TGALoss",
    "TrainConfig",
    "TrainResult",
    "add_extra_losses",
    "caption_batch",
    "capture_hidden_states",
    "token_masks",
    "train",
]
