"""Fixtures shared across test packages."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch

from safegap.models import VLM
from safegap.testing import load_tiny

os.environ.setdefault("HF_HUB_OFFLINE", "1")


@pytest.fixture(scope="package")
def tiny_vlm(tmp_path_factory: pytest.TempPathFactory) -> Callable[[str], VLM]:
    """``tiny_vlm(family)``: the family's tiny random checkpoint, loaded; built once per test
    package (a fraction of a second each), so one package's tests cannot leak into another's."""
    root = tmp_path_factory.mktemp("tiny_families")
    cache: dict[str, VLM] = {}

    def get(family: str) -> VLM:
        if family not in cache:
            torch.manual_seed(0)
            cache[family] = load_tiny(family, root)
        return cache[family]

    return get


@pytest.fixture(scope="module")
def one_thread() -> Iterator[None]:
    """One torch thread for the module. Tiny models gain nothing from more threads, and on a shared
    machine two threads contend (measured here: 15 s with one thread vs 158 s with two for the
    families tests under load)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


#: Headless Chromium as the report tests run it (no network, no profile reuse, no sandbox: root in CI).
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
)


@dataclass
class HeadlessChromium:
    """Runs the installed Chromium headless; skips the test where it is missing (fails in CI)."""

    tmp_path: Path

    def binary(self) -> str:
        for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
            found = shutil.which(name)
            if found:
                return found
        if os.environ.get("CI"):
            pytest.fail("chromium is required in CI (apt-get install -y chromium chromium-driver)")
        pytest.skip("chromium not installed (install: apt-get install -y chromium chromium-driver)")

    def run(self, url: str, *args: str, profile: str = "profile") -> subprocess.CompletedProcess[str]:
        """``chromium --headless ... ARGS URL`` with a fresh profile directory under the test's tmp."""
        command = [self.binary(), *CHROMIUM_FLAGS, f"--user-data-dir={self.tmp_path / profile}", *args, url]
        return subprocess.run(command, capture_output=True, text=True, timeout=120, check=False)


@pytest.fixture
def headless_chromium(tmp_path: Path) -> HeadlessChromium:
    return HeadlessChromium(tmp_path)
