"""Brute force: sign-in, sign-up, password reset and API keys are rate limited, with clear 429s.

The test settings switch allauth's limits off (so other suites can sign in freely); these tests
switch the production values from base.py back on through the ``settings`` fixture. Passwords
are hashed with Argon2.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from django.contrib.auth.hashers import make_password
from django.test import Client
from django.urls import reverse

from apps.accounts import services as account_services
from apps.accounts.models import User
from llmwise.settings import base as base_settings
from tests.conftest import Personas
from tests.factories import PASSWORD, UserFactory

pytestmark = pytest.mark.django_db

KEY_INFO = "/api/v1/key"
WRONG = "lw-" + "x" * 43


@pytest.fixture
def auth_limits(settings: Any) -> dict[str, str]:
    settings.ACCOUNT_RATE_LIMITS = dict(base_settings.ACCOUNT_RATE_LIMITS)  # type: ignore[arg-type]
    return settings.ACCOUNT_RATE_LIMITS  # type: ignore[no-any-return]


def _login(client: Client, email: str, password: str, ip: str = "10.0.0.1") -> Any:
    return client.post(
        reverse("account_login"), {"login": email, "password": password}, REMOTE_ADDR=ip
    )


# --- sign-in, sign-up, password reset -----------------------------------------------------------
def test_an_account_locks_after_five_wrong_passwords(auth_limits: dict[str, str]) -> None:
    UserFactory(email="victim@example.com")
    for attempt in range(5):
        # A different address each time: the lock is per account, not only per IP.
        response = _login(Client(), "victim@example.com", "wrong", ip=f"10.0.1.{attempt}")
        assert response.status_code == 200  # the form again, "incorrect"
    response = _login(Client(), "victim@example.com", PASSWORD, ip="10.0.1.99")
    assert response.status_code == 429
    assert int(response["Retry-After"]) == 300
    assert "Too many failed login attempts" in response.content.decode()
    # Another account is not affected.
    UserFactory(email="other@example.com")
    assert _login(Client(), "other@example.com", PASSWORD, ip="10.0.1.99").status_code == 302


def test_one_address_trying_many_accounts_is_stopped(auth_limits: dict[str, str]) -> None:
    for n in range(10):
        assert _login(Client(), f"guess{n}@example.com", "wrong").status_code == 200
    response = _login(Client(), "guess99@example.com", "wrong")
    assert response.status_code == 429


def test_signups_are_limited_per_address(auth_limits: dict[str, str]) -> None:
    url = reverse("account_signup")
    for n in range(10):
        data = {"email": f"new{n}@example.com", "password1": PASSWORD, "password2": PASSWORD}
        assert Client().post(url, data, REMOTE_ADDR="10.0.2.1").status_code == 302
    data = {"email": "new99@example.com", "password1": PASSWORD, "password2": PASSWORD}
    response = Client().post(url, data, REMOTE_ADDR="10.0.2.1")
    assert response.status_code == 429
    assert not User.objects.filter(email="new99@example.com").exists()
    assert Client().post(url, data, REMOTE_ADDR="10.0.2.2").status_code == 302


def test_password_reset_is_limited_per_account(auth_limits: dict[str, str]) -> None:
    from django.core import mail

    UserFactory(email="reset@example.com")
    url = reverse("account_reset_password")
    for attempt in range(3):
        response = Client().post(
            url, {"email": "reset@example.com"}, REMOTE_ADDR=f"10.0.3.{attempt}"
        )
        assert response.status_code == 302
    response = Client().post(url, {"email": "reset@example.com"}, REMOTE_ADDR="10.0.3.50")
    assert response.status_code == 429
    assert len(mail.outbox) == 3  # no fourth email to flood the inbox


def test_the_limits_are_off_in_the_test_settings_by_default(db: None) -> None:
    UserFactory(email="free@example.com")
    for _ in range(8):
        _login(Client(), "free@example.com", "wrong")
    assert _login(Client(), "free@example.com", PASSWORD).status_code == 302


# --- API keys -------------------------------------------------------------------------------------
def _key_info(secret: str, ip: str = "10.1.0.1", **extra: Any) -> Any:
    return Client().get(KEY_INFO, HTTP_AUTHORIZATION=f"Bearer {secret}", REMOTE_ADDR=ip, **extra)


def test_twenty_wrong_keys_then_429_with_retry_after_in_our_envelope(personas: Personas) -> None:
    good = account_services.api_key_create(
        org=personas.org, name="k", created_by=personas.owner
    ).secret
    for _ in range(20):
        assert _key_info(WRONG).status_code == 401
    response = _key_info(WRONG)
    assert response.status_code == 429
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limited")
    assert "Too many failed API key attempts" in error["message"]
    assert 1 <= int(response["Retry-After"]) <= 61
    assert error["request_id"] == response["x-request-id"]
    # Blocked means blocked: a right key from that address waits too...
    assert _key_info(good).status_code == 429
    # ...while everyone else carries on.
    assert _key_info(good, ip="10.1.0.2").status_code == 200


def test_a_forged_forwarded_for_does_not_escape_the_limit(personas: Personas) -> None:
    for n in range(21):
        response = _key_info(WRONG, HTTP_X_FORWARDED_FOR=f"192.0.2.{n}")
    assert response.status_code == 429


def test_behind_our_proxy_the_forwarded_address_counts(personas: Personas, settings: Any) -> None:
    settings.ALLAUTH_TRUSTED_PROXY_COUNT = 1
    for _ in range(21):
        response = _key_info(WRONG, HTTP_X_FORWARDED_FOR="198.51.100.7", ip="10.9.9.9")
    assert response.status_code == 429
    other = _key_info(WRONG, HTTP_X_FORWARDED_FOR="198.51.100.8", ip="10.9.9.9")
    assert other.status_code == 401


def test_the_block_lifts_when_the_window_ends(personas: Personas, settings: Any) -> None:
    settings.API_KEY_AUTH_FAILURES_PER_IP = 2
    settings.API_KEY_AUTH_FAILURE_WINDOW_SECONDS = 1
    good = account_services.api_key_create(
        org=personas.org, name="k", created_by=personas.owner
    ).secret
    # Start at the beginning of a window so the three failures land in the same one.
    time.sleep(1 - time.time() % 1)
    for _ in range(2):
        assert _key_info(WRONG).status_code == 401
    assert _key_info(WRONG).status_code == 429
    time.sleep(1.05)
    assert _key_info(good).status_code == 200


def test_a_burst_across_a_window_boundary_is_still_refused(
    personas: Personas, settings: Any
) -> None:
    settings.API_KEY_AUTH_FAILURES_PER_IP = 2
    settings.API_KEY_AUTH_FAILURE_WINDOW_SECONDS = 1
    # The last tenth of a window: one failure there, the next two in the following window.
    time.sleep((0.92 - time.time() % 1) % 1)
    assert _key_info(WRONG).status_code == 401
    time.sleep(1 - time.time() % 1 + 0.01)
    assert _key_info(WRONG).status_code == 401
    assert _key_info(WRONG).status_code == 429  # 3 failures within one window's time


def test_the_count_is_shared_through_the_cache(personas: Personas) -> None:
    """Another process (no in-memory block) still refuses: the failures are in the cache."""
    for _ in range(21):
        _key_info(WRONG)
    account_services.api_key_caches_clear()  # what a fresh process knows
    assert _key_info(WRONG).status_code == 429


def test_the_gateway_endpoints_are_limited_too(personas: Personas) -> None:
    for _ in range(20):
        response = Client().post(
            "/v1/chat/completions",
            {},
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {WRONG}",
            REMOTE_ADDR="10.2.0.1",
        )
        assert response.status_code == 401
    response = Client().post(
        "/v1/chat/completions",
        {},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {WRONG}",
        REMOTE_ADDR="10.2.0.1",
    )
    assert response.status_code == 429
    assert response["Retry-After"]


# --- password hashing -----------------------------------------------------------------------------
def test_passwords_are_hashed_with_argon2(settings: Any, db: None) -> None:
    settings.PASSWORD_HASHERS = base_settings.PASSWORD_HASHERS
    assert base_settings.PASSWORD_HASHERS[0].endswith("Argon2PasswordHasher")
    response = Client().post(
        reverse("account_signup"),
        {"email": "argon@example.com", "password1": PASSWORD, "password2": PASSWORD},
    )
    assert response.status_code == 302
    stored = User.objects.get(email="argon@example.com").password
    assert stored.startswith("argon2$argon2id$")
    assert PASSWORD not in stored
    assert make_password("x").startswith("argon2")
