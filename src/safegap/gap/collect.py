"""Collect hidden states from a VLM for the diagnostics, through :func:`safegap.probe.record`.

Layer convention: index ``k`` is the output of decoder layer ``k`` (0-based), i.e. Hugging Face
``hidden_states[k + 1]``. Hugging Face's last entry is taken *after* the final norm, and the MIR
reference code uses that tuple, so by default the last decoder layer's states are passed through
the model's final norm here too (``final_norm_last``); every other layer is the raw residual stream.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import torch

from safegap.gap.data import GapRecord
from safegap.gap.streaming import GapResult, TokenBatch, stream_gap
from safegap.models.loading import VLM
from safegap.probe import record
from safegap.specs import Layers, resolve_layers

#: ``spans(vlm, batch, rows) -> (first_mask, second_mask)``: boolean ``(batch, seq)`` masks of the
#: two token sets to compare (image tokens and text tokens by default); ``rows`` are the batch
#: rows' indices in the record list.
SpanFn = Callable[[VLM, Mapping[str, Any], list[int]], tuple[torch.Tensor, torch.Tensor]]


def _after(first: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Real tokens after each row's last ``first`` token (none for a row without one)."""
    positions = torch.arange(first.shape[1], device=first.device)
    last = torch.where(first, positions, -1).amax(dim=1, keepdim=True)
    return valid & ~first & (positions > last) & (last >= 0)


