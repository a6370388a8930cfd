"""A tiny LLaVA and a small conversation dataset, built once per session."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch

from safegap.data.images import noise_image
from safegap.models import VLM, load_vlm
from safegap.testing import build_tiny

os.environ.setdefault("HF_HUB_OFFLINE", "1")

ANSWERS = ("a red circle", "a blue square", "the quick brown fox", "a cat on a table")


def write_dataset(
    root: Path, rows: int = 16, captions: bool = True, retrieved: bool = True, text_rows: int = 1
) -> Path:
    """``root/train.jsonl`` with ``rows`` image rows (noise images) and ``text_rows`` text-only rows."""
    (root / "img").mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(rows):
        noise_image((32, 32), i).save(root / "img" / f"{i}.png")
        row: dict[str, object] = {
            "id": f"r{i}",
            "image": f"img/{i}.png",
            "conversations": [
                {"from": "human", "value": "<image>\ndescribe the image"},
                {"from": "gpt", "value": ANSWERS[i % 4]},
            ],
        }
        if captions:
            row["caption"] = f"{ANSWERS[i % 4]} on a white table"
        if retrieved and i % 2:
            row["retrieved_text"] = ANSWERS[(i + 1) % 4]
        lines.append(row)
    for i in range(text_rows):
        lines.append(
            {
                "id": f"t{i}",
                "conversations": [
                    {"from": "human", "value": "how do i make a cake ?"},
                    {"from": "gpt", "value": "sure , here is how : first mix the flour"},
                ],
            }
        )
    path = root / "train.jsonl"
    path.write_text("".join(json.dumps(x) + "\n" for x in lines), encoding="utf-8")
    return path


@pytest.fixture(scope="session")
def tiny_llava_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    torch.manual_seed(0)
    return build_tiny("llava", tmp_path_factory.mktemp("tiny_llava_train"), seed=0)


@pytest.fixture(scope="session")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_dataset(tmp_path_factory.mktemp("train_data"))


@pytest.fixture
def vlm(tiny_llava_dir: Path) -> VLM:
    """A fresh model per test (tests change requires_grad and weights)."""
    return load_vlm(tiny_llava_dir)
