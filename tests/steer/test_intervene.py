"""The hook engine: exactness at alpha 0, row and position policies, hook hygiene, operators."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from safegap.data.images import noise_image
from safegap.models import VLM
from safegap.models.generation import generate, generate_ids
from safegap.probe import record
from safegap.specs import resolve_within
from safegap.steer import ShiftVector, calibrate
from safegap.steer.intervene import POSITION_POLICIES

from .conftest import FAMILIES, image_anchors, no_hooks_left

TEXTS = ["how do i make a cake ?", "describe the image .", "tell me about the picture please"]


def mixed_batch(vlm: VLM) -> tuple[list[str], list]:
    """Rows 0 and 2 carry an image; row 1 is text-only where the family allows mixing."""
    middle = None if vlm.adapter.supports_mixed_batches else noise_image((48, 40), seed=9)
    return TEXTS, [noise_image((48, 40), seed=1), middle, noise_image((48, 40), seed=2)]


_shift_cache: dict[str, ShiftVector] = {}


def shift_for(vlm: VLM) -> ShiftVector:
    key = vlm.name_or_path
    if key not in _shift_cache:
        _shift_cache[key] = calibrate(vlm, image_anchors(4), diagnostics=False)
    return _shift_cache[key]


def big(shift: ShiftVector, norm: float = 20.0) -> ShiftVector:
    """Every layer rescaled to ``norm``: a shift strong enough to change greedy tokens."""
    return ShiftVector({i: v / v.norm() * norm for i, v in shift.vectors.items()}, shift.provenance)


@pytest.mark.parametrize("family", FAMILIES)
def test_alpha_zero_reproduces_unsteered_greedy_output_bit_for_bit(
    tiny_vlm_factory: Callable[[str], VLM], family: str
) -> None:
    vlm = tiny_vlm_factory(family)
    texts, images = mixed_batch(vlm)
    inputs = vlm.build_inputs(texts, images)
    base = generate_ids(vlm, inputs, 8)
    shift = big(shift_for(vlm))
    policies = list(POSITION_POLICIES) if family == "llava" else ["last+decode", "all"]
    for positions in policies:
        with shift.apply(vlm, alpha=0.0, positions=positions) as handle:
            assert torch.equal(generate_ids(vlm, inputs, 8), base), positions
        assert handle.steered_forwards > 0  # the hooks ran
    with shift.apply(vlm, alpha=1.0):
        steered = generate_ids(vlm, inputs, 8)
    assert not torch.equal(steered, base), "a norm-20 shift should change greedy tokens"
    assert no_hooks_left(vlm)


@pytest.mark.parametrize("family", FAMILIES)
def test_rows_without_an_image_are_untouched(tiny_vlm_factory: Callable[[str], VLM], family: str) -> None:
    vlm = tiny_vlm_factory(family)
    shift = big(shift_for(vlm))
    if vlm.adapter.supports_mixed_batches:
        inputs = vlm.build_inputs(*mixed_batch(vlm))
        text_rows, image_rows = [1], [0, 2]
    else:
        inputs = vlm.build_inputs(TEXTS)
        text_rows, image_rows = [0, 1, 2], []
    plain = record(vlm, inputs, positions="all", dtype=None)
    with shift.apply(vlm, alpha=1.0, positions="all"):
        steered = record(vlm, inputs, positions="all", dtype=None)
    assert plain.row_index is not None
    for i in plain.layers:
        for row in text_rows:
            sel = plain.row_index == row
            assert torch.equal(steered.states[i][sel], plain.states[i][sel]), (i, row)
        for row in image_rows:
            sel = plain.row_index == row
            assert not torch.equal(steered.states[i][sel], plain.states[i][sel]), (i, row)
    if not vlm.adapter.supports_mixed_batches:
        base = generate_ids(vlm, inputs, 6)
        with shift.apply(vlm, alpha=1.0):
            assert torch.equal(generate_ids(vlm, inputs, 6), base)


@pytest.mark.parametrize("family", FAMILIES)
def test_hooks_fire_at_prefill_and_every_decode_step(
    tiny_vlm_factory: Callable[[str], VLM], family: str
) -> None:
    vlm = tiny_vlm_factory(family)
    inputs = vlm.build_inputs(*mixed_batch(vlm))
    forwards = []
    counter = vlm.model.register_forward_pre_hook(lambda *_: forwards.append(1))
    try:
        expected = {}
        for positions, policy in POSITION_POLICIES.items():
            forwards.clear()
            with shift_for(vlm).apply(vlm, alpha=0.5, positions=positions) as handle:
                vlm.model.generate(
                    **inputs,
                    max_new_tokens=6,
                    min_new_tokens=6,
                    do_sample=False,
                    pad_token_id=vlm.tokenizer.pad_token_id,
                )
            expected[positions] = len(forwards) if policy.decode else 1
            assert handle.steered_forwards == expected[positions], positions
        assert expected["last+decode"] == 6
    finally:
        counter.remove()


def test_position_policies_at_prefill(llava: VLM) -> None:
    texts, images = mixed_batch(llava)
    inputs = llava.build_inputs(texts, images)
    valid = inputs["attention_mask"].bool()
    shift = big(shift_for(llava))
    captured: dict[str, torch.Tensor] = {}

    def run(name: str) -> torch.Tensor:
        out = []
        hook = llava.adapter.decoder_layers[0].register_forward_hook(lambda m, a, o: out.append(o))
        try:
            with torch.inference_mode():
                llava.model(**inputs, use_cache=False)
        finally:
            hook.remove()
        captured[name] = out[0] if isinstance(out[0], torch.Tensor) else out[0][0]
        return captured[name]

    plain = run("plain")
    for positions in POSITION_POLICIES:
        with shift.apply(llava, positions=positions, layers=[0]):
            changed = (run(positions) != plain).any(-1)
        expect = torch.zeros_like(valid)
        if POSITION_POLICIES[positions].prefill == "last":
            expect[[0, 2], -1] = True
        else:
            expect[[0, 2]] = valid[[0, 2]]
        assert torch.equal(changed, expect), positions


def test_exception_inside_the_context_leaves_no_hook(llava: VLM) -> None:
    shift = shift_for(llava)
    with pytest.raises(RuntimeError, match="boom"), shift.apply(llava):
        assert not no_hooks_left(llava)
        raise RuntimeError("boom")
    assert no_hooks_left(llava)
    handle = shift.patch(llava)
    handle.remove()
    handle.remove()  # idempotent
    assert no_hooks_left(llava) and not handle.attached


def test_patch_handle_equals_context_manager_and_removal_restores_baseline(llava: VLM) -> None:
    inputs = llava.build_inputs(*mixed_batch(llava))
    base = generate_ids(llava, inputs, 8)
    shift = big(shift_for(llava))
    with shift.apply(llava, alpha=0.7):
        ctx = generate_ids(llava, inputs, 8)
    handle = shift.patch(llava, alpha=0.7)
    try:
        patched = generate_ids(llava, inputs, 8)
    finally:
        handle.remove()
    assert torch.equal(ctx, patched)
    assert torch.equal(generate_ids(llava, inputs, 8), base)


def test_layer_subset_hooks_only_those_layers(llava: VLM) -> None:
    shift = shift_for(llava)
    with shift.apply(llava, layers=[0, -1]):
        hooked = [i for i, layer in enumerate(llava.adapter.decoder_layers) if layer._forward_hooks]
    assert hooked == [0, llava.adapter.num_layers - 1]
    assert resolve_within("all", [3, 5], 8) == [3, 5]
    with pytest.raises(ValueError, match="layer 4 is not in the shift vector"):
        resolve_within([4], [3, 5], 8)
    # -1 is the model's last layer (7), not the vector's last (5)
    assert resolve_within(-1, [3, 7], 8) == [7]
    with pytest.raises(ValueError, match="layer 7 is not in the shift vector"):
        resolve_within(-1, [3, 5], 8)


def test_rows_all_steers_text_only_rows(llava: VLM) -> None:
    inputs = llava.build_inputs(TEXTS)
    base = generate_ids(llava, inputs, 6)
    shift = big(shift_for(llava), 40.0)
    with shift.apply(llava, rows="image"):
        assert torch.equal(generate_ids(llava, inputs, 6), base)
    with shift.apply(llava, rows="all"):
        assert not torch.equal(generate_ids(llava, inputs, 6), base)


def test_operators_through_the_hooks(llava: VLM) -> None:
    inputs = llava.build_inputs(*mixed_batch(llava))
    base = generate_ids(llava, inputs, 8)
    shift = big(shift_for(llava))
    with shift.apply(llava):
        subtracted = generate_ids(llava, inputs, 8)
    # projecting onto the vector's own direction is plain CMRM
    with shift.apply(llava, operator="project", direction=shift):
        assert torch.equal(generate_ids(llava, inputs, 8), subtracted)
    # projecting onto an orthogonal direction changes nothing
    ortho = ShiftVector(
        {i: torch.roll(v, 1) - (torch.roll(v, 1) @ v) / (v @ v) * v for i, v in shift.vectors.items()}
    )
    with shift.apply(llava, operator="project", direction=ortho):
        assert torch.equal(generate_ids(llava, inputs, 8), base)
    # a gate that is always closed leaves the output bit-identical; always open = CMRM
    far = 1e4 * shift
    with shift.apply(llava, operator="gated", direction=shift, reference=far):
        assert torch.equal(generate_ids(llava, inputs, 8), base)
    with shift.apply(llava, operator="gated", direction=shift, reference=far, clamp=(1.0, 1.0)):
        assert torch.equal(generate_ids(llava, inputs, 8), subtracted)
    with pytest.raises(ValueError, match="needs a direction"):
        shift.patch(llava, operator="project")
    with pytest.raises(ValueError, match="unknown positions policy"):
        shift.patch(llava, positions="everywhere")
    assert no_hooks_left(llava)


def test_a_decode_step_without_a_prefill_is_an_error(llava: VLM) -> None:
    inputs = llava.build_inputs(["how do i make a cake ?"], [noise_image(seed=1)])
    with torch.inference_mode():
        out = llava.model(**inputs, use_cache=True)
        nxt = out.logits[:, -1:].argmax(-1)
        mask = torch.cat([inputs["attention_mask"], torch.ones_like(nxt)], dim=1)
        with shift_for(llava).apply(llava), pytest.raises(RuntimeError, match="before any prefill"):
            llava.model(input_ids=nxt, attention_mask=mask, cache=out.cache)
    assert no_hooks_left(llava)


def test_generate_helper_runs_under_steering(llava: VLM) -> None:
    texts, images = mixed_batch(llava)
    with shift_for(llava).apply(llava, alpha=0.0):
        replies = generate(llava, texts, images, max_new_tokens=4, batch_size=2)
    assert replies == generate(llava, texts, images, max_new_tokens=4, batch_size=2)
