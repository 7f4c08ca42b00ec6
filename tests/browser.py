"""Open a page in headless Chromium as a person would: a screenshot, and the console's errors."""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "chromium not found: ./scripts/setup.sh installs it (Debian package chromium)"
    return path


def screenshot(page: Path, png: Path, *, width: int = 1200, height: int = 2400) -> list[str]:
    """Write ``png`` of ``page``; return the console's error lines (an empty list for a clean page)."""
    with tempfile.TemporaryDirectory() as profile:
        run = subprocess.run([chromium(), "--headless", "--no-sandbox", "--disable-gpu",
                              "--disable-background-networking", f"--user-data-dir={profile}", "--enable-logging=stderr",
                              "--v=0", f"--window-size={width},{height}", f"--screenshot={png}",
                              page.resolve().as_uri()], capture_output=True, text=True, timeout=120)
    assert png.is_file() and png.stat().st_size > 1000, run.stderr[-2000:]
    return [line for line in run.stderr.splitlines()
            if "CONSOLE" in line and ("Error" in line or "Uncaught" in line)]
