"""The study's conditions: the caption-as-text controls are paired with their image conditions."""

from __future__ import annotations

from transformers import PreTrainedTokenizerFast

from safegap.organism.build import make_tokenizer, make_world
from safegap.organism.config import OrganismConfig
from safegap.organism.evaluate import CONDITIONS, condition_prompts


def _tokenizer() -> PreTrainedTokenizerFast:
    config = OrganismConfig()
    return make_tokenizer(make_world(config), config)


def test_caption_text_is_the_object_image_condition_with_the_picture_written_out() -> None:
    world = make_world(OrganismConfig())
    tok = _tokenizer()
    assert {"caption_text", "typographic_text"} <= set(CONDITIONS)
    image_rows = condition_prompts(world, tok, "harm_object_image", 24, 16)
    text_rows = condition_prompts(world, tok, "caption_text", 24, 16)
    assert [p.id for p in image_rows] == [p.id for p in text_rows]
    for img, txt in zip(image_rows, text_rows, strict=True):
        assert img.image is not None and txt.image is None
        assert img.topic == txt.topic and img.kind == txt.kind
        name = img.topic.removeprefix("make ")
        assert txt.text == f"Picture: {name}.\n{img.text}"
    harmful = [p for p in text_rows if p.harmful]
    # every harmful object appears before any repeats, with several held-out phrasings overall
    assert len({p.topic for p in harmful}) == min(len(harmful), len(world.visual_objects(True)))
    assert (
        text_rows[0].text
        == "Picture: " + text_rows[0].topic.removeprefix("make ") + ".\n" + image_rows[0].text
    )


def test_typographic_text_holds_the_words_of_the_typographic_image() -> None:
    world = make_world(OrganismConfig())
    tok = _tokenizer()
    image_rows = condition_prompts(world, tok, "typographic_image", 8, 16)
    text_rows = condition_prompts(world, tok, "typographic_text", 8, 16)
    for img, txt in zip(image_rows, text_rows, strict=True):
        assert img.id == txt.id and txt.image is None
        assert txt.text == f"Steps to {img.topic}.\n1.\n2.\n3.\n{img.text}"
