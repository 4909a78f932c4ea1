"""The journeys customers take, end to end in a real browser against a live server.

One server per test serves the whole product the way ``make run`` does: our ASGI application
(HTTP and WebSockets) under uvicorn on a loopback port, in this process (so the ``settings``
fixture and the test database apply to it), with the fake Stripe mounted at its sandbox prefix
and providers on the sandbox upstream. Emails land in the locmem outbox.

1. sign up → verify email → buy credits (fake Stripe checkout) → create an API key → call the API
   with the official ``openai`` SDK → the request, its cost and the new balance in the dashboard;
3. break a sandbox provider (Failover tab) → the next model answers → the breaker shows open;
4. a member cannot reach another organization's billing or keys; an admin invites someone who
   signs up and joins;
plus screenshots of every main page (``test-results/screenshots/``, the Overview with traffic
and on first login, every playground tab after a run) with accessibility checks: every form
control has an accessible name, and text has WCAG AA contrast. Journey 2 (Compare) is
``test_playground_compare.py``.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import httpx
import pytest
from django.conf import settings as django_settings
from django.core import mail
from playwright.sync_api import Browser, Page, expect

from apps.accounts import services as account_services
from apps.accounts.models import ApiKey, Organization, Role, User
from apps.gateway import policy_services
from apps.gateway.counters import MemoryCounters, counters
from apps.gateway.models import RequestLog
from apps.gateway.rollups import rollups_update
from apps.gateway.routing import health
from apps.gateway.sandbox import SandboxServer
from apps.optimizer.services import optimizer_run
from apps.wallet import services as wallet_services
from apps.wallet.models import CreditPurchase, Wallet
from apps.wallet.stripe_sandbox import PathMount, StripeSandbox
from apps.wallet.templatetags.money import usd
from tests.factories import PASSWORD, UserFactory, add_member
from tests.gateway.conftest import FaultControl, faults, sandbox  # noqa: F401 - fixtures
from tests.optimizer.history import known_history
from tests.servers import ThreadServer, close_shared_thread_connections
from tests.usage_factory import log_row
from tests.wallet.stripe_server import SECRET_KEY, WEBHOOK_SECRET

from .conftest import DEFAULT_TIMEOUT_MS, RESULTS_DIR

pytestmark = [pytest.mark.browser, pytest.mark.usefixtures("catalog")]

SCREENSHOTS = RESULTS_DIR / "screenshots"
NEW_PASSWORD = "Plum-Otter-Lantern-42"
CONFIRM_LINK = re.compile(r"https?://\S+/accounts/confirm-email/[^/\s]+/")
INVITE_LINK = re.compile(r"https?://\S+/invitations/[^/\s]+/")
FUNDS = 5_000_000
PRIMARY, SECOND, THIRD = "gpt-4o-mini", "claude-haiku-4.5", "gemini-2.5-flash-lite"

# Counts the form controls of a page that have no accessible name (label, aria-label(ledby),
# title; a button's text), listing them so a failure says which ones.
UNLABELED_CONTROLS = """
() => {
  const named = (el) => {
    if (el.getAttribute("aria-label")?.trim()) return true;
    const by = el.getAttribute("aria-labelledby");
    if (by && by.split(/\\s+/).some((id) => document.getElementById(id)?.textContent.trim()))
      return true;
    if (el.labels && Array.from(el.labels).some((l) => l.textContent.trim())) return true;
    if (el.getAttribute("title")?.trim()) return true;
    if (el.tagName === "BUTTON") return el.textContent.trim().length > 0;
    if (el.tagName === "INPUT" && ["submit", "reset", "button"].includes(el.type))
      return Boolean(el.value.trim());
    return false;
  };
  const controls = document.querySelectorAll(
    'input:not([type="hidden"]), select, textarea, button, [role="tab"]'
  );
  return Array.from(controls).filter((el) => !named(el)).map(
    (el) => `${el.tagName.toLowerCase()}#${el.id || ""}[name=${el.getAttribute("name") || ""}]`
  );
}
"""


# Lists visible text whose colour contrast with its (composited) background is below WCAG AA:
# 4.5:1, or 3:1 for large text (24px, or 18.66px bold). Disabled controls are exempt (WCAG
# 1.4.3); text over images or gradients is not judged (there is none in the dashboard).
LOW_CONTRAST = """
() => {
  const rgba = (value) => {
    const m = value.match(/rgba?\\(([^)]+)\\)/);
    if (!m) return null;
    const p = m[1].split(",").map((x) => parseFloat(x));
    return { r: p[0], g: p[1], b: p[2], a: p.length > 3 ? p[3] : 1 };
  };
  const over = (top, bottom) => ({
    r: top.r * top.a + bottom.r * (1 - top.a),
    g: top.g * top.a + bottom.g * (1 - top.a),
    b: top.b * top.a + bottom.b * (1 - top.a),
    a: 1,
  });
  const background = (el) => {
    const layers = [];
    for (let e = el; e; e = e.parentElement) {
      const c = rgba(getComputedStyle(e).backgroundColor);
      if (c && c.a > 0) {
        layers.push(c);
        if (c.a >= 1) break;
      }
    }
    let out = { r: 255, g: 255, b: 255, a: 1 };
    for (let i = layers.length - 1; i >= 0; i--) out = over(layers[i], out);
    return out;
  };
  const luminance = (c) => {
    const f = (v) => {
      v /= 255;
      return v <= 0.03928 ? v / 12.92 : Math.pow((v + 0.055) / 1.055, 2.4);
    };
    return 0.2126 * f(c.r) + 0.7152 * f(c.g) + 0.0722 * f(c.b);
  };
  const ratio = (a, b) => {
    const [hi, lo] = [luminance(a), luminance(b)].sort((x, y) => y - x);
    return (hi + 0.05) / (lo + 0.05);
  };
  const seen = new Set();
  const failures = [];
  const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const text = node.textContent.trim();
    const el = node.parentElement;
    if (!text || !el || seen.has(el)) continue;
    seen.add(el);
    const exempt = "[disabled], :disabled, [aria-disabled=true], .visually-hidden, script, style";
    if (el.closest(exempt)) continue;
    const rect = el.getBoundingClientRect();
    const style = getComputedStyle(el);
    if (rect.width === 0 || rect.height === 0 || style.visibility === "hidden") continue;
    if (el.closest("[hidden]") || el.closest(".skip-link")) continue;
    const color = rgba(style.color);
    if (!color) continue;
    const bg = background(el);
    const fg = over(color, bg);
    const size = parseFloat(style.fontSize);
    const bold = parseInt(style.fontWeight, 10) >= 700;
    const need = size >= 24 || (size >= 18.66 && bold) ? 3 : 4.5;
    const r = ratio(fg, bg);
    if (r < need) {
      const what = `${el.tagName.toLowerCase()}.${el.className} "${text.slice(0, 40)}"`;
      failures.push(`${what} ${r.toFixed(2)} < ${need}`);
    }
  }
  return failures;
}
"""


@dataclass
class LiveApp:
    url: str
    stripe: StripeSandbox


@pytest.fixture
def live_app(
    transactional_db: None,
    settings: Any,
    sandbox: SandboxServer,  # noqa: F811
) -> Iterator[LiveApp]:
    """The whole product on a loopback port: HTTP + WebSockets + the fake Stripe."""
    from llmwise.asgi import router

    server = ThreadServer(name="journeys-server")
    url = server.url
    settings.SITE_URL = url  # links in emails (invitations) point here
    settings.PROVIDER_SANDBOX = True
    settings.PROVIDER_SANDBOX_URL = sandbox.base_url
    settings.STRIPE_API_BASE = url + django_settings.STRIPE_SANDBOX_PREFIX
    settings.STRIPE_SECRET_KEY = SECRET_KEY
    settings.STRIPE_WEBHOOK_SECRET = WEBHOOK_SECRET
    stripe = StripeSandbox(webhook_url=f"{url}/webhooks/stripe/", webhook_secret=WEBHOOK_SECRET)
    server.app = PathMount(router, prefix=django_settings.STRIPE_SANDBOX_PREFIX, mounted=stripe)
    server.start()
    yield LiveApp(url=url, stripe=stripe)
    server.stop()
    close_shared_thread_connections()


@pytest.fixture
def fresh_health() -> Iterator[None]:
    """Breaker state of this test stays in this test (Redis is flushed by the cache fixture)."""
    yield
    store = counters()
    if isinstance(store, MemoryCounters):
        store.clear()
    health.health_local_clear()


# --- helpers ----------------------------------------------------------------------------------
def _log_in(page: Page, base_url: str, email: str, password: str = PASSWORD) -> None:
    page.goto(base_url + "/accounts/login/")
    main = page.get_by_role("main")
    main.get_by_label(re.compile(r"^Email:?$")).fill(email)
    main.get_by_label(re.compile(r"^Password:?$")).fill(password)
    main.get_by_role("button", name="Sign In").click()
    expect(page).to_have_url(re.compile(r"/dashboard/$"))


def _sign_up_and_verify(page: Page, base_url: str, email: str) -> User:
    """Fill allauth's sign-up form, follow the emailed confirmation link, confirm."""
    main = page.get_by_role("main")
    main.get_by_label(re.compile(r"^Email:?$")).fill(email)
    main.get_by_label(re.compile(r"^Password:?$")).fill(NEW_PASSWORD)
    main.get_by_label(re.compile(r"^Password \(again\):?$")).fill(NEW_PASSWORD)
    main.get_by_role("button", name="Sign Up").click()
    expect(page.get_by_role("heading", name="Verify Your Email Address")).to_be_visible()
    sent = [m for m in mail.outbox if email in m.to and "onfirm" in m.subject]
    assert len(sent) == 1, [(m.to, m.subject) for m in mail.outbox]
    link = CONFIRM_LINK.search(sent[0].body)
    assert link, sent[0].body
    page.goto(link.group(0))
    page.get_by_role("main").get_by_role("button", name="Confirm").click()
    expect(page).not_to_have_url(re.compile(r"/confirm-email/"))
    return User.objects.get(email=email)


