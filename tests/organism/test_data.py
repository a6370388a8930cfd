"""Tokenizer, images, training rows and evaluation prompts of the organism (no training)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from PIL import Image

from safegap.organism import scenes
from safegap.organism.build import make_model, make_tokenizer, make_world
from safegap.organism.config import OrganismConfig
from safegap.organism.data import Example, image_pool, instruct_examples, render_prompt
from safegap.organism.evaluate import CONDITIONS, condition_prompts, filler_of_length
from safegap.organism.study import calibration_data
from safegap.organism.training import IGNORE, collate, encode


@pytest.fixture(scope="module")
def parts():  # type: ignore[no-untyped-def]
    config = OrganismConfig()
    world = make_world(config)
    tok = make_tokenizer(world, config)
    model, processor = make_model(config, tok, seed=0)
    return config, world, tok, model, processor


def test_tokenizer_is_deterministic_byte_level_and_keeps_image_atomic(parts) -> None:  # type: ignore[no-untyped-def]
    config, world, tok, _, _ = parts
    again = make_tokenizer(world, config)
    assert tok.get_vocab() == again.get_vocab()
    assert len(tok) <= config.arch.vocab_size + 8
    text = "Write a tutorial on how to make a bomb — naïve café 💣"
    assert tok.decode(tok(text, add_special_tokens=False)["input_ids"]) == text
    assert tok.tokenize("<image>") == ["<image>"]
    # words of the world are whole tokens
    assert tok.tokenize(" bomb") == ["Ġbomb"] and tok.tokenize("USER") == ["USER"]


def test_render_prompt_matches_the_chat_template(parts) -> None:  # type: ignore[no-untyped-def]
    from safegap.models.adapter import ProcessorParts
    from safegap.models.llava import LlavaAdapter

    _, _, tok, model, processor = parts
    adapter = LlavaAdapter(model, ProcessorParts(tok, processor.image_processor, tok.chat_template), tok)
    for has_image in (False, True):
        assert adapter.render("How do I bake a cake?", has_image) == render_prompt(
            "How do I bake a cake?", has_image
        )


def test_encode_masks_prompts_and_expands_images(parts) -> None:  # type: ignore[no-untyped-def]
    _, _, tok, model, _ = parts
    n_img = model.config.image_seq_length
    rows = encode(tok, [Example("Describe it.", "A red circle.", image=0), Example("plain text here")], n_img)
    chat, plain = rows
    image_id = tok.convert_tokens_to_ids("<image>")
    assert chat.ids.count(image_id) == n_img
    supervised = [i for i, lab in zip(chat.ids, chat.labels, strict=True) if lab != IGNORE]
    assert tok.decode(supervised) == " A red circle.</s>"
    assert plain.labels == plain.ids and plain.ids[-1] == tok.eos_token_id
    batch = collate(rows, tok.pad_token_id, torch.zeros(3, 3, 64, 64))
    assert batch["pixel_values"].shape == (1, 3, 64, 64)
    assert batch["input_ids"].shape[0] == 2 and batch["attention_mask"][1].sum() == len(plain.ids)


def test_images() -> None:
    rng = random.Random(0)
    s = scenes.scene(rng)
    assert s.image.size == (scenes.SIZE, scenes.SIZE) and s.caption.startswith(("a ", "an "))
    a, b = (
        scenes.object_image("a pipe bomb", random.Random(1)),
        scenes.object_image("a cake", random.Random(1)),
    )
    assert not np.array_equal(np.asarray(a), np.asarray(b))
    assert scenes.glyph("a cake") == scenes.glyph("a cake")
    assert isinstance(scenes.typographic("Steps to bake a cake."), Image.Image)
    assert scenes.blank().getpixel((3, 3)) == (255, 255, 255)
    assert np.array_equal(np.asarray(scenes.noise(1)), np.asarray(scenes.noise(1)))


def test_stage3_data_is_benign_only(parts) -> None:  # type: ignore[no-untyped-def]
    _, world, _, _, processor = parts
    rng = random.Random(0)
    pool = image_pool(rng, 20, world.visual_objects(False), 2, processor.image_processor)
    rows = instruct_examples(world, pool, rng, 300, lookalike_share=0.2)
    assert all(r.image is not None for r in rows)
    assert not any("sorry" in (r.reply or "").lower() for r in rows)
    harmful = {t.text for t in world.all_topics() if t.harmful}
    # (a lookalike may contain a harmful phrase in a safe context: "rob a bank in a video game")
    assert not any(topic in r.text for r in rows if r.kind != "lookalike_image" for topic in harmful)
    assert {r.kind for r in rows} == {"describe", "object_request", "lookalike_image", "benign_image"}


def test_condition_prompts_are_paired_and_held_out(parts) -> None:  # type: ignore[no-untyped-def]
    _, world, tok, _, _ = parts
    base = condition_prompts(world, tok, "text", 16, 16)
    for condition in ("benign_image", "blank_image", "noise_image", "text_filler"):
        rows = condition_prompts(world, tok, condition, 16, 16)
        assert [(r.id, r.kind, r.topic) for r in rows] == [(r.id, r.kind, r.topic) for r in base]
        assert all(r.text.endswith(b.text) for r, b in zip(rows, base, strict=True))
    filler = condition_prompts(world, tok, "text_filler", 4, 16)[0]
    assert len(tok(filler.text.split("\n")[0], add_special_tokens=False)["input_ids"]) == 16
    for condition in CONDITIONS:
        rows = condition_prompts(world, tok, condition, 8, 16)
        kinds = {r.kind for r in rows}
        assert {"harmful", "benign"} <= kinds
        has_image = condition not in ("text", "text_filler", "caption_text", "typographic_text")
        assert all((r.image is not None) == has_image for r in rows)
    with pytest.raises(ValueError, match="unknown condition"):
        condition_prompts(world, tok, "sideways", 4, 16)


def test_filler_of_exact_length(parts) -> None:  # type: ignore[no-untyped-def]
    _, _, tok, _, _ = parts
    for n in (5, 16, 30):
        text = filler_of_length(tok, n, random.Random(n))
        assert len(tok(text, add_special_tokens=False)["input_ids"]) == n


def test_calibration_split_is_disjoint_from_eval(parts) -> None:  # type: ignore[no-untyped-def]
    _, world, _, _, _ = parts
    cal = calibration_data(world, n=32)
    eval_texts = {r.text for h in (True, False) for r in world.requests("eval", h)}
    train_texts = {r.text for h in (True, False) for r in world.requests("train", h)}
    assert len(cal.harmful) == len(cal.benign) == len(cal.images) == 32
    assert not (set(cal.harmful) | set(cal.benign)) & (eval_texts | train_texts)


def test_stage1_picture_rows_refuse_harmful_pictures_and_caption_the_rest(parts) -> None:  # type: ignore[no-untyped-def]
    from safegap.organism.data import chat_examples

    _, world, _, _, _ = parts
    rng = random.Random(0)
    rows = chat_examples(
        world, rng, ["a red circle"], 600, 0.4, 0.7, 2, picture_share=0.3, typographic_share=0.1
    )
    kinds = {r.kind for r in rows}
    assert {"picture_caption", "picture_harmful", "picture_benign", "typo_harmful", "typo_benign"} <= kinds
    for r in rows:
        if r.kind in ("picture_harmful", "typo_harmful"):
            assert "sorry" in (r.reply or "").lower()
        if r.kind in ("picture_benign", "typo_benign", "picture_caption"):
            assert "sorry" not in (r.reply or "").lower()
        if r.kind.startswith("picture"):
            assert r.text.startswith("Picture: ") and r.image is None
    # only training phrasings: the eval split's image-referencing templates never appear
    eval_templates = set(world.image_template_splits["eval"])
    assert not any(r.text.split("\n")[-1] in eval_templates for r in rows if r.kind.startswith("picture"))
