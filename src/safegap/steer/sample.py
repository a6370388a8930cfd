"""Sample-level CMRM: each input's own shift ``h_text - h_corrupted``, at the cost of one prefill.

Four layouts compute the same per-row shifts (``layout=``; all tested against ``separate``):

* ``fused`` -- one batch of ``B + 2K`` rows (``K`` = rows with an image): the originals, the
  ``K`` text-only prompts, the ``K`` prompts with a corrupted image. One prefill runs it; at each
  decoder layer the hook reads the auxiliary rows' last-token states, forms each image row's
  shift and applies it to that original row (per the position policy). The auxiliary rows are
  never modified, so each layer's shift is the unsteered difference. The KV cache is then cut to
  the ``B`` original rows (and per-row model state such as Qwen's ``rope_deltas`` with it) and
  greedy decoding continues with ``generate(cache=...)``, steered with the stored shifts.
* ``text_first`` -- a short text-only pass first, then one prefill of originals + corrupted rows
  (the text-only rows are not padded to the image rows' length).
* ``shared_prefix`` (default) -- with a blank image every corrupted prompt begins with the same
  tokens and pixels; that head is run once, its cache repeated, and one short forward runs all
  text suffixes and all text-only prompts; then ordinary steered generation. Falls back to
  ``separate`` where the prompts share no such head (noise images, images of different sizes on
  dynamic-resolution families, M-RoPE families, PaliGemma, Mllama).
* ``separate`` -- the reference: a text-only pass, a corrupted pass, then steered generation.

The default is the fastest layout measured by ``benchmarks/bench_cmrm.py`` (CPU; see
``docs/cmrm.md``): padding text-only rows to the image rows' length makes ``fused`` the slowest
there, although it is the fewest calls.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from PIL import Image

from safegap.models.adapter import ImagesArg, per_row_images
from safegap.models.loading import VLM
from safegap.specs import Layers, resolve_layers
from safegap.steer.anchors import CorruptionKind, corrupted_image
from safegap.steer.calibrate import record_states
from safegap.steer.intervene import DEFAULT_POSITIONS, SteeringHandle, resolve_policy
from safegap.steer.operators import Operator
from safegap.steer.prefix import shared_prefix_states
from safegap.steer.vector import ShiftVector


@torch.inference_mode()
def sample_shifts(
    vlm: VLM,
    texts: Sequence[str],
    images: ImagesArg,
    corrupt: CorruptionKind = "blank",
    layers: Layers = "all",
    system: str | None = None,
    noise_seed: int = 0,
) -> dict[int, torch.Tensor]:
    """Reference: ``{layer: (B, d)}`` per-row shifts from separate text-only and corrupted passes,
    in the model's dtype; rows without an image get zeros."""
    rows = per_row_images(images, len(texts))
    image_rows = [k for k, img in enumerate(rows) if img is not None]
    wanted = resolve_layers(layers, vlm.adapter.num_layers)
    hidden = vlm.adapter.hidden_size
    out = {i: torch.zeros(len(texts), hidden, dtype=vlm.dtype, device=vlm.device) for i in wanted}
    if not image_rows:
        return out
    sub_texts = [texts[k] for k in image_rows]
    corrupted: list[Image.Image | None] = [
        corrupted_image(corrupt, rows[k], texts[k], noise_seed) for k in image_rows
    ]
    t = record_states(vlm, vlm.build_inputs(sub_texts, None, system), wanted, "last", dtype=None)[0]
    c = record_states(vlm, vlm.build_inputs(sub_texts, corrupted, system), wanted, "last", dtype=None)[0]
    idx = torch.tensor(image_rows, device=vlm.device)
    for i in wanted:
        out[i].index_copy_(0, idx, (t[i] - c[i]).to(vlm.device))
    return out


