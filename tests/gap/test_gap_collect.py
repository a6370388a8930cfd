"""Collecting image/text token states from a tiny LLaVA and measuring the gap on them."""

from __future__ import annotations

import torch

from safegap.gap.collect import (
    apply_final_norm,
    image_text_spans,
    iter_token_batches,
    measure_gap,
    pooled_states,
    substring_span,
    substring_text_spans,
    token_char_spans,
)
from safegap.gap.data import GapRecord
from safegap.gap.metrics import mir_direct
from safegap.models import VLM
from safegap.probe import record


def test_text_span_after_image_leaves_out_the_role_prefix(llava: VLM, records: list[GapRecord]) -> None:
    batch = llava.build_inputs([r.prompt for r in records[:2]], [r.load_image() for r in records[:2]])
    image, after = image_text_spans("after_image")(llava, batch, [0, 1])
    _, every = image_text_spans("all")(llava, batch, [0, 1])
    assert image.sum(1).tolist() == [16, 16]
    first_image = image.int().argmax(dim=1)
    for row in range(2):
        assert not bool(after[row, : first_image[row]].any())  # "USER: " is before the image
        assert bool(every[row, : first_image[row]].any())
        assert not bool((after[row] & image[row]).any())
    assert bool((every.sum(1) > after.sum(1)).all())


def test_batches_carry_states_and_record_ids(llava: VLM, records: list[GapRecord]) -> None:
    batches = list(iter_token_batches(llava, records, [0, 2], batch_size=4))
    assert len(batches) == 2
    groups = torch.cat([b.image_groups for b in batches if b.image_groups is not None])
    assert torch.equal(torch.unique(groups), torch.arange(len(records)))
    assert all(b.image[0].shape[0] == 16 * len(torch.unique(b.image_groups)) for b in batches)  # type: ignore[arg-type]
    assert batches[0].text[2].shape[1] == llava.adapter.hidden_size


def test_last_layer_is_final_normed_like_hf_hidden_states(llava: VLM, records: list[GapRecord]) -> None:
    last = llava.adapter.num_layers - 1
    raw = next(iter(iter_token_batches(llava, records[:2], [last], final_norm_last=False)))
    normed = next(iter(iter_token_batches(llava, records[:2], [last])))
    assert torch.allclose(normed.text[last], apply_final_norm(llava, raw.text[last]))
    batch = llava.build_inputs([records[0].prompt], [records[0].load_image()])
    with torch.inference_mode():
        hf = llava.model(**batch, output_hidden_states=True).hidden_states[-1][0, -1]
    assert torch.allclose(
        apply_final_norm(llava, record(llava, batch, [last]).states[last])[0], hf, atol=1e-5
    )


def test_measured_gap_agrees_with_direct_computation(llava: VLM, records: list[GapRecord]) -> None:
    result = measure_gap(llava, records, batch_size=len(records))
    batches = list(iter_token_batches(llava, records, batch_size=len(records)))
    layers = range(llava.adapter.num_layers)
    image = [torch.cat([b.image[i] for b in batches]) for i in layers]
    text = [torch.cat([b.text[i] for b in batches]) for i in layers]
    per_layer, mir = mir_direct(image, text)
    assert all(abs(a - b) <= 1e-6 * abs(b) for a, b in zip(result.mir_per_layer, per_layer, strict=True))
    assert abs(result.mir - mir) <= 1e-6
    assert result.probe is not None and result.probe_layer == 1 and result.probe.split == "by_sample"
    assert result.layers[0].image_tokens == 16 * len(records)


def test_batch_size_changes_nothing_beyond_float_noise(llava: VLM, records: list[GapRecord]) -> None:
    one = measure_gap(llava, records, [0, 1], batch_size=1, probe_layer=None)
    many = measure_gap(llava, records, [0, 1], batch_size=4, probe_layer=None)
    for a, b in zip(one.mir_per_layer, many.mir_per_layer, strict=True):
        assert abs(a - b) <= 1e-4 * abs(a)


def test_caption_span_finds_exactly_the_caption(llava: VLM) -> None:
    texts = ["a red circle\ndescribe the image .", "the lazy dog\nwhat is shown here ?"]
    captions = ["a red circle", "the lazy dog"]
    batch = llava.build_inputs(texts)
    mask = substring_span(captions)(llava, batch, [0, 1])
    for row in range(2):
        picked = batch["input_ids"][row][mask[row]].tolist()
        assert llava.tokenizer.decode(picked).strip() == captions[row]
    states = pooled_states(llava, texts, None, substring_span(captions), [0, 2], batch_size=1)
    assert states.shape == (2, 2, llava.adapter.hidden_size)
    assert torch.isfinite(states).all()


def test_token_char_spans_cover_the_decoded_text(llava: VLM) -> None:
    ids = llava.tokenizer("how do i make a cake ?", add_special_tokens=False)["input_ids"]
    spans = token_char_spans(llava.tokenizer, ids)
    assert spans[0][0] == 0 and spans[-1][1] == len("how do i make a cake ?")
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:], strict=False))


def test_text_filler_control_is_measured_like_the_image(llava: VLM) -> None:
    filler = "the quick brown fox jumps over the lazy dog ."
    controls = [GapRecord(prompt=f"{filler}\n{p}") for p in ("describe the image .", "what is shown here ?")]
    spans = substring_text_spans([filler, filler])
    batch = llava.build_inputs([r.prompt for r in controls])
    first, second = spans(llava, batch, [0, 1])
    for row in range(2):
        assert llava.tokenizer.decode(batch["input_ids"][row][first[row]].tolist()).strip() == filler
        positions = first[row].nonzero()[:, 0]
        assert bool(second[row].any()) and second[row].nonzero()[0, 0] > positions.max()
    result = measure_gap(llava, controls, [0, 1], spans=spans, probe_layer=None)
    assert result.layers[0].image_tokens == int(first.sum()) and result.layers[0].text_tokens == int(
        second.sum()
    )
    assert all(fd > 0 for fd in result.mir_per_layer)
