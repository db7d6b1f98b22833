"""Which Chromium the console's browser tests drive.

In order: the path in ``CRM_CHROMIUM_PATH``; the system's Chromium
(``/usr/bin/chromium``, or ``chromium`` / ``chromium-browser`` / ``google-chrome``
on the PATH; Debian's package ``chromium``, which ``make test`` installs when it runs
as root); Playwright's own download (``playwright install chromium``, where the
network allows it). No browser is never a reason to skip: the tests fail with
:data:`HOW_TO_GET_ONE`.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

ENV = "CRM_CHROMIUM_PATH"
SYSTEM_PATHS = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
SYSTEM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
# What works on a machine with no display and a closed network (and as root: no sandbox).
LAUNCH_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
HOW_TO_GET_ONE = (
    "no Chromium for the console's browser tests. Get one of: "
    f"(1) set {ENV} to a Chromium/Chrome binary; "
    "(2) install the system's package (Debian/Ubuntu: `sudo apt-get install chromium`; "
    "`make test` does this itself when it runs as root); "
    "(3) `.venv/bin/playwright install chromium` (Playwright's own download, where reachable)."
)


class NoBrowser(RuntimeError):
    pass


@dataclass(frozen=True)
class Browser:
    path: str
    source: str  # "configured", "system" or "playwright"


def _executable(path: str) -> bool:
    p = Path(path)
    return p.is_file() and os.access(p, os.X_OK)


def resolve(
    env: Mapping[str, str] | None = None,
    which: Callable[[str], str | None] = shutil.which,
    playwright_path: Callable[[], str | None] | None = None,
    exists: Callable[[str], bool] = _executable,
) -> Browser:
    """The browser to drive, or :class:`NoBrowser` saying how to get one."""
    env = os.environ if env is None else env
    configured = env.get(ENV, "").strip()
    if configured:
        if exists(configured):
            return Browser(configured, "configured")
        raise NoBrowser(f"{ENV}={configured} is not an executable file; {HOW_TO_GET_ONE}")
    for path in SYSTEM_PATHS:
        if exists(path):
            return Browser(path, "system")
    for name in SYSTEM_NAMES:
        found = which(name)
        if found:
            return Browser(found, "system")
    own = (playwright_path or _playwright_chromium)()
    if own and exists(own):
        return Browser(own, "playwright")
    raise NoBrowser(HOW_TO_GET_ONE)


def _playwright_chromium() -> str | None:
    """Where Playwright's own Chromium would be, if it was downloaded (None without Playwright)."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    try:
        with sync_playwright() as p:
            return str(p.chromium.executable_path)
    except Exception:  # Playwright's driver missing or broken: no browser from it
        return None


if __name__ == "__main__":  # `python -m crm_platform.devinfra.browser`: which one, or why none
    import sys

    try:
        found = resolve()
    except NoBrowser as exc:
        print(exc, file=sys.stderr)
        sys.exit(1)
    print(f"{found.path} ({found.source})")