class FusedSampleSteering(SteeringHandle):
    """Steering whose per-row vectors are computed inside the fused prefill (see module doc).

    Batch layout: the ``n_original`` rows, then (unless ``text_states`` is given) one text-only
    row per image row, then one corrupted row per image row. With ``text_states`` (``{layer:
    (K, d)}`` read beforehand) the text-only rows are left out of the batch.
    """

    def __init__(
        self,
        vlm: VLM,
        layers: list[int],
        n_original: int,
        image_rows: list[int],
        alpha: float,
        positions: str,
        operator: str | Operator,
        direction: ShiftVector | torch.Tensor | None,
        reference: ShiftVector | torch.Tensor | None,
        clamp: tuple[float, float],
        text_states: dict[int, torch.Tensor] | None = None,
    ) -> None:
        self.n_original = n_original
        self.image_rows = image_rows
        self._row_index = torch.tensor(image_rows, device=vlm.device)
        n_img = len(image_rows)
        self._text_states = text_states
        first_corrupt = n_original + (0 if text_states is not None else n_img)
        self._text_rows = torch.arange(n_original, n_original + n_img, device=vlm.device)
        self._corrupt_rows = torch.arange(first_corrupt, first_corrupt + n_img, device=vlm.device)
        super().__init__(
            vlm, dict.fromkeys(layers), alpha, positions, operator, direction, reference, "image", clamp
        )

    def _start_prefill(
        self, input_ids: torch.Tensor | None, attention_mask: torch.Tensor | None, embeds: torch.Tensor | None
    ) -> None:
        super()._start_prefill(input_ids, attention_mask, embeds)
        # Only the original rows are steered; the auxiliary rows carry images too (the corrupted
        # ones) but must stay unsteered.
        assert self._rows is not None and self._mask is not None
        keep = torch.zeros_like(self._rows)
        keep[self._row_index] = True
        self._set_rows(self._rows & keep)
        self._mask = self._mask & keep[:, None, None]
        self._weight = self._mask.to(self._dtype)

    def _prepare_prefill_layer(self, layer: int, hidden: torch.Tensor) -> None:
        assert self._last is not None
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        last_states = hidden[rows, self._last.to(hidden.device)]
        if self._text_states is not None:
            text = self._text_states[layer].to(hidden.device, hidden.dtype)
        else:
            text = last_states[self._text_rows.to(hidden.device)]
        shift = text - last_states[self._corrupt_rows.to(hidden.device)]
        full = torch.zeros(hidden.shape[0], hidden.shape[-1], dtype=hidden.dtype, device=hidden.device)
        full.index_copy_(0, self._row_index.to(hidden.device), shift)
        self._set_vector(layer, full)

    def row_vectors(self) -> dict[int, torch.Tensor]:
        """The per-row shifts computed in the prefill, ``{layer: (rows, 1, d)}``."""
        return dict(self._vectors)

    def narrow_to_originals(self) -> None:
        """After the fused prefill: keep only the original rows for decoding."""
        assert self._rows is not None
        n = self.n_original
        self._set_rows(self._rows[:n])
        for i in list(self._vectors):
            self._vectors[i] = self._vectors[i][:n]
            if i in self._deltas:
                self._deltas[i] = self._deltas[i][:n]


Layout = Literal["fused", "text_first", "separate", "shared_prefix"]
#: ``fused``: one prefill of originals + text-only + corrupted rows (text-only rows padded to the
#: image rows' length). ``text_first``: a short text-only pass, then one prefill of originals +
#: corrupted rows (no padding waste). ``separate``: the reference, three independent passes.
#: ``shared_prefix``: the corrupted prompts' shared head run once, then one short forward for all
#: text suffixes and text-only prompts, then steered generation (falls back to ``separate`` where
#: the prompts share no such prefix).
LAYOUTS: tuple[str, ...] = ("fused", "text_first", "separate", "shared_prefix")
DEFAULT_LAYOUT: Layout = "shared_prefix"


def shared_prefix_shifts(
    vlm: VLM,
    texts: Sequence[str],
    corrupted: Sequence[Image.Image],
    layers: list[int],
    system: str | None = None,
) -> dict[int, torch.Tensor] | None:
    """Per-row shifts ``text-only - corrupted`` via :func:`shared_prefix_states` (``None`` if the
    prompts share no head)."""
    found = shared_prefix_states(vlm, texts, corrupted, layers, system)
    if found is None:
        return None
    text, corrupt = found
    return {i: text[i] - corrupt[i] for i in layers}


#: Families whose text-only rows are computed differently inside a batch that has image rows, so
#: the fused prefill would not give true text-only states. Mllama: a text-only batch skips the
#: cross-attention layers, but in a mixed batch a text-only row's cross-attention attends uniformly
#: to an empty image slot and its gated output is added (measured on the tiny model: 6% of the
#: state norm at the layer after the cross-attention layer). These use separate passes.
FUSION_UNSAFE_FAMILIES = frozenset({"mllama"})


