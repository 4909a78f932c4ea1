"""The pages work under our Content-Security-Policy in a real browser: no violation anywhere.

Chromium reports each blocked script, style, eval or inline handler both as a
``securitypolicyviolation`` event and as a console error; the test listens for both on every
main page (the dashboard with data in it, the public site, the sign-in pages and the Redoc
reference with its own policy), then uses the two behaviours that used to be inline handlers:
the organization switcher and the "delete policy?" confirmation.
"""

from __future__ import annotations

import re

import pytest
from playwright.sync_api import ConsoleMessage, Dialog, Page, expect

from apps.accounts import services as account_services
from apps.gateway import policy_services
from apps.gateway.services import catalog_seed
from apps.wallet import services as wallet_services
from tests.factories import PASSWORD, UserFactory
from tests.usage_factory import log_row

pytestmark = [pytest.mark.browser, pytest.mark.django_db(transaction=True)]

# Collects violations from the moment each document starts, before any of our scripts run.
LISTEN = """
window.__cspViolations = [];
document.addEventListener("securitypolicyviolation", (e) => {
  window.__cspViolations.push(
    `${e.violatedDirective} ${e.blockedURI} ${e.sourceFile}:${e.lineNumber}`);
});
"""


REDOC_LOGO = "img-src https://cdn.redoc.ly/"


def _log_in(page: Page, base_url: str, email: str) -> None:
    page.goto(base_url + "/accounts/login/")
    main = page.get_by_role("main")
    main.get_by_label(re.compile(r"^Email:?$")).fill(email)
    main.get_by_label(re.compile(r"^Password:?$")).fill(PASSWORD)
    main.get_by_role("button", name="Sign In").click()
    expect(page).to_have_url(re.compile(r"/dashboard/$"))


def test_main_pages_raise_no_csp_violation(live_server: object, page: Page) -> None:
    base_url = str(live_server)
    catalog_seed()
    owner = UserFactory(email="csp@acme.test")
    org = account_services.organization_create(name="Acme", owner=owner)
    account_services.organization_create(name="Second org", owner=owner)
    wallet_services.wallet_grant(
        wallet=wallet_services.wallet_for_org(org=org), amount_micros=5_000_000, note="csp"
    )
    key = account_services.api_key_create(org=org, name="ci", created_by=owner).api_key
    log = log_row(org, api_key=key)
    policy = policy_services.routing_policy_create(
        org=org, actor=owner, name="cheap", text="default:\n  model: gpt-4o-mini\n"
    )

    console_errors: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if message.type == "error":
            console_errors.append(message.text)

    page.on("console", on_console)
    page.add_init_script(LISTEN)

    pages = [
        "/",
        "/docs/",
        "/accounts/signup/",
        "/accounts/password/reset/",
    ]
    for path in pages:
        page.goto(base_url + path)
        page.wait_for_load_state("networkidle")
        assert page.evaluate("window.__cspViolations") == [], path

    _log_in(page, base_url, owner.email)
    dashboard = [
        "/dashboard/",
        "/dashboard/playground/",
        "/dashboard/keys/",
        "/dashboard/usage/",
        f"/dashboard/usage/requests/{log.request_id}/",
        "/dashboard/billing/",
        "/dashboard/routing/",
        "/dashboard/routing/policies/",
        f"/dashboard/routing/policies/{policy.pk}/",
        f"/dashboard/routing/policies/{policy.pk}/versions/",
        "/dashboard/routing/policies/new/",
        "/dashboard/recommendations/",
        "/dashboard/team/",
        "/dashboard/settings/",
        "/dashboard/settings/providers/",
        "/dashboard/audit/",
        "/accounts/password/change/",
        "/docs/api/",
    ]
    for path in dashboard:
        page.goto(base_url + path)
        page.wait_for_load_state("networkidle")
        violations = page.evaluate("window.__cspViolations")
        if path == "/docs/api/":
            # On purpose: the reference's own policy stops Redoc's hard-coded CDN logo
            # (apps/dashboard/docs_views.py, REFERENCE_CSP). Nothing else may be blocked.
            violations = [v for v in violations if not v.startswith(REDOC_LOGO)]
            expect(page.get_by_text("LLMWise API").first).to_be_visible()
        assert violations == [], path
    # The overview really drew its charts (Chart.js works under the policy).
    page.goto(base_url + "/dashboard/")
    page.wait_for_load_state("networkidle")
    assert page.evaluate("window.__cspViolations") == []

    # The org switcher submits on change (static/js/forms.js, formerly onchange=).
    # Wait for each switch's form submission to land before going on: the option shows as
    # chosen at once, before the server has stored the new current organization.
    switcher = page.locator("#org-switch")
    with page.expect_navigation():
        switcher.select_option(label="Second org")
    expect(page.locator("#org-switch option:checked")).to_have_text("Second org")
    with page.expect_navigation():
        switcher.select_option(label="Acme")
    expect(page.locator("#org-switch option:checked")).to_have_text("Acme")

    # "Delete policy?" asks first (formerly onsubmit=); dismissing keeps the policy.
    questions: list[str] = []

    def on_dialog(dialog: Dialog) -> None:
        questions.append(dialog.message)
        dialog.dismiss()

    page.on("dialog", on_dialog)
    page.goto(f"{base_url}/dashboard/routing/policies/{policy.pk}/")
    page.get_by_role("button", name=re.compile("Delete", re.IGNORECASE)).click()
    page.wait_for_timeout(200)
    assert questions
    assert "cheap" in questions[0]
    expect(page).to_have_url(re.compile(rf"/routing/policies/{policy.pk}/$"))
    assert page.evaluate("window.__cspViolations") == []

    csp_errors = [
        text
        for text in console_errors
        if "Content Security Policy" in text and "cdn.redoc.ly" not in text
    ]
    assert csp_errors == []
