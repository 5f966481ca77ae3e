"""Headless Chromium for tests that need a real browser (the first-party tag, the dashboard).

Debian's `chromium` driven by the `playwright` package (its own browser downloads are never
used: `executable_path` points at the system binary). Each profile is a browser process
with a fresh user-data folder, so two profiles share nothing, as two people's browsers.

    async def test_x(chromium):
        page = await (await chromium.profile()).new_page()

The `chromium` fixture is registered in tests/conftest.py. Skipped nowhere: a machine
without /usr/bin/chromium fails the test (scripts/setup.sh installs it).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
from aiohttp import web
from playwright.async_api import BrowserContext, Page, Playwright, async_playwright

from tracker.testing import BROWSER_UA, ROOT, free_port

CHROMIUM = "/usr/bin/chromium"
ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = ROOT / "tests" / "artifacts"  # screenshots (git-ignored)


class Chromium:
    """Starts browser profiles; closes them all at the end of the test."""

    def __init__(self, playwright: Playwright, folder: Path) -> None:
        self.playwright = playwright
        self.folder = folder
        self.contexts: list[BrowserContext] = []

    async def profile(
        self, *, block_third_party_cookies: bool = False, user_agent: str = BROWSER_UA
    ) -> BrowserContext:
        """A new browser profile (its own process and user-data folder).

        The user agent is an ordinary desktop Chrome's by default: the tracker's bot rules
        would rightly flag "HeadlessChrome".
        """
        data_dir = self.folder / f"profile-{len(self.contexts)}"
        prefs = {"profile": {"cookie_controls_mode": 1 if block_third_party_cookies else 0}}
        if block_third_party_cookies:
            prefs["profile"]["block_third_party_cookies"] = True
        (data_dir / "Default").mkdir(parents=True)
        (data_dir / "Default" / "Preferences").write_text(json.dumps(prefs))
        context = await self.playwright.chromium.launch_persistent_context(
            str(data_dir),
            executable_path=CHROMIUM,
            headless=True,
            args=ARGS,
            user_agent=user_agent,
        )
        self.contexts.append(context)
        return context

    async def close(self) -> None:
        for context in self.contexts:
            await context.close()


@pytest.fixture
async def chromium(tmp_path) -> AsyncIterator[Chromium]:
    assert shutil.which(CHROMIUM), "chromium is not installed (scripts/setup.sh installs it)"
    async with async_playwright() as playwright:
        browser = Chromium(playwright, tmp_path / "chromium")
        try:
            yield browser
        finally:
            await browser.close()


async def screenshot(page: Page, name: str) -> Path:
    """Keep a screenshot under tests/artifacts/ for a human to look at."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)
    return path


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@asynccontextmanager
async def site(routes: dict[str, Handler], host: str = "localhost") -> AsyncIterator[str]:
    """A small web site on a free port (GET routes): yields its base URL.

    `localhost` and `127.0.0.1` are different sites to a browser, so a test server here and
    the tracker on 127.0.0.1 stand for a merchant's site and the tracker's.
    """
    app = web.Application()
    for path, handler in routes.items():
        app.router.add_get(path, handler)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://{host}:{port}"
    finally:
        await runner.cleanup()
