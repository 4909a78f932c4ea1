"""Sign-up through the real allauth views: verification email, login, personal organization."""

from __future__ import annotations

import re

import pytest
from django.core import mail
from django.test import Client

from apps.accounts.models import Membership, Organization, Role, User
from tests.factories import PASSWORD, UserFactory

pytestmark = pytest.mark.django_db

SIGNUP = "/accounts/signup/"


def _signup(client: Client, email: str, password: str = PASSWORD, password2: str | None = None):
    return client.post(
        SIGNUP, {"email": email, "password1": password, "password2": password2 or password}
    )


def test_signup_sends_verification_and_creates_personal_org() -> None:
    client = Client()
    response = _signup(client, "Ada@Example.com")
    assert response.status_code == 302
    assert response["Location"] == "/accounts/confirm-email/"

    user = User.objects.get(email__iexact="ada@example.com")
    membership = Membership.objects.get(user=user)
    assert membership.role == Role.OWNER
    assert membership.organization.is_personal
    assert membership.organization.name == "ada's workspace"

    # Mandatory verification: not logged in yet, the dashboard bounces to login.
    assert client.get("/dashboard/").status_code == 302

    assert len(mail.outbox) == 1
    link = re.search(r"https?://\S+/accounts/confirm-email/\S+/", mail.outbox[0].body)
    assert link is not None
    path = "/" + link.group(0).split("/", 3)[3]
    assert client.get(path).status_code == 200
    response = client.post(path)
    assert response.status_code == 302

    dashboard = client.get("/dashboard/")
    assert dashboard.status_code == 200
    assert "ada&#x27;s workspace" in dashboard.content.decode()


def test_login_before_verification_is_refused_then_works_after() -> None:
    UserFactory(email="bob@example.com", verified=False)
    client = Client()
    response = client.post("/accounts/login/", {"login": "bob@example.com", "password": PASSWORD})
    assert response.status_code == 302
    assert response["Location"] == "/accounts/confirm-email/"
    assert client.get("/dashboard/").status_code == 302


def test_login_logout_password_change() -> None:
    UserFactory(email="carol@example.com")
    client = Client()
    response = client.post("/accounts/login/", {"login": "carol@example.com", "password": PASSWORD})
    assert response.status_code == 302
    response = client.post(
        "/accounts/password/change/",
        {
            "oldpassword": PASSWORD,
            "password1": "a-new-long-passphrase",
            "password2": "a-new-long-passphrase",
        },
    )
    assert response.status_code == 302
    assert User.objects.get(email="carol@example.com").check_password("a-new-long-passphrase")
    client.post("/accounts/logout/")
    assert client.get("/dashboard/").status_code == 302


def test_password_reset_sends_email() -> None:
    UserFactory(email="dan@example.com")
    response = Client().post("/accounts/password/reset/", {"email": "dan@example.com"})
    assert response.status_code == 302
    assert len(mail.outbox) == 1
    assert "/accounts/password/reset/key/" in mail.outbox[0].body


def test_duplicate_email_is_refused_without_creating_anything() -> None:
    UserFactory(email="eve@example.com")
    before = (User.objects.count(), Organization.objects.count())
    response = _signup(Client(), "EVE@example.com")
    # allauth's enumeration prevention: same flow as a new signup, but an email that tells the
    # real owner someone tried, and no second account or organization.
    assert response.status_code == 302
    assert (User.objects.count(), Organization.objects.count()) == before


@pytest.mark.parametrize(
    ("email", "password2", "field"),
    [
        ("not-an-email", None, "email"),
        ("frank@example.com", "something-else-entirely", "password2"),
    ],
)
def test_invalid_signup_rerenders_with_errors(
    email: str, password2: str | None, field: str
) -> None:
    response = _signup(Client(), email, password2=password2)
    assert response.status_code == 200
    assert response.context["form"].errors[field]
    assert not User.objects.exists()
    assert not Organization.objects.exists()


def test_social_login_appears_only_when_configured(settings) -> None:
    assert "/accounts/github/login/" not in Client().get("/accounts/login/").content.decode()
    settings.SOCIALACCOUNT_PROVIDERS = {
        "github": {"APPS": [{"client_id": "id", "secret": "s", "key": ""}], "SCOPE": ["user:email"]}
    }
    page = Client().get("/accounts/login/").content.decode()
    assert "/accounts/github/login/" in page
    assert "/accounts/google/login/" not in page
