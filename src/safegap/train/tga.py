"""TGA, text-guided alignment (Xu et al., ICLR 2025): image-token states follow their caption's.

For each guided layer ``j`` and each row with an image and a caption::

    L_guide = Σ_j [ −cos(I_j, C_j) + softplus(cos(R_j, C_j) − cos(I_j, C_j)) ]

* ``I_j``: mean of the image-token states at the output of decoder layer ``j`` (multimodal pass);
* ``C_j``: mean of the caption-token states at layer ``j`` from a text-only pass of the caption
  through the *current* model under ``no_grad`` (fixed targets; template and padding tokens are
  excluded from the mean);
* ``R_j``: mean of the retrieved-text states in the multimodal pass, for rows that carry a
  retrieved text (the ranking term is dropped for rows without one).

With ``negatives="batch"`` a second ranking term uses the captions of the batch's other rows as
negatives in ``R``'s place (:mod:`safegap.train.tga_rank`).

The term returns the mean over rows (all processes pooled), optionally decayed linearly to 0
over training as the authors' code does; the loop multiplies it by ``weight``. The paper's formula is implemented with
differentiable torch ops (the released code's terms pass through ``math.exp`` and carry no
gradient; ``research/tga.md`` section 1).

**How captions reach the loss.** The batch carries, aligned row for row with ``input_ids``:

* ``caption_input_ids`` ``(B, Sc)``, right-padded, and ``caption_attention_mask``;
* ``caption_token_mask`` ``(B, Sc)`` bool: the caption's own tokens (template tokens excluded);
  an all-False row means "no caption" and the row is skipped;
* optionally ``retrieved_mask`` ``(B, S)`` bool over the multimodal ``input_ids``.

:func:`caption_batch` builds the first three from strings; the trainer's data collator does it
for the ``caption`` and ``retrieved_text`` JSONL fields. A loop may instead put the caption
strings (or ``None``) in ``batch["captions"]``: the term then encodes them itself, with the
model's chat template when ``ctx.adapter`` is set, else with ``TGALoss(tokenizer=...,
caption_template="plain")``. Without ``ctx.adapter`` the caption pass hooks
``model.get_decoder().layers``. The term runs the caption pass itself
through ``ctx.model`` with hooks on ``ctx.adapter.decoder_layers``, stopping after the deepest
guided layer: its cost is one extra no-grad forward truncated at that layer (logged as
``tga/caption_ms``).
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
import torch.nn.functional as F

from safegap.models.hooks import layer_hooks
from safegap.train.distributed import global_sum, global_sum_detached
from safegap.train.hooks import LossContext
from safegap.train.tga_rank import NEGATIVES, InBatchRanking, Negatives

CaptionTemplate = Literal["chat", "plain"]
CAPTION_TEMPLATES: tuple[str, ...] = ("chat", "plain")
CAPTION_KEYS = ("caption_input_ids", "caption_attention_mask", "caption_token_mask")


class _StopCaptionPass(Exception):
    """Raised in the deepest guided layer's hook: nothing after it is needed."""


def _adds_special_tokens(tokenizer: Any, text: str) -> bool:
    """Let the tokenizer add BOS only where the rendered text lacks it (the adapters' rule)."""
    bos = getattr(tokenizer, "bos_token", None)
    return not (bos and bos in text)


def encode_caption(
    adapter: Any, caption: str, template: CaptionTemplate = "chat", tokenizer: Any = None
) -> tuple[list[int], list[bool]]:
    """Token ids of the caption pass and which of them are the caption's own tokens.

    ``chat`` renders the caption as a text-only user turn of the model's template (the position
    an image takes in the multimodal pass; needs ``adapter``); ``plain`` tokenises the bare
    caption (``tokenizer`` alone is enough).
    """
    if template not in CAPTION_TEMPLATES:
        raise ValueError(f"caption template {template!r} not in {CAPTION_TEMPLATES}")
    if not caption.strip():
        raise ValueError("empty caption")
    tokenizer = tokenizer if tokenizer is not None else getattr(adapter, "tokenizer", None)
    if tokenizer is None or (template == "chat" and adapter is None):
        raise ValueError(
            f"the {template!r} caption template needs the model's adapter (or a tokenizer for 'plain')"
        )
    text = adapter.render(caption, has_image=False) if template == "chat" else caption
    start = text.find(caption)
    if start < 0:
        raise ValueError(f"the chat template changed the caption text: {caption[:40]!r}")
    end = start + len(caption)
    enc = tokenizer(
        text, add_special_tokens=_adds_special_tokens(tokenizer, text), return_offsets_mapping=True
    )
    mask = [e > s and s < end and e > start for s, e in enc["offset_mapping"]]  # overlap: BPE glues spaces
    if not any(mask):
        raise ValueError(f"caption {caption[:40]!r} produced no tokens")
    return list(enc["input_ids"]), mask


