"""A real server on a free loopback port (uvicorn in a thread) and a real browser (Debian chromium)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from tests.web_fakes import ServerThread, free_port  # noqa: F401  (re-exported for the tests)

CHROMIUM = "/usr/bin/chromium"
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="module")
def browser():
    # Module scope: Playwright's sync API keeps an event loop running in this thread while it is
    # open, which would break asyncio tests (asyncio.run, pytest-asyncio) collected after this module.
    if not os.path.exists(CHROMIUM):
        pytest.skip(f"{CHROMIUM} is absent (apt-get install -y chromium fonts-noto-cjk); browser tests skipped")
    sync_api = pytest.importorskip("playwright.sync_api", reason="Python Playwright is not installed")
    with sync_api.sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=CHROMIUM,
                               args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"])
        try:
            yield b
        finally:
            b.close()


def have_cjk_font() -> bool:
    return bool(shutil.which("fc-list")) and "CJK" in os.popen("fc-list 2>/dev/null | grep -i 'Noto Sans CJK' | head -1").read()
