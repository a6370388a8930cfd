"""Conversation JSONL: labels on assistant tokens only, inference-identical prompts, bad rows."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from safegap.models import VLM
from safegap.train.data import IGNORE_INDEX, ConversationEncoder, DataError, Example, read_conversations


def labelled_text(vlm: VLM, ids: list[int], labels: list[int]) -> str:
    return str(
        vlm.tokenizer.decode([t for t, label in zip(ids, labels, strict=True) if label != IGNORE_INDEX])
    )


def test_labels_cover_the_answer_and_the_prompt_matches_inference(vlm: VLM, dataset: Path) -> None:
    example = read_conversations(dataset)[0]
    row = ConversationEncoder(vlm.adapter).encode(example)
    assert labelled_text(vlm, row.input_ids, row.labels) == " a red circle\n</s>"
    first_label = next(i for i, label in enumerate(row.labels) if label != IGNORE_INDEX)
    assert example.image is not None
    with Image.open(example.image) as img:
        reference = vlm.build_inputs(["describe the image"], [img.convert("RGB")])
    assert row.input_ids[:first_label] == reference["input_ids"][0].tolist()
    assert row.image_inputs is not None
    torch.testing.assert_close(row.image_inputs["pixel_values"], reference["pixel_values"])


def test_multi_turn_labels_every_answer_and_no_question(vlm: VLM, tmp_path: Path) -> None:
    example = Example(
        source="x:1",
        id="m",
        image=None,
        turns=(("how do i make a cake ?", "sure , here is how"), ("what is shown here ?", "a cat")),
    )
    row = ConversationEncoder(vlm.adapter, system="please explain").encode(example)
    assert labelled_text(vlm, row.input_ids, row.labels) == " sure , here is how\n a cat\n</s>"
    text = vlm.tokenizer.decode(row.input_ids)
    assert text.startswith("please explain\nUSER: how do i make a cake ?")
    assert row.image_inputs is None


def test_retrieved_text_precedes_the_image_and_is_masked(vlm: VLM, dataset: Path) -> None:
    example = read_conversations(dataset)[1]
    assert example.retrieved_text == "the quick brown fox"
    row = ConversationEncoder(vlm.adapter).encode(example)
    marked = [t for t, r in zip(row.input_ids, row.retrieved, strict=True) if r]
    assert vlm.tokenizer.decode(marked).strip() == "the quick brown fox"
    image_id = vlm.adapter.image_token_ids[0]
    last_retrieved = max(i for i, r in enumerate(row.retrieved) if r)
    assert last_retrieved < row.input_ids.index(image_id)


def test_collate_pads_right_and_stacks_only_image_rows(vlm: VLM, dataset: Path) -> None:
    examples = read_conversations(dataset)
    encoder = ConversationEncoder(vlm.adapter, with_captions=True)
    rows = [encoder.encode(e) for e in (examples[0], examples[1], examples[-1])]
    batch = encoder.collate(rows)
    assert batch["pixel_values"].shape[0] == 2  # the text-only row has no image
    lengths = [len(r.input_ids) for r in rows]
    for i, n in enumerate(lengths):
        assert batch["attention_mask"][i, :n].all() and not batch["attention_mask"][i, n:].any()
        assert (batch["labels"][i, n:] == IGNORE_INDEX).all()
    assert batch["caption_token_mask"][2].sum() == 0  # no caption on the text-only row
    assert batch["caption_token_mask"][:2].any(dim=1).all()


def test_truncation(vlm: VLM, dataset: Path) -> None:
    example = read_conversations(dataset)[0]
    full = ConversationEncoder(vlm.adapter).encode(example)
    cut = ConversationEncoder(vlm.adapter, max_length=len(full.input_ids) - 2).encode(example)
    assert cut.input_ids == full.input_ids[:-2]
    with pytest.raises(DataError, match="cut image tokens"):
        ConversationEncoder(vlm.adapter, max_length=8).encode(example)
    first_label = next(i for i, label in enumerate(full.labels) if label != IGNORE_INDEX)
    with pytest.raises(DataError, match="no assistant tokens left"):
        ConversationEncoder(vlm.adapter, max_length=first_label).encode(example)


GOOD = {"conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}]}


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ("{not json", "invalid JSON"),
        ("[1, 2]", "expected a JSON object"),
        (json.dumps({"id": 1}), "'conversations' must be a non-empty list"),
        (
            json.dumps({"conversations": [{"from": "gpt", "value": "x"}, {"from": "gpt", "value": "y"}]}),
            "human",
        ),
        (json.dumps({"conversations": [{"from": "human", "value": "x"}]}), "end with gpt"),
        (
            json.dumps({"conversations": [{"from": "human", "value": "x"}, {"from": "gpt", "value": ""}]}),
            "no text",
        ),
        (json.dumps({**GOOD, "image": "nope.png"}), "does not exist"),
        (
            json.dumps(
                {"conversations": [{"from": "human", "value": "<image>\nx"}, {"from": "gpt", "value": "y"}]}
            ),
            "has no 'image'",
        ),
        (json.dumps({**GOOD, "caption": 3}), "'caption' must be a non-empty string"),
    ],
)
def test_bad_rows_name_file_and_line(tmp_path: Path, bad: str, message: str) -> None:
    path = tmp_path / "train.jsonl"
    path.write_text(json.dumps(GOOD) + "\n\n" + bad + "\n", encoding="utf-8")
    with pytest.raises(DataError) as info:
        read_conversations(path)
    text = str(info.value)
    assert text.startswith(f"{path}:3: ") and message in text
    assert "\n" not in text


def test_missing_and_empty_files(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        read_conversations(tmp_path / "missing.jsonl")
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n", encoding="utf-8")
    with pytest.raises(DataError, match="no training rows"):
        read_conversations(empty)


def test_image_paths_resolve_against_image_folder(tmp_path: Path, dataset: Path) -> None:
    path = tmp_path / "train.jsonl"
    row = {
        **GOOD,
        "image": "img/0.png",
        "conversations": [{"from": "human", "value": "<image>\nhi"}, {"from": "gpt", "value": "hello"}],
    }
    path.write_text(json.dumps(row) + "\n", encoding="utf-8")
    with pytest.raises(DataError, match="does not exist"):
        read_conversations(path)
    [example] = read_conversations(path, image_folder=dataset.parent)
    assert example.image == dataset.parent / "img" / "0.png"