def image_text_spans(text: str = "after_image") -> SpanFn:
    """Image-placeholder positions vs text positions.

    ``text="after_image"`` (MIR's choice): every real token after the row's image span, so a
    system prompt or role prefix before the image is left out; rows without an image give no
    text tokens. ``text="all"``: every real non-image token. The family's image wrapper tokens
    (begin/end-of-image, row separators: text embeddings, but not the user's text) are in neither set.
    """
    if text not in ("after_image", "all"):
        raise ValueError(f"text span must be 'after_image' or 'all', got {text!r}")

    def spans(vlm: VLM, batch: Mapping[str, Any], rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        ids = batch["input_ids"]
        valid = _valid(batch)
        image = vlm.adapter.image_token_mask(ids) & valid
        wrappers = tuple(getattr(vlm.adapter, "image_wrapper_token_ids", ()))
        wrapper = torch.isin(ids, torch.tensor(wrappers, device=ids.device, dtype=ids.dtype)) & valid
        if text == "all":
            return image, valid & ~image & ~wrapper
        return image, _after(image | wrapper, valid) & (image.any(dim=1, keepdim=True))

    return spans


def substring_text_spans(substrings: Sequence[str]) -> SpanFn:
    """A text stand-in for the image (e.g. the organism's same-length text filler): the tokens of
    ``substrings[row]`` vs the real tokens after them, so a text-only control is measured exactly
    like the image (MIR's "after the image" rule)."""
    first_fn = substring_span(substrings)

    def spans(vlm: VLM, batch: Mapping[str, Any], rows: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        first = first_fn(vlm, batch, rows)
        return first, _after(first, _valid(batch))

    return spans


def _valid(batch: Mapping[str, Any]) -> torch.Tensor:
    ids = batch["input_ids"]
    return (
        batch["attention_mask"].bool()
        if "attention_mask" in batch
        else torch.ones_like(ids, dtype=torch.bool)
    )


def apply_final_norm(vlm: VLM, states: torch.Tensor) -> torch.Tensor:
    """``final_norm(states)`` computed in the model's dtype on its device, returned like ``states``."""
    norm = vlm.adapter.final_norm()
    with torch.inference_mode():
        out = norm(states.to(vlm.device, vlm.dtype).unsqueeze(0))[0]
    return out.to(states.dtype).cpu()


def _recorded(
    vlm: VLM, batch: Mapping[str, Any], layers: list[int], positions: Any, final_norm_last: bool
) -> tuple[dict[int, torch.Tensor], torch.Tensor | None]:
    rec = record(vlm, batch, layers=layers, positions=positions)
    states = dict(rec.states)
    last = vlm.adapter.num_layers - 1
    if final_norm_last and last in states:
        states[last] = apply_final_norm(vlm, states[last])
    return states, rec.row_index


def _images(records: Sequence[GapRecord]) -> list[Any] | None:
    images = [r.load_image() for r in records]
    return images if any(img is not None for img in images) else None


def iter_token_batches(
    vlm: VLM,
    records: Sequence[GapRecord],
    layers: Layers = "all",
    batch_size: int = 8,
    spans: SpanFn | None = None,
    system: str | None = None,
    final_norm_last: bool = True,
) -> Iterator[TokenBatch]:
    """Per batch of records, the two token sets' states at each layer, with record indices as groups."""
    wanted = resolve_layers(layers, vlm.adapter.num_layers)
    span_fn = spans or image_text_spans()
    for start in range(0, len(records), batch_size):
        chunk = list(records[start : start + batch_size])
        batch = vlm.build_inputs([r.prompt for r in chunk], _images(chunk), system)
        first, second = span_fn(vlm, batch, list(range(start, start + len(chunk))))
        union = first | second
        if not bool(union.any()):
            continue
        states, rows = _recorded(vlm, batch, wanted, union, final_norm_last)
        assert rows is not None
        in_first = first[union].cpu()
        in_second = second[union].cpu()
        groups = rows + start
        yield TokenBatch(
            image={i: s[in_first] for i, s in states.items()},
            text={i: s[in_second] for i, s in states.items()},
            image_groups=groups[in_first],
            text_groups=groups[in_second],
        )


def middle_layer(num_layers: int) -> int:
    return num_layers // 2


def measure_gap(
    vlm: VLM,
    records: Sequence[GapRecord],
    layers: Layers = "all",
    batch_size: int = 8,
    spans: SpanFn | None = None,
    outliers: bool = True,
    probe_layer: int | None | str = "middle",
    probe_capacity: int = 4096,
    system: str | None = None,
    final_norm_last: bool = True,
    seed: int = 0,
    device: str | torch.device = "cpu",
    gemm_dtype: torch.dtype = torch.float64,
    mode: str = "fast",
) -> GapResult:
    """Per-layer MIR, centroid gaps and probe separability between the two token sets of
    ``records`` (image vs text tokens by default). The model runs once per pass: once in the
    default ``mode="fast"``, three times with ``mode="exact"`` and ``outliers=True`` (see
    :mod:`safegap.gap.streaming`); memory does not grow with the data.
    """
    wanted = resolve_layers(layers, vlm.adapter.num_layers)
    probe: int | None
    if probe_layer == "middle":
        probe = min(wanted, key=lambda i: abs(i - middle_layer(vlm.adapter.num_layers)))
    elif isinstance(probe_layer, str):
        raise ValueError(f"probe_layer must be an int, 'middle' or None, got {probe_layer!r}")
    else:
        probe = None if probe_layer is None else resolve_layers(probe_layer, vlm.adapter.num_layers)[0]
    if not records:
        raise ValueError("no records to measure")

    def source() -> Iterator[TokenBatch]:
        return iter_token_batches(vlm, records, wanted, batch_size, spans, system, final_norm_last)

    result = stream_gap(
        source,
        wanted,
        vlm.adapter.hidden_size,
        outliers,
        probe,
        probe_capacity,
        seed,
        device,
        gemm_dtype,
        mode,
    )
    return result


#: ``masks(vlm, batch, rows) -> (batch, seq)`` bool: which positions of each row to pool; ``rows``
#: are the batch rows' indices in the full input list.
SpanMaskFn = Callable[[VLM, Mapping[str, Any], list[int]], torch.Tensor]


def pooled_states(
    vlm: VLM,
    texts: Sequence[str],
    images: Sequence[Any] | None,
    masks: SpanMaskFn,
    layers: Sequence[int],
    batch_size: int = 8,
    system: str | None = None,
    final_norm_last: bool = True,
) -> torch.Tensor:
    """Mean hidden state over a per-row span: ``(rows, len(layers), hidden)`` float32.

    A row with an empty span is an error naming the row.
    """
    out = []
    for start, chunk, batch in prompt_batches(vlm, texts, images, batch_size, system):
        mask = masks(vlm, batch, list(range(start, start + len(chunk)))).to(batch["input_ids"].device)
        empty = (~mask.any(dim=1)).nonzero()
        if empty.numel():
            raise ValueError(f"row {start + int(empty[0, 0])}: the span to pool is empty")
        states, rows = _recorded(vlm, batch, list(layers), mask, final_norm_last)
        assert rows is not None
        counts = torch.bincount(rows, minlength=len(chunk)).to(torch.float32)[:, None]
        pooled = [
            torch.zeros(len(chunk), states[i].shape[1]).index_add_(0, rows, states[i]) / counts
            for i in layers
        ]
        out.append(torch.stack(pooled, dim=1))
    return torch.cat(out)


def prompt_batches(
    vlm: VLM,
    texts: Sequence[str],
    images: Sequence[Any] | None,
    batch_size: int = 8,
    system: str | None = None,
) -> Iterator[tuple[int, list[str], Any]]:
    """``(start, texts, model inputs)`` per batch of ``batch_size`` prompts; a batch whose images are
    all ``None`` is built as text-only."""
    for start in range(0, len(texts), batch_size):
        chunk = list(texts[start : start + batch_size])
        chunk_images = None if images is None else list(images[start : start + batch_size])
        if chunk_images is not None and all(img is None for img in chunk_images):
            chunk_images = None
        yield start, chunk, vlm.build_inputs(chunk, chunk_images, system)


def last_token_states(
    vlm: VLM,
    texts: Sequence[str],
    images: Sequence[Any] | None,
    layers: Sequence[int],
    batch_size: int = 8,
    system: str | None = None,
    final_norm_last: bool = True,
) -> torch.Tensor:
    """Hidden state at the last prompt position: ``(rows, len(layers), hidden)`` float32."""
    out = []
    for _start, _chunk, batch in prompt_batches(vlm, texts, images, batch_size, system):
        states, _ = _recorded(vlm, batch, list(layers), "last", final_norm_last)
        out.append(torch.stack([states[i] for i in layers], dim=1))
    return torch.cat(out)


def image_token_span(vlm: VLM, batch: Mapping[str, Any], rows: list[int]) -> torch.Tensor:
    """The image-placeholder positions."""
    mask = vlm.adapter.image_token_mask(batch["input_ids"])
    if "attention_mask" in batch:
        mask = mask & batch["attention_mask"].bool()
    return mask


def token_char_spans(tokenizer: Any, ids: Sequence[int]) -> list[tuple[int, int]]:
    """Character span of each token in ``decode(ids)``, from decoding growing prefixes.

    Works on whatever ids the adapter built (however it split the template), where the
    tokenizer's offset mapping on a re-tokenised string would not line up."""
    spans = []
    previous = 0
    for k in range(1, len(ids) + 1):
        length = len(
            tokenizer.decode(list(ids[:k]), skip_special_tokens=False, clean_up_tokenization_spaces=False)
        )
        spans.append((previous, max(previous, length)))
        previous = max(previous, length)
    return spans


def substring_span(substrings: Sequence[str]) -> SpanMaskFn:
    """Positions of the tokens overlapping ``substrings[i]`` in row ``i``'s decoded prompt (the
    first occurrence). Spans come from the tokens themselves, never from hard-coded positions."""

    def masks(vlm: VLM, batch: Mapping[str, Any], rows: list[int]) -> torch.Tensor:
        ids = batch["input_ids"]
        attention = _valid(batch)
        out = torch.zeros_like(ids, dtype=torch.bool)
        for local, row in enumerate(rows):
            needle = substrings[row]
            row_ids = ids[local][attention[local]].tolist()
            decoded = vlm.tokenizer.decode(
                row_ids, skip_special_tokens=False, clean_up_tokenization_spaces=False
            )
            at = decoded.find(needle) if needle else -1
            if at < 0:
                raise ValueError(f"row {row}: {needle[:40]!r} does not occur in the decoded prompt")
            inside = [
                start < at + len(needle) and end > at
                for start, end in token_char_spans(vlm.tokenizer, row_ids)
            ]
            out[local, attention[local].nonzero()[:, 0]] = torch.tensor(
                inside, dtype=torch.bool, device=out.device
            )
        return out

    return masks
