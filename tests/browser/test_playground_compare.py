"""The playground in a real browser: log in, Compare three models over the WebSocket (the
dashboard session, no API key), and see the three answers side by side with cost and latency."""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest
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
from tests.servers import ThreadServer, close_shared_thread_connections

pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("catalog")]

FUNDS = 5_000_000
MODELS = ("gpt-4o-mini", "claude-haiku-4.5", "gemini-2.5-flash-lite")


@pytest.fixture
def app_server(
    transactional_db: None,
    settings: Any,
    sandbox: SandboxServer,  # noqa: F811
) -> Iterator[ThreadServer]:
    """The whole ASGI application (HTTP and WebSockets, as ``make run`` serves it), providers on
    the sandbox."""
    settings.PROVIDER_SANDBOX = True
    settings.PROVIDER_SANDBOX_URL = sandbox.base_url
    from llmwise.asgi import application

    server = ThreadServer(application, name="playground-server").start()
    yield server
    server.stop()
    close_shared_thread_connections()


def _funded_owner() -> tuple[User, Organization]:
    owner = UserFactory(email="player@acme.test")
    org = account_services.organization_create(name="Acme", owner=owner)
    wallet_services.wallet_grant(
        wallet=wallet_services.wallet_for_org(org=org), amount_micros=FUNDS, note="playground"
    )
    return owner, org


def _assert_compare_billed(org: Organization) -> None:
    run = OrchestrationRun.objects.get(organization=org)
    assert (run.mode, run.status, run.endpoint) == ("compare", "ok", "ws.compare")
    wallet = Wallet.objects.get(organization=org)
    assert wallet.balance_micros == FUNDS - run.cost_micros
    assert wallet.reserved_micros == 0


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


def test_member_compares_three_models_side_by_side(app_server: ThreadServer, page: Page) -> None:
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

    _assert_compare_billed(org)


def test_the_playground_reconnects_by_itself_after_a_server_restart(
    app_server: ThreadServer, page: Page
) -> None:
    owner, org = _funded_owner()
    _open_playground(page, app_server.url, owner)
    status = page.locator("#playground-status")

    assert app_server.stop()  # closes the open socket, as a deploy does
    expect(status).to_have_text(re.compile(r"^Disconnected\. Reconnecting in \d+ s…$"))
    # The first try (after 1 s) finds nobody listening; the next waits twice as long.
    expect(status).to_have_text(
        re.compile(r"^Disconnected\. Reconnecting in [24] s…$"), timeout=5_000
    )
    app_server.start()
    expect(status).to_have_text("Ready.", timeout=10_000)

    page.get_by_label("Prompt").fill("Which metal conducts heat best?")
    page.get_by_role("button", name="Run").click()
    expect(status).to_have_text("Done.")
    expect(page.locator(".result-card")).to_have_count(3)
    _assert_compare_billed(org)


def test_a_page_whose_session_ended_says_so_instead_of_reconnecting_forever(
    app_server: ThreadServer, page: Page
) -> None:
    owner, org = _funded_owner()
    _open_playground(page, app_server.url, owner)
    status = page.locator("#playground-status")

    assert app_server.stop()
    Session.objects.all().delete()  # signed out meanwhile (elsewhere, or the session expired)
    app_server.start()

    expect(status).to_have_text("Signed out. Reload the page to sign in again.", timeout=15_000)
    page.get_by_label("Prompt").fill("Which metal conducts heat best?")
    page.get_by_role("button", name="Run").click()
    expect(status).to_have_text("Signed out. Reload the page to sign in again.")
    assert not OrchestrationRun.objects.filter(organization=org).exists()
