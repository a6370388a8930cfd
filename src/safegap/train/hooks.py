"""The small hook through which regularisers join a training loss.

A training loop (the organism's stages 2 and 3, or ``safegap.train``) builds a
:class:`LossContext` after each forward pass and adds ``weight * term(ctx)`` for each registered
:class:`ExtraLoss` (``weight`` is the term's ``weight`` attribute, 1.0 if it has none). ReGap and
TGA are such terms; they return their *unweighted* value and carry ``weight`` (ReGap's λ, TGA's
weight). :func:`add_extra_losses` does exactly that sum.

The shortest correct loop body::

    with capture_hidden_states(adapter.decoder_layers) as cap:
        out = model(**model_inputs, use_cache=False)
    ctx = LossContext.from_capture(model, batch, cap, adapter, step=step, lm_loss=lm_loss)
    loss = add_extra_losses(ctx, terms)

Hidden states come from forward hooks on the decoder layers rather than from
``output_hidden_states``: HF's last entry has the final norm applied, and hooks give exactly the
residual stream of every layer (and the input embeddings after image splicing) at no extra cost.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from safegap.models.hooks import layer_hidden


@dataclass
class LossContext:
    """What a regulariser may look at for one training step.

    ``hidden_states[i]`` is the output of decoder layer ``i`` (the residual stream, final norm
    *not* applied; HF's ``output_hidden_states`` entry ``i + 1`` for every layer but the last),
    shape ``(batch, seq, hidden)``; ``image_mask`` and ``text_mask`` mark image
    and text (non-padding) tokens; ``batch`` holds whatever else the data provides (for TGA: the
    caption inputs, see :mod:`safegap.train.tga`).

    ``adapter`` (the model's :class:`~safegap.models.adapter.VLMAdapter`) lets a term run extra
    passes with hooks (TGA's caption pass); ``embeddings`` is the input of decoder layer 0 (token
    embeddings with the projected image features spliced in), for ReGap's ``"embed"`` layer.
    ``step`` counts optimizer steps from 0; warm-ups are measured in it.
    """

    model: Any
    batch: Mapping[str, Any]
    hidden_states: list[torch.Tensor]
    image_mask: torch.Tensor
    text_mask: torch.Tensor
    step: int
    lm_loss: torch.Tensor
    extras: dict[str, Any] = field(default_factory=dict)
    adapter: Any = None
    embeddings: torch.Tensor | None = None

    @classmethod
    def from_capture(
        cls,
        model: Any,
        batch: Mapping[str, Any],
        capture: HiddenCapture,
        adapter: Any,
        step: int,
        lm_loss: torch.Tensor,
    ) -> LossContext:
        """A context from a :func:`capture_hidden_states` capture; masks from ``batch``'s ids."""
        image_mask, text_mask = token_masks(adapter, batch["input_ids"], batch.get("attention_mask"))
        return cls(
            model=model,
            batch=batch,
            hidden_states=capture.as_list(),
            image_mask=image_mask,
            text_mask=text_mask,
            step=step,
            lm_loss=lm_loss,
            adapter=adapter,
            embeddings=capture.embeddings,
        )


class ExtraLoss(Protocol):
    """A loss term: returns a scalar tensor and may log values into ``ctx.extras``.

    The returned tensor is the term's unweighted value; a loop adds ``weight * value`` with the
    term's ``weight`` attribute (1.0 when absent). Values to log go into ``ctx.extras`` as
    ``"<name>/<what>"`` floats (the trainer writes them to its metrics).
    """

    name: str

    def __call__(self, ctx: LossContext) -> torch.Tensor: ...


@runtime_checkable
class StatefulLoss(Protocol):
    """A term with state that must survive a resume (ReGap's frozen scale). The state is plain
    JSON data, so checkpoints never need pickle."""

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: Mapping[str, Any]) -> None: ...


def term_weight(term: ExtraLoss) -> float:
    return float(getattr(term, "weight", 1.0))


def weighted_extra_losses(ctx: LossContext, terms: Sequence[ExtraLoss]) -> torch.Tensor:
    """``sum(weight * term(ctx) for term in terms)`` (a zero tensor for no terms)."""
    total = torch.zeros((), device=ctx.lm_loss.device)
    for term in terms:
        total = total + term_weight(term) * term(ctx)
    return total


def add_extra_losses(ctx: LossContext, terms: Sequence[ExtraLoss]) -> torch.Tensor:
    """``ctx.lm_loss + sum(weight * term(ctx) for term in terms)``."""
    return ctx.lm_loss + weighted_extra_losses(ctx, terms)


def token_masks(
    adapter: Any, input_ids: torch.Tensor, attention_mask: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(image_mask, text_mask)``: image-placeholder tokens and the other non-padding tokens."""
    valid = (
        attention_mask.bool() if attention_mask is not None else torch.ones_like(input_ids, dtype=torch.bool)
    )
    image = adapter.image_token_mask(input_ids) & valid
    return image, ~image & valid


@dataclass
class HiddenCapture:
    """Decoder-layer outputs (and the layer-0 input) seen during one forward pass."""

    num_layers: int
    states: dict[int, torch.Tensor] = field(default_factory=dict)
    embeddings: torch.Tensor | None = None
    active: bool = True

    def as_list(self) -> list[torch.Tensor]:
        missing = [i for i in range(self.num_layers) if i not in self.states]
        if missing:
            raise RuntimeError(f"decoder layers {missing} did not run during the captured forward pass")
        return [self.states[i] for i in range(self.num_layers)]


@contextmanager
def capture_hidden_states(layers: nn.ModuleList) -> Iterator[HiddenCapture]:
    """Keep references to every decoder layer's output during the forward passes inside the block.

    Only the first output per layer is kept, and recording stops when the block exits, so the
    recomputation of gradient checkpointing (which re-runs layers during backward) changes
    nothing. The tensors keep their autograd graph: a regulariser on them back-propagates.
    """
    capture = HiddenCapture(num_layers=len(layers))
    handles = []

    def pre_hook(_module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        if capture.active and capture.embeddings is None:
            hidden = args[0] if args else kwargs.get("hidden_states")
            if isinstance(hidden, torch.Tensor):
                capture.embeddings = hidden

    def make_hook(index: int) -> Any:
        def hook(_module: nn.Module, _args: Any, output: Any) -> None:
            if capture.active and index not in capture.states:
                capture.states[index] = layer_hidden(output)

        return hook

    try:
        handles.append(layers[0].register_forward_pre_hook(pre_hook, with_kwargs=True))
        for index, layer in enumerate(layers):
            handles.append(layer.register_forward_hook(make_hook(index)))
        yield capture
    finally:
        capture.active = False
        for handle in handles:
            handle.remove()
