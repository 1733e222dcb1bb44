"""Which Chromium the browser tests drive, and whether one must be installed first.

Debian's ``chromium`` (what CI installs) or any Chromium named by ``ZAPA_CHROMIUM`` is
used as it is; otherwise Playwright's own build, which ``python -m playwright install
chromium`` downloads. ``make test`` runs ``python tests/browser.py needs-install`` to
decide whether to download it.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

CANDIDATES = ("chromium", "chromium-browser", "google-chrome-stable", "google-chrome")

# Headless, and quiet on a network that reaches only this machine: no sync, no updates,
# no background requests.
LAUNCH_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def system_chromium() -> str | None:
    """A Chromium installed on this machine, or the one ``ZAPA_CHROMIUM`` names."""
    named = os.environ.get("ZAPA_CHROMIUM")
    if named:
        return named
    for name in CANDIDATES:
        found = shutil.which(name)
        if found:
            return found
    return None


def playwright_chromium() -> str | None:
    """Playwright's downloaded Chromium, if it has been installed."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        path = playwright.chromium.executable_path
    return path if Path(path).is_file() else None


def main(argv: list[str]) -> int:
    """``needs-install``: exit 0 when no Chromium is available (so one must be installed)."""
    if argv[1:] == ["needs-install"]:
        return 1 if system_chromium() or playwright_chromium() else 0
    print("usage: python tests/browser.py needs-install", file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv))
