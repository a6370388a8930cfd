"""``safegap.probe.record`` on every family: agreement with ``output_hidden_states``, positions,
early stopping, and leaving the model exactly as it was."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import torch
from PIL import Image

from safegap.data.images import noise_image
from safegap.models import VLM
from safegap.models.hooks import add_layer_hooks
from safegap.probe import last_token_index, position_mask, record
from safegap.testing import FAMILIES as TINY_FAMILIES

FAMILIES = sorted(TINY_FAMILIES)
PROMPTS = (
    "describe the image .",
    "how do i make a cake ?",
    "tell me about the picture , please explain it .",
)


@pytest.fixture(scope="module", params=FAMILIES)
def vlm(request: pytest.FixtureRequest, tiny_vlm: Callable[[str], VLM]) -> VLM:
    return tiny_vlm(request.param)


@pytest.fixture(scope="module")
def batch(vlm: VLM) -> Any:
    """Three left-padded rows: image, text-only (where the family mixes), image."""
    rows: list[Image.Image | None] = [
        noise_image((40, 30), 0),
        noise_image((24, 56), 1),
        noise_image((96, 20), 2),
    ]
    if vlm.adapter.supports_mixed_batches:
        rows[1] = None
    return vlm.build_inputs(list(PROMPTS), rows)


@pytest.fixture(scope="module")
def hidden_states(vlm: VLM, batch: Any) -> tuple[torch.Tensor, ...]:
    with torch.inference_mode():
        out = vlm.model(**batch, output_hidden_states=True)
    assert len(out.hidden_states) == vlm.adapter.num_layers + 1
    return tuple(out.hidden_states)


def hooks(vlm: VLM) -> list[tuple[object, ...]]:
    """Every hook on every decoder layer. Not necessarily empty: transformers 5 installs its own
    output-capturing hooks on the layers, for good, the first time ``output_hidden_states`` is used."""
    return [
        (*layer._forward_hooks.values(), *layer._forward_pre_hooks.values())
        for layer in vlm.adapter.decoder_layers
    ]


def test_layer_outputs_match_output_hidden_states(
    vlm: VLM, batch: Any, hidden_states: tuple[torch.Tensor, ...]
) -> None:
    rec = record(vlm, batch, layers="all", positions="all")
    valid = batch["attention_mask"].bool()
    last = vlm.adapter.num_layers - 1
    for i in range(last):
        assert torch.equal(rec.states[i], hidden_states[i + 1][valid]), f"layer {i}"
    # hidden_states[-1] is taken after the final norm; the hook sees the layer's raw output.
    assert not torch.equal(rec.states[last], hidden_states[-1][valid])
    with torch.inference_mode():
        normed = vlm.adapter.final_norm()(rec.states[last])
    torch.testing.assert_close(normed, hidden_states[-1][valid])


def test_positions_last_image_and_text(vlm: VLM, batch: Any, hidden_states: tuple[torch.Tensor, ...]) -> None:
    valid = batch["attention_mask"].bool()
    image = vlm.adapter.image_token_mask(batch["input_ids"])
    layer = 1
    expected = hidden_states[layer + 1]

    last = record(vlm, batch, layers=layer, positions="last")
    assert last.states[layer].shape == (3, vlm.adapter.hidden_size)
    assert torch.equal(last.states[layer], expected[:, -1])  # left padding: the last column is real

    on_image = record(vlm, batch, layers=layer, positions="image")
    assert torch.equal(on_image.states[layer], expected[image & valid])
    assert on_image.row_index is not None
    assert on_image.row_index.tolist() == (image & valid).nonzero()[:, 0].tolist()
    if vlm.adapter.supports_mixed_batches:
        assert 1 not in on_image.row_index.tolist(), "the text-only row has no image positions"

    on_text = record(vlm, batch, layers=layer, positions="text")
    assert torch.equal(on_text.states[layer], expected[~image & valid])
    assert len(on_text.states[layer]) + len(on_image.states[layer]) == int(valid.sum())

    custom = torch.zeros_like(valid)
    custom[:, -2] = True
    masked = record(vlm, batch, layers=layer, positions=custom)
    assert torch.equal(masked.states[layer], expected[:, -2])


def test_record_keeps_only_the_requested_layers_and_stops_early(vlm: VLM, batch: Any) -> None:
    last = vlm.adapter.num_layers - 1
    before = hooks(vlm)
    calls: list[int] = []
    with add_layer_hooks(vlm.adapter.decoder_layers, lambda i, h: calls.append(i), [last]):
        rec = record(vlm, batch, layers=[0], positions="last")
        assert calls == [], "the forward should stop after layer 0"
        both = record(vlm, batch, layers=[-1, 0], positions="last")
        assert calls == [last]
    assert rec.layers == [0] and set(rec.states) == {0}
    assert both.layers == [0, last] and set(both.states) == {0, last}
    assert both.stacked().shape == (2, 3, vlm.adapter.hidden_size)
    assert hooks(vlm) == before


def test_record_leaves_the_model_bit_identical(vlm: VLM, batch: Any) -> None:
    hooked = hooks(vlm)
    with torch.inference_mode():
        before = vlm.model(**batch).logits
    record(vlm, batch, layers="all", positions="all")
    assert hooks(vlm) == hooked

    def explode(index: int, hidden: torch.Tensor) -> None:
        raise RuntimeError("boom inside the forward")

    with add_layer_hooks(vlm.adapter.decoder_layers, explode, [0]), pytest.raises(RuntimeError, match="boom"):
        record(vlm, batch, layers=[1, 2], positions="image")
    assert hooks(vlm) == hooked
    with torch.inference_mode():
        after = vlm.model(**batch).logits
    assert torch.equal(before, after)


def test_bad_position_mask_is_rejected_before_any_hook(vlm: VLM, batch: Any) -> None:
    hooked = hooks(vlm)
    with pytest.raises(ValueError, match="position mask shape"):
        record(vlm, batch, layers=0, positions=torch.ones(1, 2, dtype=torch.bool))
    assert hooks(vlm) == hooked


# -- helpers (no model) ---------------------------------------------------------------------------
def test_last_token_index_for_left_and_right_padding() -> None:
    left = torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
    right = torch.tensor([[1, 1, 0, 0], [1, 1, 1, 0]])
    assert last_token_index(left).tolist() == [3, 3]
    assert last_token_index(right).tolist() == [1, 2]


def test_position_mask_rejects_unknown_names(tiny_vlm: Callable[[str], VLM]) -> None:
    llava = tiny_vlm("llava")
    batch = llava.build_inputs(["describe the image ."])
    assert position_mask(llava, batch, "last") is None
    with pytest.raises(ValueError, match="positions must be"):
        position_mask(llava, batch, "first")  # type: ignore[arg-type]


def test_layers_skipped_on_text_only_input_report_what_they_pass_on(tiny_vlm: Callable[[str], VLM]) -> None:
    """Mllama skips its cross-attention layers without an image: their hooks never fire, and the
    residual stream they pass on is the previous layer's output."""
    vlm = tiny_vlm("mllama")
    batch = vlm.build_inputs(list(PROMPTS))
    cross = vlm.adapter.cross_attention_layers  # type: ignore[attr-defined]
    assert vlm.adapter.skipped_layers(batch) == frozenset(cross)
    assert (
        vlm.adapter.skipped_layers(vlm.build_inputs(PROMPTS[:1], [noise_image((40, 30), 0)])) == frozenset()
    )
    rec = record(vlm, batch, layers="all", positions="all")
    assert rec.layers == list(range(vlm.adapter.num_layers))
    with torch.inference_mode():
        out = vlm.model(**batch, output_hidden_states=True)
    valid = batch["attention_mask"].bool()
    run = [i for i in rec.layers if i not in cross]
    assert len(out.hidden_states) == len(run) + 1  # transformers drops the skipped layers
    for i in cross:
        assert torch.equal(rec.states[i], rec.states[i - 1])
    assert torch.equal(rec.states[run[0]], out.hidden_states[1][valid])
    only_cross = record(vlm, batch, layers=cross, positions="last")
    assert set(only_cross.states) == set(cross)
