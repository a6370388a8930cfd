"""Every family adapter on its tiny random checkpoint: structure, inputs, hooks, generation."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch
from PIL import Image
from torch import nn

from safegap.data.images import blank_image, noise_image
from safegap.models import VLM
from safegap.models.adapter import resolve_attr
from safegap.models.generation import generate_ids
from safegap.models.hooks import add_layer_hooks, layer_hooks
from safegap.testing import FAMILIES as TINY_FAMILIES

FAMILIES = sorted(TINY_FAMILIES)
PROMPTS = (
    "describe the image .",
    "how do i make a cake ?",
    "tell me about the picture , please explain it .",
)
#: Wide, tall and square images: any-resolution families tile them differently.
SIZES = ((40, 30), (24, 56), (96, 20))
SYSTEM = "you are a helpful assistant ."


@pytest.fixture(scope="module", params=FAMILIES)
def vlm(request: pytest.FixtureRequest, tiny_vlm: Callable[[str], VLM]) -> VLM:
    return tiny_vlm(request.param)


def images(n: int = 3, seed: int = 0) -> list[Image.Image]:
    return [noise_image(SIZES[i % len(SIZES)], seed=seed + i) for i in range(n)]


def mixed_rows(vlm: VLM) -> list[Image.Image | None]:
    """Image, text-only, image: a mixed batch where the family allows one."""
    rows: list[Image.Image | None] = list(images())
    if vlm.adapter.supports_mixed_batches:
        rows[1] = None
    return rows


def assert_no_hooks(vlm: VLM) -> None:
    for layer in vlm.adapter.decoder_layers:
        assert not layer._forward_hooks and not layer._forward_pre_hooks


def greedy(vlm: VLM, batch: object, n: int = 6) -> torch.Tensor:
    return generate_ids(vlm, batch, max_new_tokens=n, min_new_tokens=n)


# -- structure ------------------------------------------------------------------------------------
def test_adapter_finds_the_language_model_layers(vlm: VLM) -> None:
    adapter = vlm.adapter
    assert adapter.decoder_layers is resolve_attr(vlm.model, adapter.layers_path)
    assert adapter.decoder_layers is vlm.model.get_decoder().layers
    assert adapter.num_layers == adapter.text_config.num_hidden_layers == 3
    assert adapter.hidden_size == 64
    facts = adapter.describe()
    assert facts["family"] == adapter.family and facts["num_layers"] == 3 and facts["hidden_size"] == 64
    config_id = getattr(vlm.model.config, "image_token_id", None) or vlm.model.config.image_token_index
    assert adapter.image_token_ids[0] == config_id


def test_falls_back_to_get_decoder_when_the_known_path_is_missing(vlm: VLM) -> None:
    class Moved(type(vlm.adapter)):  # type: ignore[misc]
        layers_path = "model.no_such_module.layers"

    moved = Moved(vlm.model, vlm.processor, vlm.tokenizer)
    assert moved.decoder_layers is vlm.adapter.decoder_layers


def test_explicit_layers_path_is_not_second_guessed(vlm: VLM) -> None:
    cls = type(vlm.adapter)
    with pytest.raises(AttributeError, match="model.nope"):
        cls(vlm.model, vlm.processor, vlm.tokenizer, layers_path="model.nope.layers")
    vision = next(
        name
        for name, module in vlm.model.named_modules()
        if isinstance(module, nn.ModuleList) and len(module) != 3 and ("vision" in name or "visual" in name)
    )
    with pytest.raises(ValueError, match="not the language model's decoder"):
        cls(vlm.model, vlm.processor, vlm.tokenizer, layers_path=vision)


# -- 1. forward with an image ---------------------------------------------------------------------
def test_forward_with_images_of_several_shapes(vlm: VLM) -> None:
    batch = vlm.build_inputs(list(PROMPTS), images())
    with torch.inference_mode():
        logits = vlm.model(**batch).logits
    assert logits.shape[:2] == batch["input_ids"].shape
    assert torch.isfinite(logits).all()
    assert (vlm.adapter.image_token_mask(batch["input_ids"]).sum(dim=1) > 0).all()


def test_the_image_changes_the_output(vlm: VLM) -> None:
    def last_logits(image: Image.Image) -> torch.Tensor:
        with torch.inference_mode():
            return vlm.model(**vlm.build_inputs(PROMPTS[:1], [image])).logits[0, -1]  # type: ignore[no-any-return]

    assert not torch.equal(last_logits(noise_image((40, 30), seed=1)), last_logits(blank_image((40, 30))))


# -- 3./4. hooks during generation ----------------------------------------------------------------
@pytest.mark.parametrize("where", ["middle", "last"])
def test_hook_fires_on_prefill_and_every_decode_step(vlm: VLM, where: str) -> None:
    batch = vlm.build_inputs(PROMPTS[:1], images(1))
    index = vlm.adapter.num_layers // 2 if where == "middle" else vlm.adapter.num_layers - 1
    lengths: list[int] = []
    with layer_hooks(vlm.adapter.decoder_layers, lambda i, h: lengths.append(h.shape[1]), [index]):
        greedy(vlm, batch, n=5)
    assert lengths == [batch["input_ids"].shape[1], 1, 1, 1, 1]
    assert_no_hooks(vlm)


def test_removing_a_steering_hook_restores_greedy_outputs(vlm: VLM) -> None:
    batch = vlm.build_inputs(list(PROMPTS), mixed_rows(vlm))
    before = greedy(vlm, batch)
    push = torch.randn(vlm.adapter.hidden_size, generator=torch.Generator().manual_seed(0)) * 50
    handle = add_layer_hooks(vlm.adapter.decoder_layers, lambda i, h: h + push, [1])
    steered = greedy(vlm, batch)
    handle.remove()
    after = greedy(vlm, batch)
    assert not torch.equal(steered, before)
    assert torch.equal(after, before)
    assert_no_hooks(vlm)


def test_exception_inside_a_hook_leaves_no_hook_and_same_outputs(vlm: VLM) -> None:
    batch = vlm.build_inputs(PROMPTS[:1], images(1))
    before = greedy(vlm, batch)

    def explode(index: int, hidden: torch.Tensor) -> None:
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError, match="boom"), layer_hooks(vlm.adapter.decoder_layers, explode, [0, 2]):
        vlm.model(**batch)
    assert_no_hooks(vlm)
    assert torch.equal(greedy(vlm, batch), before)


# -- 5. left-padded batches -----------------------------------------------------------------------
def test_left_padded_batch_matches_one_by_one_generation(vlm: VLM) -> None:
    rows = mixed_rows(vlm)
    batch = vlm.build_inputs(list(PROMPTS), rows)
    assert vlm.dtype == torch.float32
    assert (batch["attention_mask"] == 0).any(), "the rows should need padding"
    together = greedy(vlm, batch)
    with torch.inference_mode():
        together_logits = vlm.model(**batch).logits[:, -1]
    for i, (text, image) in enumerate(zip(PROMPTS, rows, strict=True)):
        single = vlm.build_inputs([text], None if image is None else [image])
        alone = greedy(vlm, single)
        assert torch.equal(together[i], alone[0]), f"row {i}: {together[i].tolist()} != {alone[0].tolist()}"
        # Greedy tokens can survive a real difference; the logits show one (padding alone moves
        # them by float rounding, ~1e-6).
        with torch.inference_mode():
            alone_logits = vlm.model(**single).logits[0, -1]
        torch.testing.assert_close(together_logits[i], alone_logits, rtol=1e-4, atol=1e-4)


def test_batch_rows_are_the_rows_built_alone(vlm: VLM) -> None:
    rows = mixed_rows(vlm)
    batch = vlm.build_inputs(list(PROMPTS), rows)
    assert batch["input_ids"].shape == batch["attention_mask"].shape
    for i, (text, image) in enumerate(zip(PROMPTS, rows, strict=True)):
        alone = vlm.build_inputs([text], None if image is None else [image])
        kept = batch["attention_mask"][i].bool()
        assert batch["input_ids"][i][kept].tolist() == alone["input_ids"][0].tolist()
        assert batch["input_ids"][i][~kept].eq(vlm.tokenizer.pad_token_id).all()
        assert kept[-1] and (kept.cumsum(0) > 0).sum() == kept.sum(), "padding must be on the left"


def test_mixed_batches_follow_the_declared_capability(vlm: VLM) -> None:
    rows: list[Image.Image | None] = [images(1)[0], None]
    if vlm.adapter.supports_mixed_batches:
        vlm.build_inputs(list(PROMPTS[:2]), rows)
    else:
        with pytest.raises(ValueError, match="cannot mix"):
            vlm.build_inputs(list(PROMPTS[:2]), rows)


# -- 6. text-only = image row minus the image span ------------------------------------------------
def test_text_only_row_is_the_image_row_without_the_image_span(vlm: VLM) -> None:
    adapter = vlm.adapter
    image_ids = set(adapter.image_token_ids)
    wrapper_ids = set(adapter.image_wrapper_token_ids)
    systems = (None, SYSTEM) if adapter.supports_system else (None,)
    for text in PROMPTS:
        for system in systems:
            for image in images(len(SIZES), seed=7):
                pictured = vlm.build_inputs([text], [image], system)["input_ids"][0].tolist()
                plain = vlm.build_inputs([text], None, system)["input_ids"][0].tolist()
                assert not set(plain) & (image_ids | wrapper_ids), "text-only rows hold no image tokens"
                prefix = 0
                while prefix < len(plain) and plain[prefix] == pictured[prefix]:
                    prefix += 1
                suffix = 0
                while suffix < len(plain) - prefix and plain[-1 - suffix] == pictured[-1 - suffix]:
                    suffix += 1
                assert prefix + suffix == len(plain), f"{text!r}: rows differ outside one span"
                span = pictured[prefix : len(pictured) - suffix]
                assert sum(t in image_ids for t in span) == sum(t in image_ids for t in pictured) > 0
                others = [t for t in span if t not in image_ids | wrapper_ids]
                assert vlm.tokenizer.decode(others).strip() == "", f"span holds text: {others}"


def test_render_differs_only_by_the_placeholder(vlm: VLM) -> None:
    adapter = vlm.adapter
    pictured = adapter.render(PROMPTS[0], True)
    plain = adapter.render(PROMPTS[0], False)
    assert adapter.image_placeholder in pictured and adapter.image_placeholder not in plain
    assert PROMPTS[0] in plain


def test_record_leaves_no_hook_and_same_outputs(vlm: VLM) -> None:
    from safegap.probe import record

    batch = vlm.build_inputs(list(PROMPTS), mixed_rows(vlm))
    before = greedy(vlm, batch)
    record(vlm, batch, layers=[0, 2], positions="image")
    assert_no_hooks(vlm)
    assert torch.equal(greedy(vlm, batch), before)
