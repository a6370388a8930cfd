"""Tiny checkpoints of every family, built once per session (a fraction of a second each)."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest
import torch

from safegap.models import VLM
from safegap.models.tiny import load_tiny

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(autouse=True, scope="module")
def one_thread() -> Iterator[None]:
    """Tiny models gain nothing from more threads, and on a shared machine two threads contend
    (measured here: 15 s with one thread vs 158 s with two for the families tests under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def tiny_vlm(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], VLM]:
    """``tiny_vlm(family)``: the loaded tiny checkpoint, cached for the session."""
    root = tmp_path_factory.mktemp("tiny_families")
    cache: dict[str, VLM] = {}

    def get(family: str) -> VLM:
        if family not in cache:
            torch.manual_seed(0)
            cache[family] = load_tiny(family, root)
        return cache[family]

    return get