def can_fuse(vlm: VLM) -> bool:
    """Whether the fused prefill gives the same shifts as separate passes for this family."""
    return vlm.adapter.supports_mixed_batches and vlm.adapter.family not in FUSION_UNSAFE_FAMILIES


#: Attributes where some families keep per-row state between generation steps (Qwen-VL's M-RoPE
#: offsets); after the fused prefill they must be cut to the original rows like the KV cache.
ROW_STATE_ATTRIBUTES = ("rope_deltas",)


def _narrow_row_state(model: torch.nn.Module, n_fused: int, n: int) -> None:
    for module in (model, getattr(model, "model", None)):
        for name in ROW_STATE_ATTRIBUTES:
            value = getattr(module, name, None)
            if isinstance(value, torch.Tensor) and value.dim() > 0 and value.shape[0] == n_fused:
                setattr(module, name, value[:n])


def _decode_kwargs(
    model: Any, inputs: Mapping[str, Any], n_fused: int, prompt_len: int, n: int
) -> dict[str, Any]:
    """Per-token inputs (attention mask, Mllama's cross-attention mask, token type ids, ...) cut to
    the original rows and extended by the first generated token with the model's own update rule,
    i.e. exactly what ``generate`` would hold after its first step."""
    kept: dict[str, Any] = {}
    for key, value in inputs.items():
        if key == "input_ids" or key.startswith("pixel") or not isinstance(value, torch.Tensor):
            continue
        if value.dim() >= 2 and value.shape[0] == n_fused and value.shape[1] == prompt_len:
            kept[key] = value[:n]
    return dict(model._update_model_kwargs_for_generation({}, kept, is_encoder_decoder=False))


def _truncate_after_eos(new_ids: torch.Tensor, eos_ids: Sequence[int], pad_id: int) -> torch.Tensor:
    """Replace every token after a row's first EOS with padding (what ``generate`` does)."""
    if not eos_ids:
        return new_ids
    is_eos = torch.isin(new_ids, torch.tensor(list(eos_ids), device=new_ids.device))
    after = (is_eos.long().cumsum(dim=1) - is_eos.long()) > 0
    return new_ids.masked_fill(after, pad_id)


def _eos_ids(vlm: VLM) -> list[int]:
    eos = vlm.model.generation_config.eos_token_id
    if eos is None:
        eos = vlm.tokenizer.eos_token_id
    if eos is None:
        return []
    return [int(e) for e in (eos if isinstance(eos, list | tuple) else [eos])]


