"""Headless Chromium (Debian's `chromium`) for the tests of the HTML pages: the stats report and the
status page of `rlt-prep serve`."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest


def chromium() -> str:
    """The browser's path; skips the test where it is not installed, and fails it on CI, which installs it."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI"):
            pytest.fail("CI must install Debian's chromium (see .ci/run)")
        pytest.skip("chromium is not installed")
    return found


def render(
    url: str,
    profile: Path,
    *,
    budget_ms: int = 5000,
    screenshot: Path | None = None,
    window: tuple[int, int] = (1280, 900),
) -> str:
    """The DOM of ``url`` once the page has run for ``budget_ms`` of virtual time (which waits for its
    fetches), or with ``screenshot`` that PNG written instead (Chromium does one or the other)."""
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
             "--disable-background-networking", "--disable-component-update", "--disable-sync",
             f"--user-data-dir={profile}", f"--virtual-time-budget={budget_ms}"]  # fmt: skip
    if screenshot is None:
        flags.append("--dump-dom")
    else:
        flags += ["--hide-scrollbars", f"--window-size={window[0]},{window[1]}", f"--screenshot={screenshot}"]
    done = subprocess.run([chromium(), *flags, url], capture_output=True, text=True, timeout=120)
    if screenshot is not None and not screenshot.is_file():
        raise AssertionError(f"chromium wrote no screenshot: {done.stderr[-2000:]}")
    return done.stdout