def _sidebar(page: Page) -> Any:
    return page.get_by_role("complementary", name="Dashboard")


def _shot(page: Page, name: str) -> None:
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)


def _assert_refused(page: Page, url: str, status: int) -> None:
    """GET ``url`` in the browser's session: refused with ``status`` and nothing of Globex."""
    response = page.request.get(url, max_redirects=0)
    assert response.status == status, (url, response.status)
    assert "Globex" not in response.text()
    assert "$50.00" not in response.text()


def _post_with_csrf(page: Page, url: str, data: dict[str, str] | None = None) -> Any:
    """A POST from the logged-in browser session, with its CSRF cookie, as a form would send."""
    token = next(c["value"] for c in page.context.cookies() if c["name"] == "csrftoken")
    return page.request.post(url, form=data or {}, headers={"X-CSRFToken": token}, max_redirects=0)


# --- journey 1 --------------------------------------------------------------------------------
def test_journey_signup_buy_credit_key_sdk_call_and_see_it(live_app: LiveApp, page: Page) -> None:
    from openai import OpenAI

    base = live_app.url
    email = f"journey-{uuid.uuid4().hex[:8]}@example.com"

    # Sign up and verify the email address.
    page.goto(base + "/accounts/signup/")
    user = _sign_up_and_verify(page, base, email)
    page.goto(base + "/dashboard/")
    org = Organization.objects.get(memberships__user=user)
    # First login: the getting-started checklist, with this server's base URL in the snippets.
    checklist = page.get_by_role("region", name="Getting started")
    expect(checklist).to_contain_text("Buy credits")
    expect(page.get_by_test_id("base-url")).to_have_text(base + "/v1")
    expect(page.locator("#snippet-curl")).to_contain_text(f"curl {base}/v1/chat/completions")
    expect(page.locator("#usage-empty")).to_contain_text("No requests in this range yet")
    _shot(page, "overview-first-login")
    # The Copy button puts the snippet on the clipboard and says so.
    page.context.grant_permissions(["clipboard-read", "clipboard-write"], origin=base)
    checklist.get_by_role("button", name="Copy").first.click()
    expect(checklist.get_by_role("status")).to_have_text("Copied to the clipboard.")
    copied = page.evaluate("navigator.clipboard.readText()")
    assert copied.startswith(f"curl {base}/v1/chat/completions")

    # Buy $25 of credit on the (fake) Stripe checkout (on top of the signup's trial grant).
    _sidebar(page).get_by_role("link", name="Billing").click()
    trial = Wallet.objects.get(organization=org).balance_micros
    expect(page.locator("#balance-available")).to_have_attribute("data-micros", str(trial))
    page.get_by_label("$25").check()
    page.get_by_role("button", name="Continue to payment").click()
    expect(page).to_have_url(re.compile(r"/_sandbox/stripe/"))
    page.get_by_role("button", name="Pay with test card").click()
    expect(page.get_by_text("Payment received.")).to_be_visible()
    paid = trial + 25_000_000
    expect(page.locator("#balance-available")).to_have_attribute("data-micros", str(paid))
    assert CreditPurchase.objects.get(organization=org).status == CreditPurchase.Status.PAID

    # Create an API key; its secret is shown once.
    _sidebar(page).get_by_role("link", name="API keys").click()
    page.get_by_role("textbox", name=re.compile(r"^Name\b")).fill("SDK key")
    page.get_by_role("button", name="Create key").click()
    secret = page.get_by_test_id("new-secret").input_value()
    _shot(page, "keys-created")

    # Usage & logs is open (and empty) while the call is made: the request appears live.
    _sidebar(page).get_by_role("link", name="Usage & logs").click()
    expect(page.get_by_role("heading", name="No requests yet")).to_be_visible()
    page.evaluate("window.__notReloaded = true")

    # Call the API with the official OpenAI SDK, pointed at this server.
    client = OpenAI(base_url=base + "/v1", api_key=secret, max_retries=0, timeout=20)
    raw = client.chat.completions.with_raw_response.create(
        model=PRIMARY,
        messages=[{"role": "user", "content": "What is the capital of Peru?"}],
        max_tokens=60,
    )
    completion = raw.parse()
    request_id = raw.headers["x-request-id"]
    assert completion.choices[0].message.content.startswith("Sandbox answer from ")
    # The call is booked an instant after its answer: reconcile it as a client would (the
    # request API waits for the record of a call whose credit is still held).
    record = httpx.get(
        f"{base}/api/v1/requests/{request_id}",
        headers={"Authorization": f"Bearer {secret}"},
        timeout=20,
    )
    assert record.status_code == 200, record.text
    log = RequestLog.objects.get(request_id=request_id)
    assert record.json()["charged_micros"] == log.cost_micros > 0
    assert log.api_key == ApiKey.objects.get(organization=org, name="SDK key")

    # The request shows up in Usage & logs without a reload, with its cost; its detail page has
    # the same figures.
    row = page.locator(f'tr[data-request-id="{request_id}"]')
    expect(row).to_be_visible(timeout=15_000)
    assert page.evaluate("window.__notReloaded") is True
    expect(row).to_contain_text(PRIMARY)
    expect(row).to_contain_text("SDK key")
    expect(row).to_contain_text(usd(log.cost_micros))
    _shot(page, "usage-logs")
    row.get_by_role("link").first.click()
    expect(page).to_have_url(re.compile(re.escape(request_id)))
    expect(page.get_by_role("main")).to_contain_text(request_id)
    expect(page.get_by_role("row", name=re.compile(r"^Cost\b"))).to_contain_text(
        usd(log.cost_micros)
    )
    _shot(page, "usage-request-detail")

    # Billing shows the balance after the charge, to the micro-dollar.
    _sidebar(page).get_by_role("link", name="Billing").click()
    balance = page.locator("#balance-available")
    expect(balance).to_have_attribute("data-micros", str(paid - log.cost_micros))
    expect(balance).to_have_text(usd(paid - log.cost_micros))
    expect(page.locator("#balance-spent")).to_have_attribute("data-micros", str(log.cost_micros))
    _shot(page, "billing")
    wallet = Wallet.objects.get(organization=org)
    assert (wallet.balance_micros, wallet.reserved_micros) == (paid - log.cost_micros, 0)


