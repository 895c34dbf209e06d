"""Browser tests of the dashboard: Debian's Chromium driven by Playwright.

No browser is downloaded: Playwright drives ``/usr/bin/chromium``, which
``scripts/services.sh chromium`` installs (``make test`` calls it). Each test
talks to a real gateway and supervisor on RabbitMQ and SQLite, and saves a
screenshot of every step under ``test-output/ui/<test name>/``.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.async_api import Browser, Page, async_playwright

from tests.gateway.conftest import Env, running_gateway
from tests.support.processors import ScriptedProcessor

CHROMIUM = Path("/usr/bin/chromium")
# This machine's network is closed: without the background-networking flags
# Chromium keeps trying to reach Google's hosts.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
OUTPUT = Path(__file__).resolve().parents[2] / "test-output" / "ui"
WIDE = {"width": 1280, "height": 900}
NARROW = {"width": 390, "height": 844}
REPORTS = pytest.StashKey[dict[str, pytest.TestReport]]()


@pytest.fixture(scope="session")
def chromium() -> Path:
    if not CHROMIUM.exists():
        # The test command installs it; a missing browser is a broken set-up,
        # never a reason to skip the tests that need it.
        pytest.fail(f"{CHROMIUM} is missing: run scripts/services.sh chromium")
    return CHROMIUM


@pytest.fixture(scope="session")
async def browser(chromium: Path) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(
            executable_path=str(chromium), args=CHROMIUM_ARGS, headless=True
        )
        try:
            yield launched
        finally:
            await launched.close()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(
    item: pytest.Item, call: pytest.CallInfo[None]
) -> Iterator[pytest.TestReport]:
    """Keep each phase's report on the item, for the page's failure screenshot."""
    report = yield
    item.stash.setdefault(REPORTS, {})[report.when] = report
    return report


@pytest.fixture
async def page(browser: Browser, request: pytest.FixtureRequest) -> AsyncIterator[Page]:
    context = await browser.new_context(viewport=WIDE, locale="en-GB")
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda err: errors.append(str(err)))
    try:
        yield page
        call = request.node.stash.get(REPORTS, {}).get("call")
        if call is not None and call.failed:
            OUTPUT.mkdir(parents=True, exist_ok=True)
            shot = OUTPUT / f"{request.node.name}-FAILED.png"
            await page.screenshot(path=str(shot), full_page=True)
    finally:
        await context.close()
    assert not errors, f"the page raised: {errors}"


@dataclass
class Shots:
    """Numbered full-page screenshots of one test, wide and narrow."""

    folder: Path
    taken: int = 0

    async def take(self, page: Page, step: str, *, narrow: bool = False) -> Path:
        self.taken += 1
        path = self.folder / f"{self.taken:02d}-{step}.png"
        if narrow:
            await page.set_viewport_size(NARROW)
        await page.screenshot(path=str(path), full_page=True)
        if narrow:
            await page.set_viewport_size(WIDE)
        return path


@pytest.fixture
def shots(request: pytest.FixtureRequest) -> Shots:
    folder = OUTPUT / request.node.name
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    return Shots(folder)


@pytest.fixture
def slow_processor() -> ScriptedProcessor:
    """Slow enough to watch; one document fails until the test clears it."""
    return ScriptedProcessor(delay=0.15, permanent={"doc-007.txt"}, tokens=(30, 12))


@pytest.fixture
async def ui_env(
    tmp_path: Path, amqp_url: str, broker_prefix: str, slow_processor: ScriptedProcessor
) -> AsyncIterator[Env]:
    async with running_gateway(tmp_path, amqp_url, broker_prefix, slow_processor) as e:
        yield e
