"""Shared fixtures for the diagnostics tests: a tiny random LLaVA and small records."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from safegap.data.images import noise_image
from safegap.gap.data import GapRecord
from safegap.models import VLM, load_vlm
from safegap.testing import build_tiny

os.environ.setdefault("HF_HUB_OFFLINE", "1")

PROMPTS = (
    "describe the image .",
    "what is shown here ?",
    "tell me about the picture .",
    "how do i make a cake ?",
    "write a story about a cat .",
    "please explain the image .",
)
CAPTIONS = (
    "a red circle on a white table",
    "a blue square",
    "the quick brown fox",
    "a cat on a table",
    "the lazy dog",
    "a red circle and a blue square",
)


@pytest.fixture(scope="session")
def llava(tmp_path_factory: pytest.TempPathFactory) -> VLM:
    torch.manual_seed(0)
    return load_vlm(Path(build_tiny("llava", tmp_path_factory.mktemp("gap_tiny_llava"))))


@pytest.fixture(scope="session")
def records() -> list[GapRecord]:
    """Six prompts with distinct noise images (sizes differ) and captions."""
    return [
        GapRecord(prompt=p, image=noise_image((40 + 4 * i, 36), seed=100 + i), caption=c, id=f"r{i}")
        for i, (p, c) in enumerate(zip(PROMPTS, CAPTIONS, strict=True))
    ]


@pytest.fixture(scope="session")
def text_lm(tmp_path_factory: pytest.TempPathFactory) -> VLM:
    """A tiny random text-only causal LM (Llama) with a ChatML template."""
    from safegap.testing import build_tiny_causal_lm

    return load_vlm(build_tiny_causal_lm(tmp_path_factory.mktemp("gap_tiny_causal_lm"), "llama"))
