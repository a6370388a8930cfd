"""Fixtures shared across test packages."""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest

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
