"""A new user's first minutes, in a real browser.

Landing page → sign up → confirm the emailed link → dashboard with a personal workspace →
create an API key (shown once) → call the API with it → revoke it → the API refuses it.
"""

from __future__ import annotations

import re
import uuid
from typing import Any

import httpx
import pytest
from allauth.account.models import EmailAddress
from django.core import mail
from playwright.sync_api import Page, expect

from apps.accounts.models import ApiKey, Organization, Role, User
from apps.accounts.services import API_KEY_LOOKUP_CHARS, API_KEY_PREFIX

from .conftest import RESULTS_DIR

pytestmark = pytest.mark.browser

PASSWORD = "Plum-Otter-Lantern-42"
CONFIRM_LINK = re.compile(r"https?://\S+/accounts/confirm-email/[^/\s]+/")


def _signup_form(page: Page, *, email: str, password1: str, password2: str) -> None:
    """Fill allauth's sign-up form (rendered with ``form.as_p``: labels end with a colon)."""
    main = page.get_by_role("main")
    main.get_by_label(re.compile(r"^Email:?$")).fill(email)
    main.get_by_label(re.compile(r"^Password:?$")).fill(password1)
    main.get_by_label(re.compile(r"^Password \(again\):?$")).fill(password2)
    main.get_by_role("button", name="Sign Up").click()


def _open_signup_from_landing(page: Page, base_url: str) -> None:
    page.goto(base_url + "/")
    expect(page.get_by_role("heading", level=1)).to_have_text("One endpoint. Every AI provider.")
    # The header's "Sign up" is a link styled with role="button", so that is its ARIA role.
    page.get_by_role("navigation", name="Site").get_by_role("button", name="Sign up").click()
    expect(page).to_have_url(re.compile(r"/accounts/signup/$"))
    expect(page.get_by_role("heading", name="Sign Up")).to_be_visible()


def _key_info(base_url: str, secret: str) -> httpx.Response:
    return httpx.get(
        f"{base_url}/api/v1/key",
        headers={"Authorization": f"Bearer {secret}"},
        timeout=10,
    )


