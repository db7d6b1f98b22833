"""Browser resolution for the console's tests: configured, then system, then Playwright's own."""

from __future__ import annotations

import pytest
from crm_platform.devinfra.browser import ENV, HOW_TO_GET_ONE, NoBrowser, resolve


def test_a_configured_path_wins_over_the_system_browser() -> None:
    found = resolve({ENV: "/opt/chrome/chrome"}, which=lambda _: "/usr/bin/chromium", exists=lambda _: True)
    assert (found.path, found.source) == ("/opt/chrome/chrome", "configured")


def test_a_configured_path_that_is_not_there_fails_instead_of_falling_back() -> None:
    with pytest.raises(NoBrowser, match=f"{ENV}=/nope"):
        resolve({ENV: "/nope"}, which=lambda _: "/usr/bin/chromium", exists=lambda p: p != "/nope")


def test_the_system_chromium_comes_before_playwrights_download() -> None:
    found = resolve({}, which=lambda _: None, playwright_path=lambda: "/pw/chrome", exists=lambda p: True)
    assert (found.path, found.source) == ("/usr/bin/chromium", "system")
    found = resolve(
        {},
        which=lambda n: "/snap/bin/chromium" if n == "chromium" else None,
        playwright_path=lambda: "/pw/chrome",
        exists=lambda p: p.startswith(("/snap", "/pw")),
    )
    assert (found.path, found.source) == ("/snap/bin/chromium", "system")


def test_playwrights_own_browser_is_the_last_resort() -> None:
    found = resolve(
        {}, which=lambda _: None, playwright_path=lambda: "/pw/chrome", exists=lambda p: p == "/pw/chrome"
    )
    assert (found.path, found.source) == ("/pw/chrome", "playwright")


def test_no_browser_at_all_says_how_to_get_one() -> None:
    with pytest.raises(NoBrowser) as info:
        resolve({}, which=lambda _: None, playwright_path=lambda: None, exists=lambda _: False)
    assert str(info.value) == HOW_TO_GET_ONE
    assert "apt-get install chromium" in str(info.value)
    assert ENV in str(info.value)