def pad_captions(
    encoded: Sequence[tuple[list[int], list[bool]] | None], pad_id: int
) -> dict[str, torch.Tensor]:
    """Right-pad per-row caption encodings (``None`` = no caption) into the batch tensors."""
    width = max([len(e[0]) for e in encoded if e is not None], default=1)
    ids = torch.full((len(encoded), width), pad_id, dtype=torch.long)
    attention = torch.zeros((len(encoded), width), dtype=torch.long)
    token = torch.zeros((len(encoded), width), dtype=torch.bool)
    for row, enc in enumerate(encoded):
        if enc is None:
            continue
        n = len(enc[0])
        ids[row, :n] = torch.tensor(enc[0], dtype=torch.long)
        attention[row, :n] = 1
        token[row, :n] = torch.tensor(enc[1], dtype=torch.bool)
    return {"caption_input_ids": ids, "caption_attention_mask": attention, "caption_token_mask": token}


def caption_batch(
    adapter: Any, captions: Sequence[str | None], template: CaptionTemplate = "chat", tokenizer: Any = None
) -> dict[str, torch.Tensor]:
    """The ``caption_*`` batch entries for one caption (or ``None``) per row."""
    tok = tokenizer if tokenizer is not None else adapter.tokenizer
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    encoded = [encode_caption(adapter, c, template, tok) if c is not None else None for c in captions]
    return pad_captions(encoded, int(pad_id or 0))


def _decoder_layers(ctx: LossContext) -> Any:
    """The adapter's decoder layers, else the language model's (loops without an adapter)."""
    if ctx.adapter is not None:
        return ctx.adapter.decoder_layers
    model = getattr(ctx.model, "module", ctx.model)
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    layers = getattr(decoder, "layers", None)
    if layers is None:
        raise ValueError(
            "TGA needs ctx.adapter (or a model whose get_decoder() has .layers) to hook the caption pass"
        )
    return layers


def _is_sharded(model: Any) -> bool:
    """FSDP and DeepSpeed gather parameters inside forward; never cut their forward short."""
    names = {type(m).__name__ for m in (model, getattr(model, "module", None)) if m is not None}
    return any(marker in n for n in names for marker in ("FullyShardedDataParallel", "FSDP", "DeepSpeed"))


