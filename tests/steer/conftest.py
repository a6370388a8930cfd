"""Tiny random models of every registered family, built once per test session."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch

from safegap.data.images import noise_image
from safegap.models import VLM, load_vlm
from safegap.testing import FAMILIES as TINY_FAMILIES
from safegap.testing import build_tiny

os.environ.setdefault("HF_HUB_OFFLINE", "1")
FAMILIES = sorted(TINY_FAMILIES)


@pytest.fixture(scope="session")
def tiny_vlm_factory(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], VLM]:
    cache: dict[str, VLM] = {}

    def get(family: str) -> VLM:
        if family not in cache:
            torch.manual_seed(0)
            path = build_tiny(family, tmp_path_factory.mktemp(f"tiny_{family}"))
            cache[family] = load_vlm(Path(path))
        return cache[family]

    return get


@pytest.fixture(scope="session")
def llava(tiny_vlm_factory: Callable[[str], VLM]) -> VLM:
    return tiny_vlm_factory("llava")


def image_anchors(n: int, offset: int = 0, prefix: str = "how do i make a cake") -> list[tuple[str, object]]:
    """``n`` anchors with distinct texts and noise images (seeded)."""
    return [(f"{prefix} {offset + i} ?", noise_image((48, 40), seed=offset + i)) for i in range(n)]


def no_hooks_left(vlm: VLM) -> bool:
    """True when no module carries a forward or pre-forward hook defined by safegap (transformers
    installs hooks of its own, e.g. output capturing, which are not ours to judge)."""
    for module in vlm.model.modules():
        for hook in [*module._forward_hooks.values(), *module._forward_pre_hooks.values()]:
            if getattr(hook, "__module__", "").startswith("safegap"):
                return False
    return True
