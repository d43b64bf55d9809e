"""The browser the UI tests drive: Debian's Chromium (``apt-get install chromium``; .ci/run installs it)."""

from __future__ import annotations

import os
import shutil


def browser_executable() -> str:
    """The Chromium binary: ``FLYWHEEL_TEST_CHROMIUM``, else ``chromium`` on the PATH.

    A missing browser fails the test that needs it, naming the fix, rather than skipping it.
    """
    path = os.environ.get("FLYWHEEL_TEST_CHROMIUM") or shutil.which("chromium") or shutil.which("chromium-browser")
    if not path:
        raise RuntimeError("the browser tests need Chromium: apt-get install chromium (or set FLYWHEEL_TEST_CHROMIUM)")
    return path