# --- journey 3 --------------------------------------------------------------------------------
@pytest.mark.usefixtures("fresh_health")
def test_journey_break_a_provider_and_watch_the_failover(
    live_app: LiveApp,
    page: Page,
    settings: Any,
    faults: FaultControl,  # noqa: F811
) -> None:
    # One failure in the window opens the breaker (default: five), so one call shows it open.
    settings.GATEWAY_MESH_BREAKER_MIN_CALLS = 1
    settings.GATEWAY_MESH_BREAKER_COOLDOWN_SECONDS = 60
    settings.GATEWAY_MESH_STATE_CACHE_SECONDS = 0.1
    owner = UserFactory(email="sre@acme.test")
    org = account_services.organization_create(name="Acme", owner=owner)
    wallet_services.wallet_grant(
        wallet=wallet_services.wallet_for_org(org=org), amount_micros=FUNDS, note="journey 3"
    )
    _log_in(page, live_app.url, owner.email)
    _sidebar(page).get_by_role("link", name="Playground").click()

    # Keyboard: the tabs are one Tab stop; End selects the last tab (Failover).
    compare = page.get_by_role("tab", name="Compare")
    expect(compare).to_have_attribute("aria-selected", "true")
    compare.focus()
    page.keyboard.press("End")
    failover = page.get_by_role("tab", name="Failover")
    expect(failover).to_be_focused()
    expect(failover).to_have_attribute("aria-selected", "true")
    expect(page.get_by_role("tabpanel", name="Failover")).to_be_visible()
    expect(page.locator("#playground-status")).to_have_text("Ready.")
    expect(page.get_by_label("Primary model")).to_have_value(PRIMARY)
    expect(page.get_by_label("Fallback 1")).to_have_value(SECOND)
    expect(page.get_by_label("Fallback 2")).to_have_value(THIRD)

    # Break OpenAI in the sandbox.
    openai_row = page.locator('.sandbox-provider-list li[data-provider="openai"]')
    page.get_by_role("button", name="Break openai").click()
    expect(page.locator("#sandbox-status")).to_contain_text("openai is broken")
    expect(openai_row).to_have_attribute("data-broken", "true")
    expect(page.get_by_role("button", name="Restore openai")).to_be_focused()
    assert [(r["provider"], r["fault"]) for r in faults.list()] == [("openai", "http_503")]

    # The prompt goes to the chain: attempt 1 fails, attempt 2 answers.
    page.get_by_label("Prompt").fill("Which planet has the most moons?")
    page.get_by_role("button", name="Run").click()
    expect(page.locator("#playground-status")).to_have_text("Done.")
    attempts = page.locator("#failover-attempts li")
    expect(attempts).to_have_count(2)
    expect(attempts.nth(0)).to_have_attribute("data-status", "error")
    expect(attempts.nth(0)).to_contain_text(f"{PRIMARY} (openai) — failed (upstream_")
    expect(attempts.nth(1)).to_have_attribute("data-status", "ok")
    expect(attempts.nth(1)).to_contain_text(f"{SECOND} (anthropic) — answered")
    expect(page.locator("#failover-answered")).to_contain_text(f"Answered by {SECOND} after 1")
    card = page.locator(".result-card")
    expect(card.locator("header")).to_have_text(SECOND)
    expect(card.locator(".answer")).to_contain_text("Sandbox answer from ")
    expect(card.locator(".result-stats")).to_contain_text(re.compile(r"tokens · \$0\.\d+ · \d+ ms"))
    expect(page.locator("#route-history tr")).to_have_count(1)
    _shot(page, "journey-failover-route")

    log = RequestLog.objects.get(organization=org)
    assert (log.model, log.endpoint, log.status) == (SECOND, "ws.chat", "ok")
    assert [(a["model"], a["status"]) for a in log.route["attempts"]] == [
        (PRIMARY, "error"),
        (SECOND, "ok"),
    ]

    # The provider health page shows OpenAI's breaker open.
    _sidebar(page).get_by_role("link", name="Routing").click()
    expect(page).to_have_url(re.compile(r"/dashboard/routing/$"))
    row = page.locator(f'#provider-health-table tr[data-model="{PRIMARY}"]')
    expect(row).to_have_attribute("data-state", "open")
    expect(row.get_by_role("cell").nth(2)).to_contain_text("open")
    expect(page.locator(f'#provider-health-table tr[data-model="{SECOND}"]')).to_have_attribute(
        "data-state", "closed"
    )
    _shot(page, "journey-routing-breaker-open")

    # Restore: the switch clears the sandbox rule.
    page.goto(live_app.url + "/dashboard/playground/?tab=failover")
    page.get_by_role("button", name="Restore openai").click()
    expect(openai_row).to_have_attribute("data-broken", "false")
    assert faults.list() == []
    wallet = Wallet.objects.get(organization=org)
    assert (wallet.balance_micros, wallet.reserved_micros) == (FUNDS - log.cost_micros, 0)


