"""Fixtures for the browser journeys: a headless Chromium and a fresh context per test.

The tests drive Debian's Chromium (``/usr/bin/chromium``) through Playwright's sync API against
pytest-django's ``live_server``. Playwright's own browser downloads are never used.

Without Chromium the tests are skipped, unless ``LLMWISE_REQUIRE_BROWSER=1`` (set it in CI), in
which case a missing browser is an error rather than a silently green run.
"""

from __future__ import annotations

import os
import re
import warnings
from collections.abc import Generator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
from django.db import connections

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

# Playwright's sync API runs an asyncio event loop in the test's own thread (inside a greenlet).
# Django sees that running loop and refuses ORM calls from the test with SynchronousOnlyOperation,
# although nothing here is actually async: the test thread blocks while Playwright works. The
# live server handles requests in its own thread and is unaffected. Django reads this flag on
# every ORM call, so the autouse fixture below sets it for the browser tests only.

# pytest-django's live_server listens on "localhost" by default, which Chromium may resolve to ::1
# while the server is bound to IPv4. Pin the loopback address (port 0: a free port per xdist
# worker). --liveserver or an explicit DJANGO_LIVE_TEST_SERVER_ADDRESS still win.
os.environ.setdefault("DJANGO_LIVE_TEST_SERVER_ADDRESS", "127.0.0.1")

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
DEFAULT_TIMEOUT_MS = 10_000
RESULTS_DIR = Path(__file__).resolve().parents[2] / "test-results"


def browser_required() -> bool:
    return os.environ.get("LLMWISE_REQUIRE_BROWSER") == "1"


def _unavailable(reason: str) -> None:
    """Skip the browser tests, or fail them when the browser is required."""
    if browser_required():
        pytest.fail(f"LLMWISE_REQUIRE_BROWSER=1 but {reason}", pytrace=False)
    pytest.skip(f"browser tests skipped: {reason} (set LLMWISE_REQUIRE_BROWSER=1 to fail instead)")


@pytest.fixture(autouse=True)
def _allow_orm_beside_playwright_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DJANGO_ALLOW_ASYNC_UNSAFE", "true")


# Function-scoped on purpose: Playwright's sync API keeps an event loop running in this thread
# while it is started, which would make every later non-browser test in the same xdist worker
# look "async" to Django and asyncio. Starting Chromium per test costs well under a second.
@pytest.fixture
def browser() -> Generator[Browser, None, None]:
    if not CHROMIUM.exists():
        _unavailable(f"{CHROMIUM} is missing (apt-get install chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:  # pragma: no cover - playwright is a dev dependency
        _unavailable(f"the playwright package is not importable ({exc})")
    playwright = sync_playwright().start()
    try:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
    except Exception:
        playwright.stop()
        raise
    yield browser
    # ORM calls made by the test while Playwright's loop ran live in a context-local connection
    # that pytest-django's teardown cannot see; close it here or PostgreSQL refuses to drop the
    # test database ("being accessed by other users").
    connections.close_all()
    browser.close()
    playwright.stop()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> pytest.TestReport:
    """Remember each phase's report on the item, so ``page`` can tell whether the test failed."""
    report: pytest.TestReport = yield
    setattr(item, f"rep_{report.when}", report)
    return report


@pytest.fixture
def page(browser: Browser, request: pytest.FixtureRequest) -> Generator[Page, None, None]:
    """A page in a fresh browser context (own cookies and storage); screenshot on failure."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    context.set_default_timeout(DEFAULT_TIMEOUT_MS)
    context.set_default_navigation_timeout(DEFAULT_TIMEOUT_MS)
    page = context.new_page()
    yield page
    report = getattr(request.node, "rep_call", None)
    if report is not None and report.failed:
        RESULTS_DIR.mkdir(exist_ok=True)
        name = re.sub(r"[^A-Za-z0-9_.-]+", "_", request.node.nodeid)
        try:
            page.screenshot(path=str(RESULTS_DIR / f"{name}.png"), full_page=True)
        except Exception as exc:  # the page may be gone; the test failure is what matters
            warnings.warn(f"could not save a failure screenshot: {exc}", stacklevel=1)
    context.close()
