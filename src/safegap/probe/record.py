"""Record decoder-layer outputs (the residual stream) at chosen positions.

``record`` hooks only the requested layers, keeps only the requested positions, and stops the
forward pass right after the deepest requested layer, so probing early layers of a large model
costs a fraction of a full forward. Hooks are removed on every path, errors included.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

import torch

from safegap.models.hooks import layer_hooks
from safegap.models.loading import VLM
from safegap.specs import Layers, resolve_layers

PositionName = Literal["last", "image", "text", "all"]
Positions = PositionName | torch.Tensor


class _StopForward(Exception):
    """Raised inside the deepest hook to end the forward pass early."""


@dataclass
class Recording:
    """Hidden states per layer.

    For ``positions="last"`` each ``states[layer]`` is ``(batch, hidden)``. For token sets
    (``"image"``, ``"text"``, ``"all"`` or a mask) it is ``(n_tokens, hidden)`` and ``row_index``
    says which batch row each token came from.
    """

    layers: list[int]
    positions: str
    states: dict[int, torch.Tensor] = field(default_factory=dict)
    row_index: torch.Tensor | None = None

    def stacked(self) -> torch.Tensor:
        """``(n_layers, ..., hidden)`` in the order of ``layers``."""
        return torch.stack([self.states[i] for i in self.layers])


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of each row's last real token (works for left and right padding)."""
    positions = torch.arange(attention_mask.shape[1], device=attention_mask.device)
    return (attention_mask.bool() * positions).amax(dim=1)


def position_mask(vlm: VLM, batch: Mapping[str, Any], positions: Positions) -> torch.Tensor | None:
    """Boolean ``(batch, seq)`` mask for token-set positions; ``None`` for ``"last"``."""
    input_ids = batch["input_ids"]
    attention = batch.get("attention_mask")
    valid = attention.bool() if attention is not None else torch.ones_like(input_ids, dtype=torch.bool)
    if isinstance(positions, torch.Tensor):
        if positions.shape != input_ids.shape:
            raise ValueError(
                f"position mask shape {tuple(positions.shape)} != input_ids {tuple(input_ids.shape)}"
            )
        return positions.bool() & valid
    if positions == "last":
        return None
    image = vlm.adapter.image_token_mask(input_ids)
    if positions == "image":
        return image & valid
    if positions == "text":
        return ~image & valid
    if positions == "all":
        return valid
    raise ValueError(f"positions must be 'last', 'image', 'text', 'all' or a bool mask, got {positions!r}")


@torch.inference_mode()
def record(
    vlm: VLM,
    batch: Mapping[str, Any],
    layers: Layers = "all",
    positions: Positions = "last",
    dtype: torch.dtype | None = torch.float32,
) -> Recording:
    """Run ``batch`` through ``vlm`` and return the decoder-layer outputs at ``positions``.

    ``dtype`` is the dtype of the stored states (``None`` keeps the model's).
    """
    wanted = resolve_layers(layers, vlm.adapter.num_layers)
    mask = position_mask(vlm, batch, positions)
    last = last_token_index(batch["attention_mask"]) if mask is None and "attention_mask" in batch else None
    name = positions if isinstance(positions, str) else "mask"
    rec = Recording(layers=wanted, positions=name)
    if mask is not None:
        rec.row_index = mask.nonzero()[:, 0].cpu()
    # A layer the model skips on this input (Mllama's cross-attention layers on text-only
    # batches) never fires; its output is its input, i.e. the output of the last layer that ran.
    source = {i: _last_run_layer(i, vlm.adapter.skipped_layers(batch)) for i in wanted}
    hooked = sorted(set(source.values()))
    deepest = hooked[-1]
    captured: dict[int, torch.Tensor] = {}

    def keep(index: int, hidden: torch.Tensor) -> None:
        if hidden.shape[1] != batch["input_ids"].shape[1]:
            raise RuntimeError(
                f"layer {index} output has sequence length {hidden.shape[1]}, "
                f"input has {batch['input_ids'].shape[1]}"
            )
        if mask is not None:
            picked = hidden[mask]
        elif last is not None:
            picked = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
        else:
            picked = hidden[:, -1]
        captured[index] = picked.detach().to(dtype or picked.dtype).cpu()
        if index == deepest:
            raise _StopForward

    hooks = layer_hooks(vlm.adapter.decoder_layers, lambda i, h: keep(i, h), hooked)
    with hooks, contextlib.suppress(_StopForward):
        vlm.model(**batch, use_cache=False)
    missing = sorted(set(hooked) - set(captured))
    if missing:
        raise RuntimeError(
            f"decoder layers {missing} did not run on this input (not in the adapter's skipped_layers)"
        )
    rec.states = {i: captured[j] if j == i else captured[j].clone() for i, j in source.items()}
    return rec


def _last_run_layer(index: int, skipped: frozenset[int]) -> int:
    """``index``, or the nearest earlier layer that runs when ``index`` is skipped."""
    ran = index
    while ran in skipped:
        ran -= 1
    if ran < 0:
        raise ValueError(f"decoder layer {index} and every layer before it are skipped on this input")
    return ran