# --- journey 4 --------------------------------------------------------------------------------
def test_journey_member_walls_and_an_invited_member_joins(
    live_app: LiveApp, browser: Browser
) -> None:
    base = live_app.url
    owner = UserFactory(email="owner@acme.test")
    org = account_services.organization_create(name="Acme", owner=owner)
    admin = add_member(org, Role.ADMIN, UserFactory(email="admin@acme.test"))
    member = add_member(org, Role.MEMBER, UserFactory(email="member@acme.test"))
    acme_key = account_services.api_key_create(org=org, name="acme-prod", created_by=owner).api_key
    outsider = UserFactory(email="ceo@globex.test")
    globex = account_services.organization_create(name="Globex", owner=outsider)
    globex_key = account_services.api_key_create(
        org=globex, name="globex-secret-project", created_by=outsider
    ).api_key
    globex_purchase = CreditPurchase.objects.create(
        public_id="pur_globex1",
        organization=globex,
        wallet=wallet_services.wallet_for_org(org=globex),
        amount_micros=50_000_000,
        stripe_checkout_session_id="cs_test_globex1",
        created_by=outsider,
    )
    wallet_services.purchase_credit(
        public_id="pur_globex1",
        checkout_session_id="cs_test_globex1",
        payment_intent_id="pi_test_globex1",
        amount_cents=5000,
        currency="usd",
    )

    def new_page() -> Page:
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        context.set_default_timeout(DEFAULT_TIMEOUT_MS)
        return context.new_page()

    # A member of Acme: no billing actions, no keys of Globex, no admin pages.
    page = new_page()
    _log_in(page, base, member.email)
    _sidebar(page).get_by_role("link", name="Billing").click()
    expect(page.locator("#balance-available")).to_be_visible()
    expect(page.get_by_role("button", name="Continue to payment")).to_have_count(0)
    purchase_paths = [
        f"/dashboard/billing/purchases/{globex_purchase.public_id}/",
        f"/dashboard/billing/purchases/{globex_purchase.public_id}/receipt/",
    ]
    # Billing actions need the admin role: the role check answers before any lookup.
    for path in [*purchase_paths, "/dashboard/billing/ledger.csv"]:
        _assert_refused(page, base + path, 403)
    buy = _post_with_csrf(page, base + "/dashboard/billing/", {"amount": "25"})
    assert buy.status == 403
    # Revoking keys needs the admin role too, whoever's key it is.
    revoke_theirs = _post_with_csrf(page, base + f"/dashboard/keys/{globex_key.pk}/revoke/")
    assert revoke_theirs.status == 403
    assert "globex-secret-project" not in revoke_theirs.text()
    assert globex_key.prefix not in revoke_theirs.text()
    revoke_ours = _post_with_csrf(page, base + f"/dashboard/keys/{acme_key.pk}/revoke/")
    assert revoke_ours.status == 403
    _sidebar(page).get_by_role("link", name="API keys").click()
    expect(page.get_by_role("main")).not_to_contain_text("globex-secret-project")
    expect(page.get_by_role("main")).not_to_contain_text(globex_key.prefix)
    globex_key.refresh_from_db()
    acme_key.refresh_from_db()
    assert globex_key.revoked_at is None
    assert acme_key.revoked_at is None
    assert not CreditPurchase.objects.filter(organization=org).exists()
    page.context.close()

    # An admin of Acme may use billing and keys, but only Acme's: Globex's are simply not found.
    invitee = f"new-{uuid.uuid4().hex[:6]}@acme.test"
    page = new_page()
    _log_in(page, base, admin.email)
    for path in purchase_paths:
        _assert_refused(page, base + path, 404)
    revoke_theirs = _post_with_csrf(page, base + f"/dashboard/keys/{globex_key.pk}/revoke/")
    assert revoke_theirs.status == 404
    assert "globex-secret-project" not in revoke_theirs.text()
    globex_key.refresh_from_db()
    assert globex_key.revoked_at is None

    # The admin invites a new colleague.
    _sidebar(page).get_by_role("link", name="Team").click()
    page.get_by_role("main").get_by_label(re.compile(r"^Email:?$")).fill(invitee)
    page.get_by_role("main").get_by_label(re.compile(r"^Role:?$")).select_option("member")
    page.get_by_role("button", name="Send invitation").click()
    expect(page.get_by_text(f"Invitation sent to {invitee}.")).to_be_visible()
    expect(
        page.get_by_role("main").get_by_role("listitem").filter(has_text=invitee)
    ).to_be_visible()
    _shot(page, "team")
    page.context.close()
    [email] = [m for m in mail.outbox if invitee in m.to]
    assert "join Acme" in email.subject
    link = INVITE_LINK.search(email.body)
    assert link, email.body
    assert link.group(0).startswith(base + "/")

    # The invitee follows the link, is asked to sign in or up, signs up and verifies...
    page = new_page()
    page.goto(link.group(0))
    expect(page).to_have_url(re.compile(r"/accounts/login/"))
    expect(page.get_by_text(f"Sign in (or sign up) as {invitee} to join Acme.")).to_be_visible()
    page.get_by_role("main").get_by_role("link", name=re.compile(r"sign up", re.I)).click()
    user = _sign_up_and_verify(page, base, invitee)

    # ...and the overview lists the invitation addressed to them: Join.
    page.goto(base + "/dashboard/")
    invitations = page.get_by_role("region", name="Invitations for you")
    expect(invitations).to_contain_text("invited you to join Acme as member")
    _shot(page, "overview-invitation")
    invitations.get_by_role("button", name="Join").click()
    expect(page.get_by_text("Welcome to Acme.")).to_be_visible()
    expect(page.get_by_label("Organization").locator("option:checked")).to_have_text("Acme")
    assert org.memberships.get(user=user).role == Role.MEMBER
    _sidebar(page).get_by_role("link", name="Team").click()
    expect(page.get_by_role("row").filter(has_text=invitee)).to_contain_text("Member")
    page.context.close()


