"""Debian's Chromium, headless, driven by Playwright: how every page test opens a browser.

CI must not pass by skipping: scripts/test.sh installs Chromium there, so under CI a missing
browser is an error; elsewhere the page tests are skipped with a note.
"""

import os
import shutil
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


def playwright_api():
    """Playwright's sync API, once Chromium is known to be there (else skip, or fail under CI)."""
    if not Path(CHROMIUM).exists():
        if os.environ.get("CI"):
            raise RuntimeError("Chromium is missing; scripts/test.sh installs it (apt-get install chromium)")
        pytest.skip("no Chromium on this machine (scripts/test.sh installs it)", allow_module_level=True)
    return pytest.importorskip("playwright.sync_api")