def test_signup_verify_email_create_use_and_revoke_api_key(
    live_server: Any, transactional_db: None, page: Page
) -> None:
    base_url = live_server.url
    local_part = f"journey-{uuid.uuid4().hex[:8]}"
    email = f"{local_part}@example.com"
    workspace = f"{local_part}'s workspace"

    # 1. Landing page → sign up.
    _open_signup_from_landing(page, base_url)
    _signup_form(page, email=email, password1=PASSWORD, password2=PASSWORD)
    expect(page).to_have_url(re.compile(r"/accounts/confirm-email/$"))
    expect(page.get_by_role("heading", name="Verify Your Email Address")).to_be_visible()

    user = User.objects.get(email=email)
    assert not EmailAddress.objects.get(user=user, email=email).verified

    # 2. The confirmation email, its link, the confirm button → logged in on the dashboard.
    sent = [m for m in mail.outbox if email in m.to]
    assert len(sent) == 1, [(m.to, m.subject) for m in mail.outbox]
    assert sent[0].subject.startswith("[LLMWise] ")
    match = CONFIRM_LINK.search(sent[0].body)
    assert match, sent[0].body
    confirm_url = match.group(0)
    assert confirm_url.startswith(base_url + "/"), confirm_url

    page.goto(confirm_url)
    expect(page.get_by_role("heading", name="Confirm Email Address")).to_be_visible()
    page.get_by_role("main").get_by_role("button", name="Confirm").click()
    expect(page).to_have_url(re.compile(r"/dashboard/$"))
    assert EmailAddress.objects.get(user=user, email=email).verified

    # 3. The personal workspace is the current organization in the switcher.
    switcher = page.get_by_label("Organization")
    expect(switcher.locator("option:checked")).to_have_text(workspace)
    expect(page.get_by_role("heading", level=1)).to_have_text(workspace)
    expect(page.get_by_text("You are owner")).to_be_visible()
    org = Organization.objects.get(memberships__user=user)
    assert org.is_personal
    assert org.name == workspace
    assert org.memberships.get(user=user).role == Role.OWNER

    # 4. Create an API key; its secret is shown once.
    sidebar = page.get_by_role("complementary", name="Dashboard")
    sidebar.get_by_role("link", name="API keys").click()
    expect(page).to_have_url(re.compile(r"/dashboard/keys/$"))
    expect(page.get_by_text("No keys yet.")).to_be_visible()
    page.get_by_role("textbox", name=re.compile(r"^Name\b")).fill("CI key")
    page.get_by_role("button", name="Create key").click()
    expect(page.get_by_role("heading", name="Key “CI key” created")).to_be_visible()
    secret = page.get_by_test_id("new-secret").input_value()
    assert secret.startswith(API_KEY_PREFIX), secret
    prefix = secret[:API_KEY_LOOKUP_CHARS]
    hidden_part = secret[API_KEY_LOOKUP_CHARS:]
    key = ApiKey.objects.get(organization=org)
    assert key.prefix == prefix
    assert key.name == "CI key"
    RESULTS_DIR.mkdir(exist_ok=True)
    page.screenshot(path=str(RESULTS_DIR / "signup-journey-key-created.png"), full_page=True)

    # Back to the list, then load it afresh: the prefix is shown, the secret never again.
    page.get_by_role("main").get_by_role("button", name="Done, back to keys").click()
    expect(page).to_have_url(re.compile(r"/dashboard/keys/$"))
    for _visit in ("via the Done button", "loaded again"):
        row = page.get_by_role("row").filter(has_text="CI key")
        expect(row).to_have_count(1)
        expect(row.get_by_text(f"{prefix}…")).to_be_visible()
        expect(row.get_by_text("active", exact=True)).to_be_visible()
        html = page.content()
        assert secret not in html
        assert hidden_part not in html
        page.goto(f"{base_url}/dashboard/keys/")

    page.get_by_role("complementary", name="Dashboard").get_by_role("link", name="Overview").click()
    expect(page.get_by_role("listitem").filter(has_text="Create an API key")).to_have_class("done")
    page.screenshot(path=str(RESULTS_DIR / "signup-journey-overview.png"), full_page=True)

    # 5. The key works against the API...
    response = _key_info(base_url, secret)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["organization"] == org.slug
    assert body["key_prefix"] == prefix
    assert body["key_name"] == "CI key"

    # ...until it is revoked in the dashboard.
    page.goto(f"{base_url}/dashboard/keys/")
    row = page.get_by_role("row").filter(has_text="CI key")
    row.get_by_role("button", name="Revoke").click()
    expect(page).to_have_url(re.compile(r"/dashboard/keys/$"))
    expect(page.get_by_role("status")).to_contain_text("Key “CI key” is revoked")
    expect(row.get_by_text("revoked", exact=True)).to_be_visible()
    expect(row.get_by_role("button", name="Revoke")).to_have_count(0)
    key.refresh_from_db()
    assert key.revoked_at is not None
    assert key.revoked_by == user

    response = _key_info(base_url, secret)
    assert response.status_code == 401, response.text
    error = response.json()["error"]
    assert error["type"] == "authentication_error"
    assert error["code"] == "invalid_api_key"
    assert error["message"]
    assert error["request_id"] == response.headers["x-request-id"]


@pytest.mark.parametrize(
    ("case", "email", "password2", "field_label", "message"),
    [
        (
            "mismatched passwords",
            "mismatch@example.com",
            PASSWORD + "-typo",
            re.compile(r"^Password \(again\):?$"),
            "You must type the same password each time.",
        ),
        (
            # Valid for the browser's type=email check, so it reaches the server, which refuses it.
            "email without a dot in the domain",
            "someone@example",
            PASSWORD,
            re.compile(r"^Email:?$"),
            "Enter a valid email address.",
        ),
    ],
    ids=["mismatched-passwords", "invalid-email"],
)
def test_signup_with_invalid_input_shows_field_error_and_creates_no_user(
    live_server: Any,
    transactional_db: None,
    page: Page,
    case: str,
    email: str,
    password2: str,
    field_label: re.Pattern[str],
    message: str,
) -> None:
    _open_signup_from_landing(page, live_server.url)
    _signup_form(page, email=email, password1=PASSWORD, password2=password2)

    expect(page).to_have_url(re.compile(r"/accounts/signup/$"))
    expect(page.get_by_text(message)).to_be_visible()
    field = page.get_by_role("main").get_by_label(field_label)
    expect(field).to_have_attribute("aria-invalid", "true")
    expect(page.get_by_role("main").get_by_label(re.compile(r"^Email:?$"))).to_have_value(email)

    assert not User.objects.exists(), case
    assert not EmailAddress.objects.exists(), case
    assert not Organization.objects.exists(), case
    assert mail.outbox == [], case