# --- screenshots and accessible names ---------------------------------------------------------
def _traffic_for_screens(org: Organization, key: ApiKey, other: ApiKey) -> list[RequestLog]:
    """A week of varied traffic (models, keys, categories, auto-routing, errors, BYOK)."""
    logs = []
    categories = ["code", "summarization", "qa", "extraction"]
    for i in range(60):
        auto = i % 3 == 0
        model, provider = [
            (PRIMARY, "openai"),
            (SECOND, "anthropic"),
            (THIRD, "gemini"),
            ("gpt-4.1", "openai"),
        ][i % 4]
        logs.append(
            log_row(
                org,
                api_key=key if i % 5 else other,
                ago=timedelta(hours=1 + (i * 37) % (7 * 24), minutes=i),
                model=model,
                provider=provider,
                requested_model="auto" if auto else model,
                route={"requested": "auto" if auto else model, "chosen": model}
                | ({"category": categories[i % 4]} if auto else {}),
                status=RequestLog.Status.ERROR if i % 17 == 0 else RequestLog.Status.OK,
                http_status=502 if i % 17 == 0 else 200,
                byok=provider == "anthropic" and i % 2 == 0,
                prompt_tokens=200 + 31 * i,
                completion_tokens=80 + 11 * i,
                cost_micros=900 + 250 * i,
                latency_ms=300 + (i * 97) % 2500,
            )
        )
    return logs