@torch.inference_mode()
def sample_level_ids(
    vlm: VLM,
    texts: Sequence[str],
    images: ImagesArg,
    *,
    alpha: float = 1.0,
    corrupt: CorruptionKind = "blank",
    positions: str = DEFAULT_POSITIONS,
    layers: Layers = "all",
    operator: str | Operator = "subtract",
    direction: ShiftVector | torch.Tensor | None = None,
    reference: ShiftVector | torch.Tensor | None = None,
    clamp: tuple[float, float] = (0.0, 1.0),
    max_new_tokens: int = 32,
    min_new_tokens: int = 0,
    system: str | None = None,
    noise_seed: int = 0,
    layout: Layout | None = None,
    shifts_out: dict[int, torch.Tensor] | None = None,
) -> torch.Tensor:
    """New token ids ``(B, n)`` of greedy generation with sample-level CMRM; padding after EOS.

    ``layout`` (see :data:`LAYOUTS`; ``None`` = :data:`DEFAULT_LAYOUT`, chosen by
    ``benchmarks/bench_cmrm.py``). ``min_new_tokens`` forces a fixed length (for timing). If
    ``shifts_out`` is a dict it receives the per-row shifts ``{layer: (B, d)}`` that were applied.
    """
    resolve_policy(positions)
    if layout is not None and layout not in LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}; use {', '.join(LAYOUTS)}")
    rows = per_row_images(images, len(texts))
    image_rows = [k for k, img in enumerate(rows) if img is not None]
    wanted = resolve_layers(layers, vlm.adapter.num_layers)
    tok = vlm.tokenizer
    gen: dict[str, Any] = dict(do_sample=False, pad_token_id=tok.pad_token_id)
    has_any = bool(image_rows)
    if layout is None:
        layout = DEFAULT_LAYOUT
    if layout == "fused" and not can_fuse(vlm):
        raise ValueError(
            f"layout 'fused' needs text-only rows that are exact inside a batch with image rows; "
            f"family {vlm.adapter.family} does not give that (use 'text_first', 'shared_prefix' or 'separate')"
        )
    shifts = None
    if layout == "shared_prefix" and has_any:
        corrupted_k = [corrupted_image(corrupt, rows[k], texts[k], noise_seed) for k in image_rows]
        found = shared_prefix_shifts(vlm, [texts[k] for k in image_rows], corrupted_k, wanted, system)
        if found is not None:  # else: no shareable head, separate passes below
            shifts = {
                i: torch.zeros(len(texts), v.shape[-1], dtype=v.dtype, device=v.device)
                for i, v in found.items()
            }
            idx = torch.tensor(image_rows, device=vlm.device)
            for i, v in found.items():
                shifts[i].index_copy_(0, idx, v)
    if layout in ("separate", "shared_prefix") or not has_any:
        if shifts is None:
            shifts = sample_shifts(vlm, texts, rows, corrupt, wanted, system, noise_seed)
        inputs = vlm.build_inputs(list(texts), rows if has_any else None, system)
        if shifts_out is not None:
            shifts_out.update(shifts)
        handle = SteeringHandle(vlm, shifts, alpha, positions, operator, direction, reference, "image", clamp)
        try:
            out = vlm.model.generate(
                **inputs, max_new_tokens=max_new_tokens, min_new_tokens=min_new_tokens, **gen
            )
        finally:
            handle.remove()
        return _truncate_after_eos(out[:, inputs["input_ids"].shape[1] :], _eos_ids(vlm), tok.pad_token_id)

    n = len(texts)
    image_texts = [texts[k] for k in image_rows]
    corrupted = [corrupted_image(corrupt, rows[k], texts[k], noise_seed) for k in image_rows]
    text_states = None
    if layout == "text_first":
        text_batch = vlm.build_inputs(image_texts, None, system)
        text_states = record_states(vlm, text_batch, wanted, "last", dtype=None)[0]
        all_texts = list(texts) + image_texts
        all_images: list[Image.Image | None] = [*rows, *corrupted]
    else:
        all_texts = list(texts) + image_texts * 2
        all_images = [*rows, *([None] * len(image_rows)), *corrupted]
    inputs = vlm.build_inputs(all_texts, all_images, system)
    prompt_len = inputs["input_ids"].shape[1]
    fused_handle = FusedSampleSteering(
        vlm, wanted, n, image_rows, alpha, positions, operator, direction, reference, clamp, text_states
    )
    try:
        first = vlm.model.generate(
            **inputs,
            max_new_tokens=1,
            min_new_tokens=min(min_new_tokens, 1),
            return_dict_in_generate=True,
            **gen,
        )
        sequences = first.sequences[:n]
        if max_new_tokens > 1:
            cache = first.cache
            cache.batch_select_indices(torch.arange(n, device=sequences.device))
            _narrow_row_state(vlm.model, len(all_texts), n)
            fused_handle.narrow_to_originals()
            carried = _decode_kwargs(vlm.model, inputs, len(all_texts), prompt_len, n)
            sequences = vlm.model.generate(
                input_ids=sequences,
                cache=cache,
                max_new_tokens=max_new_tokens - 1,
                min_new_tokens=max(min_new_tokens - 1, 0),
                **carried,
                **gen,
            )
    finally:
        fused_handle.remove()
    if shifts_out is not None:
        shifts_out.update({i: v[:n, 0] for i, v in fused_handle.row_vectors().items()})
    return _truncate_after_eos(sequences[:, prompt_len:], _eos_ids(vlm), tok.pad_token_id)


def generate_sample_level(
    vlm: VLM,
    texts: Sequence[str],
    images: ImagesArg = None,
    *,
    max_new_tokens: int = 32,
    system: str | None = None,
    batch_size: int = 8,
    **kwargs: Any,
) -> list[str]:
    """Replies with sample-level CMRM, in order, in chunks of ``batch_size`` (options as
    :func:`sample_level_ids`)."""
    rows = per_row_images(images, len(texts))
    replies: list[str] = []
    for start in range(0, len(texts), batch_size):
        ids = sample_level_ids(
            vlm,
            list(texts[start : start + batch_size]),
            rows[start : start + batch_size],
            max_new_tokens=max_new_tokens,
            system=system,
            **kwargs,
        )
        replies.extend(vlm.tokenizer.batch_decode(ids, skip_special_tokens=True))
    return [r.strip() for r in replies]
