"""The shared-prefix forward of sample-level CMRM with its rows packed into one sequence.

:func:`safegap.steer.prefix.shared_prefix_states` runs every corrupted row's text suffix and every
text-only prompt after one cached image prefix. Right-padded to the longest row, a third of that
forward is padding on short prompts (measured in ``benchmarks/bench_cmrm.py``: 480 token rows for
350 real ones). Packed, the rows sit end to end in one row of the batch; a block-diagonal causal
mask keeps each one to itself (a corrupted row also sees the prefix, a text-only row does not),
and positions restart per row. Only for plain causal decoders with a mask the attention takes
as given (sdpa, eager) and no sliding window; elsewhere the padded forward is kept.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from safegap.models.hooks import layer_hooks
from safegap.models.loading import VLM

#: Families whose language model is a plain causal decoder (no image-bidirectional or
#: cross-attention masks) that accepts a prepared 4-D mask.
PACKABLE_FAMILIES = frozenset({"llava", "llava_next", "llava_onevision", "idefics3", "internvl", "mistral3"})


def can_pack(vlm: VLM) -> bool:
    """Whether the packed forward is exact for this model (see the module docstring)."""
    if vlm.adapter.family not in PACKABLE_FAMILIES:
        return False
    config: Any = vlm.model.config
    text = getattr(config, "text_config", config)
    if getattr(text, "_attn_implementation", None) not in ("sdpa", "eager"):
        return False
    if getattr(text, "sliding_window", None) and getattr(text, "use_sliding_window", True):
        return False
    return "sliding_attention" not in (getattr(text, "layer_types", None) or ())


#: ``parents[r]``: what packed row ``r`` continues: ``PREFIX`` (the cached image prefix), the
#: index of an earlier packed row (a shared text head), or ``None`` (nothing).
PREFIX = -1


def packed_mask(
    lengths: Sequence[int],
    prefix: int,
    parents: Sequence[int | None],
    dtype: torch.dtype,
    eager: bool,
    device: torch.device,
) -> torch.Tensor:
    """``(1, 1, total, prefix + total)``: each packed row attends causally to itself and to all of
    what it continues (the prefix, or an earlier packed row); bool for sdpa (True = attend),
    additive for eager."""
    sizes = torch.tensor(list(lengths), device=device)
    segment = torch.repeat_interleave(torch.arange(len(lengths), device=device), sizes)
    index = torch.arange(segment.numel(), device=device)
    own = (segment[:, None] == segment[None, :]) & (index[None, :] <= index[:, None])
    parent = torch.tensor([-2 if p is None else p for p in parents], device=device)[segment]
    own |= parent[:, None] == segment[None, :]
    visible = (parent == PREFIX)[:, None].expand(-1, prefix)
    allowed = torch.cat([visible, own], dim=1)[None, None]
    if not eager:
        return allowed
    return torch.zeros(allowed.shape, dtype=dtype, device=device).masked_fill(
        ~allowed, torch.finfo(dtype).min
    )


def common_head(rows: Sequence[torch.Tensor]) -> int:
    """Length of the token prefix all ``rows`` share, leaving each at least one token of its own."""
    shortest = min(len(r) for r in rows)
    if len(rows) < 2 or shortest < 2:
        return 0
    stacked = torch.stack([r[: shortest - 1] for r in rows])
    return int(stacked.eq(stacked[0]).all(dim=0).long().cumprod(0).sum())


@torch.inference_mode()
def packed_suffix_states(
    vlm: VLM,
    cache: Any,
    prefix: int,
    rows: Sequence[torch.Tensor],
    parents: Sequence[int | None],
    layers: list[int],
    extra: dict[str, torch.Tensor] | None = None,
) -> dict[int, torch.Tensor]:
    """Last-token states ``{layer: (len(rows), d)}`` of ``rows``, packed into one sequence,
    after a one-row prefix ``cache`` of length ``prefix`` (``None``/0: none); ``parents``: see
    :data:`PREFIX`; ``extra``: further model inputs (the pixels of a packed image row)."""
    device = vlm.device
    lengths = [len(r) for r in rows]
    ids = torch.cat([r.to(device) for r in rows])[None]
    offsets = [0 if p is None else prefix if p == PREFIX else lengths[p] for p in parents]
    positions = torch.cat(
        [torch.arange(n, device=device) + o for n, o in zip(lengths, offsets, strict=True)]
    )[None]
    text: Any = getattr(vlm.model.config, "text_config", vlm.model.config)
    eager = getattr(text, "_attn_implementation", None) == "eager"
    mask = packed_mask(lengths, prefix, parents, vlm.dtype, eager, device)
    ends = torch.tensor(lengths, device=device).cumsum(0) - 1
    captured: dict[int, torch.Tensor] = {}

    def grab(index: int, hidden: torch.Tensor) -> None:
        captured[index] = hidden[0, ends.to(hidden.device)]

    with layer_hooks(vlm.adapter.decoder_layers, grab, layers):
        vlm.model(
            input_ids=ids,
            attention_mask=mask,
            position_ids=positions,
            cache=cache,
            use_cache=cache is not None,
            logits_to_keep=1,
            **(extra or {}),
        )
    return captured
