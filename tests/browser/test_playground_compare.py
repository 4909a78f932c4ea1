"""The playground in a real browser: log in, Compare three models over the WebSocket (the
dashboard session, no API key), and see the three answers side by side with cost and latency."""

from __future__ import annotations

import re
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest
import uvicorn
from django.contrib.sessions.models import Session
from playwright.sync_api import Page, expect

from apps.accounts import services as account_services
from apps.accounts.models import Organization, User
from apps.gateway.sandbox import SandboxServer
from apps.orchestration.models import OrchestrationRun
from apps.wallet import services as wallet_services
from apps.wallet.models import Wallet
from tests.factories import PASSWORD, UserFactory
from tests.gateway.conftest import sandbox  # noqa: F401 - the sandbox upstream fixture

pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("catalog")]

FUNDS = 5_000_000
MODELS = ("gpt-4o-mini", "claude-haiku-4.5", "gemini-2.5-flash-lite")


class AppServer:
    """The whole ASGI application (HTTP and WebSockets, as ``make run`` serves it) under uvicorn
    on a loopback port, in this process. ``stop()`` and ``start()`` again restart it on the same
    port, as a deploy restarts a server under open browser tabs."""

    def __init__(self) -> None:
        self._socket = self._listening(0)
        self.port = self._socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @staticmethod
    def _listening(port: int) -> socket.socket:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", port))
        return sock

    def start(self) -> None:
        from llmwise.asgi import application

        sock = self._socket if self._server is None else self._listening(self.port)
        server = uvicorn.Server(uvicorn.Config(application, lifespan="off", log_level="warning"))
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="playground-server", daemon=True
        )
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.started, "the test server did not start"
        self._server, self._thread = server, thread

    def stop(self) -> None:
        assert self._server is not None
        assert self._thread is not None
        self._server.should_exit = True
        self._thread.join(10)
        assert not self._thread.is_alive(), "the test server did not stop"


@pytest.fixture
def app_server(
    transactional_db: None,
    settings: Any,
    sandbox: SandboxServer,  # noqa: F811
) -> Iterator[AppServer]:
    """An :class:`AppServer` with providers on the sandbox."""
    settings.PROVIDER_SANDBOX = True
    settings.PROVIDER_SANDBOX_URL = sandbox.base_url
    server = AppServer()
    server.start()
    yield server
    if server._thread is not None and server._thread.is_alive():
        server.stop()
    from asgiref.sync import SyncToAsync
    from django.db import connections

    SyncToAsync.single_thread_executor.submit(connections.close_all).result(timeout=5)


def _funded_owner() -> tuple[User, Organization]:
    owner = UserFactory(email="player@acme.test")
    org = account_services.organization_create(name="Acme", owner=owner)
    wallet_services.wallet_grant(
        wallet=wallet_services.wallet_for_org(org=org), amount_micros=FUNDS, note="playground"
    )
    return owner, org


def _open_playground(page: Page, url: str, owner: User) -> None:
    page.goto(url + "/accounts/login/")
    main = page.get_by_role("main")
    main.get_by_label(re.compile(r"^Email:?$")).fill(owner.email)
    main.get_by_label(re.compile(r"^Password:?$")).fill(PASSWORD)
    main.get_by_role("button", name="Sign In").click()
    expect(page).to_have_url(re.compile(r"/dashboard/$"))
    page.get_by_role("complementary", name="Dashboard").get_by_role(
        "link", name="Playground"
    ).click()
    expect(page.get_by_role("tab", name="Compare")).to_have_attribute("aria-selected", "true")
    expect(page.locator("#playground-status")).to_have_text("Ready.")


def test_member_compares_three_models_side_by_side(app_server: AppServer, page: Page) -> None:
    owner, org = _funded_owner()
    _open_playground(page, app_server.url, owner)
    for model in MODELS:
        expect(page.locator(f'input[name="models"][value="{model}"]')).to_be_checked()
    page.get_by_label("Prompt").fill("Which metal conducts heat best?")
    page.get_by_role("button", name="Run").click()

    expect(page.locator("#playground-status")).to_have_text("Done.")
    cards = page.locator(".result-card")
    expect(cards).to_have_count(3)
    boxes = []
    shown = []
    for index in range(3):
        card = cards.nth(index)
        model = card.locator("header").inner_text().strip()
        shown.append(model)
        expect(card.locator(".answer")).to_contain_text("Sandbox answer from ")
        expect(card.locator(".result-stats")).to_contain_text(
            re.compile(r"tokens · \$0\.\d+ · \d+ ms")
        )
        boxes.append(card.bounding_box())
    assert sorted(shown) == sorted(MODELS)
    # Side by side: one row, left to right.
    assert all(box is not None for box in boxes)
    tops = {round(box["y"]) for box in boxes if box}
    lefts = [box["x"] for box in boxes if box]
    assert len(tops) == 1
    assert lefts == sorted(lefts)
    expect(page.locator("#totals")).to_contain_text("Total: 3 calls")

    run = OrchestrationRun.objects.get(organization=org)
    assert (run.mode, run.status, run.endpoint) == ("compare", "ok", "ws.compare")
    wallet = Wallet.objects.get(organization=org)
    assert wallet.balance_micros == FUNDS - run.cost_micros
    assert wallet.reserved_micros == 0


def test_the_playground_reconnects_by_itself_after_a_server_restart(
    app_server: AppServer, page: Page
) -> None:
    owner, org = _funded_owner()
    _open_playground(page, app_server.url, owner)
    status = page.locator("#playground-status")

    app_server.stop()  # closes the open socket, as a deploy does
    expect(status).to_have_text("Disconnected. Reconnecting in 1 s…")
    # The first try finds nobody listening; the next waits twice as long.
    expect(status).to_have_text("Disconnected. Reconnecting in 2 s…", timeout=5_000)
    app_server.start()
    expect(status).to_have_text("Ready.", timeout=10_000)

    page.get_by_label("Prompt").fill("Which metal conducts heat best?")
    page.get_by_role("button", name="Run").click()
    expect(status).to_have_text("Done.")
    expect(page.locator(".result-card")).to_have_count(3)
    run = OrchestrationRun.objects.get(organization=org)
    assert (run.mode, run.status) == ("compare", "ok")
    wallet = Wallet.objects.get(organization=org)
    assert wallet.balance_micros == FUNDS - run.cost_micros
    assert wallet.reserved_micros == 0


def test_a_page_whose_session_ended_says_so_instead_of_reconnecting_forever(
    app_server: AppServer, page: Page
) -> None:
    owner, org = _funded_owner()
    _open_playground(page, app_server.url, owner)
    status = page.locator("#playground-status")

    app_server.stop()
    Session.objects.all().delete()  # signed out meanwhile (elsewhere, or the session expired)
    app_server.start()

    expect(status).to_have_text("Signed out. Reload the page to sign in again.", timeout=15_000)
    page.get_by_label("Prompt").fill("Which metal conducts heat best?")
    page.get_by_role("button", name="Run").click()
    expect(status).to_have_text("Signed out. Reload the page to sign in again.")
    assert not OrchestrationRun.objects.filter(organization=org).exists()