def _row_means(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """``(B, D)`` per-row means of ``states[mask]`` in float32 (zero for empty rows)."""
    weights = mask.to(torch.float32).unsqueeze(-1)
    total = (states.to(torch.float32) * weights).sum(dim=1)
    return total / weights.sum(dim=1).clamp_min(1.0)


@dataclass
class TGALoss:
    """The TGA term; an :class:`~safegap.train.hooks.ExtraLoss`.

    Returns ``L_guide`` averaged over guided rows, times the decay factor when ``decay`` is
    ``linear``; ``weight`` is applied by the loop. ``caption_template`` and ``tokenizer`` are used
    only when the batch carries caption *strings* (``captions``) instead of ``caption_*`` tensors.

    ``negatives="batch"`` adds, per guided layer, ``rank_weight ×`` the in-batch caption ranking of
    :mod:`safegap.train.tga_rank` (other rows' distinct captions as negatives, with
    ``rank_margin`` and ``rank_temperature``; the defaults give the paper's softplus form) and
    logs ``tga/rank``, ``tga/cos_neg``, ``tga/cos_gap``, ``tga/retrieval_acc``, ``tga/rank_rows``.
    ``"none"`` (the default) computes none of it.
    """

    layers: tuple[int, ...]
    weight: float = 1.0
    decay: Literal["none", "linear"] = "none"
    total_steps: int | None = None
    caption_template: CaptionTemplate = "chat"
    tokenizer: Any = None
    name: str = "tga"
    negatives: Negatives = "none"
    rank_weight: float = 1.0
    rank_margin: float = 0.0
    rank_temperature: float = 1.0

    def __post_init__(self) -> None:
        self.layers = tuple(sorted(set(int(x) for x in self.layers)))
        if not self.layers:
            raise ValueError("TGA needs at least one layer")
        if self.decay not in ("none", "linear"):
            raise ValueError(f"decay {self.decay!r} not in ('none', 'linear')")
        if self.negatives not in NEGATIVES:
            raise ValueError(f"negatives {self.negatives!r} not in {NEGATIVES}")
        if not self.rank_temperature > 0:
            raise ValueError(f"rank_temperature must be > 0, got {self.rank_temperature}")

    def decay_factor(self, step: int) -> float:
        if self.decay == "linear":
            if not self.total_steps:
                raise ValueError("TGA decay='linear' needs total_steps")
            return max(0.0, 1.0 - step / self.total_steps)
        return 1.0

    def current_weight(self, step: int) -> float:
        """The effective weight at ``step``: ``weight × decay factor``."""
        return self.weight * self.decay_factor(step)

    def caption_inputs(self, ctx: LossContext) -> Mapping[str, Any]:
        """The batch's ``caption_*`` tensors, encoding ``captions`` strings when that is what it has."""
        if all(k in ctx.batch for k in CAPTION_KEYS):
            return ctx.batch
        if "captions" in ctx.batch:
            built = caption_batch(ctx.adapter, ctx.batch["captions"], self.caption_template, self.tokenizer)
            device = ctx.batch["input_ids"].device
            return {**ctx.batch, **{k: v.to(device) for k, v in built.items()}}
        missing = [k for k in CAPTION_KEYS if k not in ctx.batch]
        raise ValueError(
            f"TGA needs captions: the batch lacks {', '.join(missing)} and 'captions' "
            "(see safegap.train.tga.caption_batch)"
        )

    def caption_states(
        self, ctx: LossContext, rows: torch.Tensor, batch: Mapping[str, Any] | None = None
    ) -> dict[int, torch.Tensor]:
        """Per-row caption means ``{layer: (len(rows), D)}`` from a no-grad text-only pass."""
        batch = batch if batch is not None else self.caption_inputs(ctx)
        decoder_layers = _decoder_layers(ctx)
        ids = batch["caption_input_ids"][rows]
        attention = batch["caption_attention_mask"][rows]
        token_mask = batch["caption_token_mask"][rows].bool() & attention.bool()
        keep = int(attention.sum(dim=0).nonzero().max()) + 1  # drop all-padding columns
        ids, attention, token_mask = ids[:, :keep], attention[:, :keep], token_mask[:, :keep]
        deepest = self.layers[-1]
        early_stop = not _is_sharded(ctx.model)
        out: dict[int, torch.Tensor] = {}

        def keep_means(index: int, hidden: torch.Tensor) -> None:
            out[index] = _row_means(hidden, token_mask)
            if index == deepest and early_stop:
                raise _StopCaptionPass

        modes = [(m, m.training) for m in ctx.model.modules()]
        ctx.model.eval()
        try:
            with (
                torch.no_grad(),
                layer_hooks(decoder_layers, keep_means, self.layers),
                contextlib.suppress(_StopCaptionPass),
            ):
                ctx.model(input_ids=ids, attention_mask=attention, use_cache=False)
        finally:
            for module, mode in modes:
                module.training = mode
        return out

    def __call__(self, ctx: LossContext) -> torch.Tensor:
        batch = self.caption_inputs(ctx)
        if self.layers[-1] >= len(ctx.hidden_states):
            raise ValueError(
                f"TGA layer {self.layers[-1]} out of range for {len(ctx.hidden_states)} decoder layers"
            )
        has_caption = batch["caption_token_mask"].bool().any(dim=1).to(ctx.image_mask.device)
        rows = (has_caption & ctx.image_mask.any(dim=1)).nonzero().squeeze(1)
        retrieved = ctx.batch.get("retrieved_mask")
        anchor = ctx.hidden_states[self.layers[0]]
        local = anchor.sum() * 0.0  # keeps the graph (DDP) when this process has no guided row
        cos_ic_sum = torch.zeros((), device=anchor.device)
        cos_rc_sum = torch.zeros((), device=anchor.device)
        n_ranked = torch.zeros((), device=anchor.device)
        elapsed_ms = 0.0
        in_batch = (
            InBatchRanking.for_rows(batch, rows, anchor.device, self.rank_margin, self.rank_temperature)
            if self.negatives == "batch"
            else None
        )
        if len(rows) > 0:
            started = time.perf_counter()
            captions = self.caption_states(ctx, rows.to(batch["caption_input_ids"].device), batch)
            elapsed_ms = (time.perf_counter() - started) * 1000.0
            ranked = (
                retrieved[rows].bool().any(dim=1).to(torch.float32)
                if retrieved is not None
                else torch.zeros(len(rows), device=anchor.device)
            )
            n_ranked = ranked.sum()
            for layer in self.layers:
                states = ctx.hidden_states[layer][rows]
                image = _row_means(states, ctx.image_mask[rows])
                target = captions[layer].to(image.device)
                cos_ic = F.cosine_similarity(image, target, dim=-1)
                local = local - cos_ic.sum()
                cos_ic_sum = cos_ic_sum + cos_ic.detach().sum()
                if retrieved is not None and n_ranked > 0:
                    text = _row_means(states, retrieved[rows].bool())
                    cos_rc = F.cosine_similarity(text, target, dim=-1)
                    local = local + (ranked * F.softplus(cos_rc - cos_ic)).sum()
                    cos_rc_sum = cos_rc_sum + (ranked * cos_rc.detach()).sum()
                if in_batch is not None:
                    local = local + self.rank_weight * in_batch.layer_loss(image, target)
        n_rows = float(global_sum_detached(torch.tensor(float(len(rows)), device=anchor.device)))
        value = global_sum(local) / max(n_rows, 1.0)
        stats = global_sum_detached(torch.stack([cos_ic_sum, cos_rc_sum, n_ranked.to(anchor.device)]))
        per_layer = len(self.layers)
        ctx.extras["tga/value"] = float(value.detach())
        ctx.extras["tga/rows"] = n_rows
        ctx.extras["tga/cos_ic"] = float(stats[0]) / max(n_rows * per_layer, 1.0)
        if float(stats[2]) > 0:
            ctx.extras["tga/cos_rc"] = float(stats[1]) / (float(stats[2]) * per_layer)
        ctx.extras["tga/caption_ms"] = elapsed_ms
        if in_batch is not None:
            in_batch.write_stats(ctx.extras, n_rows, per_layer)
        return self.decay_factor(ctx.step) * value