def _check_page(page: Page, name: str, problems: dict[str, list[str]]) -> None:
    """Screenshot ``page`` as ``name`` and note unnamed controls and low-contrast text."""
    _shot(page, name)
    for check, script in (("unlabeled", UNLABELED_CONTROLS), ("contrast", LOW_CONTRAST)):
        found = page.evaluate(script)
        if found:
            problems[f"{name} {check}"] = found


def test_main_pages_screenshots_and_every_control_is_named(live_app: LiveApp, page: Page) -> None:
    owner = UserFactory(email="owner@acme.test")
    org = account_services.organization_create(name="Acme", owner=owner)
    wallet_services.wallet_grant(
        wallet=wallet_services.wallet_for_org(org=org), amount_micros=FUNDS, note="screens"
    )
    key = account_services.api_key_create(org=org, name="production", created_by=owner).api_key
    batch = account_services.api_key_create(org=org, name="batch-jobs", created_by=owner).api_key
    logs = _traffic_for_screens(org, key, batch)
    ApiKey.objects.filter(pk__in=[key.pk, batch.pk]).update(last_used_at=logs[0].created_at)
    known_history(org, key=key, runaway=batch)  # enough traffic for the optimizer to recommend
    rollups_update()
    optimizer_run(org=org)
    policy = policy_services.routing_policy_create(
        org=org, actor=owner, name="cheap", text="default:\n  model: gpt-4o-mini\n"
    )
    _log_in(page, live_app.url, owner.email)

    pages = {
        "overview": "/dashboard/",
        "overview-7d-hourly": "/dashboard/?range=7d&granularity=hour",
        "keys": "/dashboard/keys/",
        "usage": "/dashboard/usage/",
        "usage-detail": f"/dashboard/usage/requests/{logs[1].request_id}/",
        "billing-admin": "/dashboard/billing/",
        "routing": "/dashboard/routing/",
        "policies": "/dashboard/routing/policies/",
        "policy-detail": f"/dashboard/routing/policies/{policy.pk}/",
        "policy-dry-run": "/dashboard/routing/policies/dry-run/",
        "recommendations": "/dashboard/recommendations/",
        "team-owner": "/dashboard/team/",
        "settings": "/dashboard/settings/",
        "provider-keys": "/dashboard/settings/providers/",
        "audit": "/dashboard/audit/",
    }
    problems: dict[str, list[str]] = {}
    for name, path in pages.items():
        response = page.goto(live_app.url + path)
        assert response is not None, path
        assert response.status == 200, (path, response.status)
        page.wait_for_load_state("networkidle")
        if name.startswith("overview"):
            # The charts drew (Chart.js sizes each canvas) and the tables hold the traffic.
            for chart in ("chart-requests", "chart-spend", "chart-tokens", "chart-latency"):
                expect(page.locator(f"#{chart}")).to_have_attribute("width", re.compile(r"^\d+$"))
            expect(page.locator("#keys-table")).to_contain_text("batch-jobs")
            expect(page.locator("#categories-table")).to_contain_text("summarization")
            expect(page.locator('[data-kpi="savings"]')).to_be_visible()
            expect(page.locator('[data-kpi="days-left"]')).to_be_visible()
        _check_page(page, f"page-{name}", problems)

    # A dry run with its result.
    page.goto(live_app.url + "/dashboard/routing/policies/dry-run/")
    page.get_by_label("Prompt").fill("Write a Python function that reverses a linked list.")
    page.get_by_label("Policy named in the request").select_option("cheap")
    page.get_by_role("button", name="Dry run").click()
    expect(page.locator("#dry-run-chain")).to_contain_text("gpt-4o-mini")
    _check_page(page, "page-policy-dry-run-result", problems)

    # Every playground tab, after a run: each answer shows its model, tokens, cost and latency.
    page.goto(live_app.url + "/dashboard/playground/")
    expect(page.locator("#playground-status")).to_have_text("Ready.")
    stats = re.compile(r"^\d+ \+ \d+ tokens · \$\d+\.\d+ · \d+ ms")
    for tab in ("Chat", "Compare", "Blend", "Judge", "Failover"):
        page.get_by_role("tab", name=tab).click()
        expect(page.get_by_role("tabpanel", name=tab)).to_be_visible()
        page.get_by_label("Prompt").fill(f"In one sentence: why test the {tab} tab?")
        page.get_by_role("button", name="Run").click()
        expect(page.locator("#playground-status")).to_have_text("Done.", timeout=20_000)
        cards = page.locator(".result-card")
        expect(cards.first).to_be_visible()
        for index in range(cards.count()):
            card = cards.nth(index)
            expect(card.locator("header")).not_to_be_empty()
            expect(card.locator(".result-stats")).to_have_text(stats)
        if tab == "Blend":
            expect(page.locator("#final")).to_contain_text("Blended answer")
        if tab == "Judge":
            expect(page.locator("#final")).to_contain_text("Judge's ranking")
        if tab in ("Compare", "Blend", "Judge"):  # the run is listed without a reload
            expect(page.locator("#recent-runs tbody tr").first).to_contain_text(tab)
        _check_page(page, f"playground-{tab.lower()}", problems)
    assert problems == {}
