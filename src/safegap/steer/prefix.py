"""Sharing the corrupted prompts' common head: one prefix pass instead of one per row.

With a blank image every corrupted prompt of a batch begins with the same tokens and the same
pixels (template head + image tokens). :func:`shared_prefix_states` runs that head once for one
row, repeats its KV cache, and runs every row's text suffix together with every text-only prompt
in one short forward. Used by calibration and by sample-level CMRM (``layout="shared_prefix"``);
both fall back to ordinary passes where it returns ``None``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from PIL import Image

from safegap.models.hooks import layer_hooks
from safegap.models.loading import VLM
from safegap.steer.packed import can_pack, common_head, packed_suffix_states


@dataclass
class _PrefixPlan:
    """How to share one corrupted-image prefix among rows (see :func:`shared_prefix_shifts`)."""

    length: int
    prefix_ids: torch.Tensor
    suffixes: list[torch.Tensor]
    per_image: dict[str, torch.Tensor]
    per_token_prefix: dict[str, torch.Tensor]
    per_token_suffixes: dict[str, list[torch.Tensor]]


#: Families where sharing a prefix is not equivalent: PaliGemma attends bidirectionally over the
#: whole prompt, Mllama injects the image by cross-attention, not through prefix tokens.
SHARED_PREFIX_UNSAFE_FAMILIES = frozenset({"paligemma", "mllama"})


def _prefix_plan(vlm: VLM, batch: Mapping[str, Any]) -> _PrefixPlan | None:
    """``None`` unless every row has the same image inputs and the same token prefix covering
    all image tokens, and positions are plain 1-D (no per-row M-RoPE offsets)."""
    if vlm.adapter.family in SHARED_PREFIX_UNSAFE_FAMILIES:
        return None
    if any(hasattr(m, "rope_deltas") for m in (vlm.model, getattr(vlm.model, "model", None))):
        return None
    ids, mask = batch["input_ids"], batch["attention_mask"]
    k, width = ids.shape
    starts = (width - mask.sum(dim=1)).tolist()
    rows = [ids[r, starts[r] :] for r in range(k)]
    shortest = min(len(r) for r in rows)
    same = torch.stack([r[:shortest] for r in rows]).eq(rows[0][:shortest]).all(dim=0)
    length = int(same.long().cumprod(0).sum())
    image = vlm.adapter.image_token_mask(ids) & mask.bool()
    last_image = [int(image[r].nonzero().max()) - starts[r] for r in range(k) if image[r].any()]
    if len(last_image) != k or max(last_image) >= length or length >= shortest:
        return None
    per_image: dict[str, torch.Tensor] = {}
    per_token_prefix: dict[str, torch.Tensor] = {}
    per_token_suffixes: dict[str, list[torch.Tensor]] = {}
    for key, value in batch.items():
        if key in ("input_ids", "attention_mask"):
            continue
        if not isinstance(value, torch.Tensor) or value.dim() == 0 or value.shape[0] != k:
            return None
        if value.dim() >= 2 and value.shape[1] == width:
            per_token_prefix[key] = value[:1, starts[0] : starts[0] + length]
            per_token_suffixes[key] = [value[r, starts[r] + length :] for r in range(k)]
        elif all(torch.equal(value[r], value[0]) for r in range(1, k)):
            per_image[key] = value[:1]
        else:
            return None
    return _PrefixPlan(
        length,
        rows[0][:length][None],
        [r[length:] for r in rows],
        per_image,
        per_token_prefix,
        per_token_suffixes,
    )


def _right_pad(rows: list[torch.Tensor], width: int, value: int) -> torch.Tensor:
    return torch.stack([torch.nn.functional.pad(r, (0, width - len(r)), value=value) for r in rows])


def _prefix_cache(vlm: VLM, plan: _PrefixPlan) -> Any:
    """The KV cache of the shared head, one row."""
    device = vlm.device
    prefix = vlm.model(
        input_ids=plan.prefix_ids.to(device),
        attention_mask=torch.ones_like(plan.prefix_ids).to(device),
        use_cache=True,
        **{k_: v.to(device) for k_, v in {**plan.per_image, **plan.per_token_prefix}.items()},
    )
    return prefix.cache


@torch.inference_mode()
def shared_prefix_states(
    vlm: VLM,
    texts: Sequence[str],
    corrupted: Sequence[Image.Image],
    layers: list[int],
    system: str | None = None,
) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]] | None:
    """Last-token states ``(text_only, corrupted)``, each ``{layer: (K, d)}`` in the model's dtype,
    with the corrupted prompts' common prefix computed once.

    With a blank image every corrupted prompt starts with the same tokens and pixels (template
    head + image tokens); that prefix is run once for one row, its KV cache is repeated, and one
    short forward runs every corrupted row's text suffix *and* every text-only prompt (whose
    prefix columns are masked out). Where the decoder allows it the rows are packed end to end
    (:mod:`safegap.steer.packed`); otherwise they are right-padded so real tokens sit right after
    the prefix, which keeps sliding-window attention exact. ``None`` when the prompts do not share
    such a prefix (noise images, M-RoPE families, ...): use another layout.
    """
    corrupt_batch = vlm.build_inputs(list(texts), list(corrupted), system)
    plan = _prefix_plan(vlm, corrupt_batch)
    if plan is None:
        return None
    text_batch = vlm.build_inputs(list(texts), None, system)
    k = len(texts)
    device = vlm.device
    pad = int(vlm.tokenizer.pad_token_id)
    text_start = (text_batch["input_ids"].shape[1] - text_batch["attention_mask"].sum(dim=1)).tolist()
    text_rows = [text_batch["input_ids"][r, text_start[r] :] for r in range(k)]
    if not plan.per_token_suffixes and not plan.per_token_prefix and can_pack(vlm):
        # one forward: the image head, every suffix after it, the text-only prompts' common
        # template head, every text-only tail after that (rows packed end to end)
        head = common_head(text_rows)
        tails = [r[head:] for r in text_rows] if head else text_rows
        packed = [plan.prefix_ids[0], *plan.suffixes, *tails, *([text_rows[0][:head]] if head else [])]
        parents: list[int | None] = (
            [None] + [0] * k + [2 * k + 1 if head else None] * k + ([None] if head else [])
        )
        images = {key: v.to(device) for key, v in plan.per_image.items()}
        states = packed_suffix_states(vlm, None, 0, packed, parents, layers, images)
        return {i: states[i][k + 1 : 2 * k + 1] for i in layers}, {i: states[i][1 : k + 1] for i in layers}
    lengths = [len(r) for r in plan.suffixes] + [len(r) for r in text_rows]
    width = max(lengths)
    ids = _right_pad([*plan.suffixes, *text_rows], width, pad).to(device)
    real = torch.arange(width, device=device)[None, :] < torch.tensor(lengths, device=device)[:, None]
    prefix_cols = torch.ones(2 * k, plan.length, dtype=torch.long, device=device)
    prefix_cols[k:] = 0  # text-only rows do not see the image prefix
    attention = torch.cat([prefix_cols, real.long()], dim=1)
    position_ids = torch.arange(width, device=device)[None, :].repeat(2 * k, 1)
    position_ids[:k] += plan.length
    extra: dict[str, torch.Tensor] = {}
    for key, suffixes in plan.per_token_suffixes.items():
        from_text = text_batch.get(key)
        text_part = [
            from_text[r, text_start[r] :] if from_text is not None else torch.zeros_like(text_rows[r])
            for r in range(k)
        ]
        extra[key] = _right_pad([*suffixes, *text_part], width, 0).to(device)
    cache = _prefix_cache(vlm, plan)
    cache.batch_repeat_interleave(2 * k)
    last = torch.tensor(lengths, device=device) - 1
    captured: dict[int, torch.Tensor] = {}

    def grab(index: int, hidden: torch.Tensor) -> None:
        captured[index] = hidden[torch.arange(hidden.shape[0], device=hidden.device), last.to(hidden.device)]

    with layer_hooks(vlm.adapter.decoder_layers, lambda i, h: grab(i, h), layers):
        vlm.model(
            input_ids=ids,
            attention_mask=attention,
            position_ids=position_ids,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
            **extra,
        )
    return {i: captured[i][k:] for i in layers}, {i: captured[i][:k] for i in layers}
