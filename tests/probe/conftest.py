"""Every test here runs on the tiny checkpoints of every family (``tiny_vlm``), on one thread."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="module")
def _on_one_thread(one_thread: None) -> None:
    """``one_thread`` (tests/conftest.py) for every module here."""
