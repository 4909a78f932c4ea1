"""GET /api/v1/wallet: each key sees its own organization's credit, nothing else."""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta

import pytest
from django.test import Client

from apps.accounts import services as account_services
from apps.wallet import services
from apps.wallet.models import Wallet
from tests.conftest import Personas

pytestmark = pytest.mark.django_db


def _get(secret: str) -> dict:  # type: ignore[type-arg]
    response = Client().get("/api/v1/wallet", HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert response.status_code == 200, response.content
    return response.json()


def test_wallet_api_per_org(personas: Personas, fund: Callable[..., Wallet]) -> None:
    acme = fund(personas.org, 12.5)
    res = services.wallet_reserve(
        wallet=acme, amount_micros=2_000_000, request_id="r1", expires_in=timedelta(minutes=1)
    )
    services.reservation_settle(reservation=res, actual_micros=1_234_567)
    services.wallet_reserve(
        wallet=acme, amount_micros=345_678, request_id="r2", expires_in=timedelta(minutes=1)
    )
    fund(personas.other_org, 3)

    acme_key = account_services.api_key_create(org=personas.org, name="a", created_by=None)
    globex_key = account_services.api_key_create(org=personas.other_org, name="g", created_by=None)

    body = _get(acme_key.secret)
    assert body == {
        "object": "wallet",
        "organization": personas.org.slug,
        "currency": "usd",
        "available_micros": 12_500_000 - 1_234_567 - 345_678,
        "reserved_micros": 345_678,
        "balance_micros": 12_500_000 - 1_234_567,
        "lifetime_spent_micros": 1_234_567,
        "available_usd": "10.919755",
        "reserved_usd": "0.345678",
        "balance_usd": "11.265433",
        "lifetime_spent_usd": "1.234567",
    }
    other = _get(globex_key.secret)
    assert other["organization"] == personas.other_org.slug
    assert (other["available_micros"], other["reserved_micros"]) == (3_000_000, 0)
    assert other["lifetime_spent_micros"] == 0


def test_wallet_api_for_org_without_wallet_is_zero(personas: Personas) -> None:
    key = account_services.api_key_create(org=personas.org, name="a", created_by=None)
    body = _get(key.secret)
    assert (body["available_micros"], body["available_usd"]) == (0, "0.000000")


@pytest.mark.parametrize("header", [None, "Bearer lw-not-a-real-key-aaaaaaaaaaaa", "Basic abc"])
def test_wallet_api_needs_a_valid_key(personas: Personas, header: str | None) -> None:
    extra = {"HTTP_AUTHORIZATION": header} if header else {}
    response = Client().get("/api/v1/wallet", **extra)
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"


def test_wallet_api_is_read_only(personas: Personas) -> None:
    key = account_services.api_key_create(org=personas.org, name="a", created_by=None)
    response = Client().post(
        "/api/v1/wallet",
        {},
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {key.secret}",
    )
    assert response.status_code == 405
    assert response.json()["error"]["code"] == "method_not_allowed"
