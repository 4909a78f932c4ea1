"""The chat endpoints are served by llmwise.http's lean handler (no per-request thread, API
middleware only). Over real HTTP they must answer exactly like the full Django stack does:
same security headers, request id, error envelope, billing."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from django.test import Client

from apps.accounts import services as account_services
from apps.gateway.models import RequestLog
from apps.gateway.sandbox import SandboxServer
from apps.wallet import services as wallet_services
from apps.wallet.models import Wallet
from llmwise.http import API_MIDDLEWARE, HOT_PATHS
from tests.conftest import Personas
from tests.gateway.conftest import LiveGateway

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("catalog")]

SECURITY_HEADERS = (
    "x-content-type-options",
    "referrer-policy",
    "cross-origin-opener-policy",
    "x-frame-options",
    "content-security-policy",
)
BODIES = {
    "/v1/chat/completions": {"model": "gpt-4o-mini", "max_tokens": 20},
    "/api/v1/chat": {"model": "gpt-4o-mini", "max_tokens": 20},
    "/v1/messages": {"model": "claude-sonnet-4.5", "max_tokens": 20},
}


@pytest.fixture
def secret(personas: Personas, settings: Any, sandbox: SandboxServer) -> str:
    settings.PROVIDER_SANDBOX = True
    settings.PROVIDER_SANDBOX_URL = sandbox.base_url
    wallet = wallet_services.wallet_for_org(org=personas.org)
    wallet_services.wallet_grant(wallet=wallet, amount_micros=1_000_000, note="hot path")
    return account_services.api_key_create(
        org=personas.org, name="hot", created_by=personas.owner
    ).secret


def _body(path: str) -> dict[str, Any]:
    return {**BODIES[path], "messages": [{"role": "user", "content": "Say hello."}]}


def test_every_chat_endpoint_is_a_hot_path() -> None:
    assert set(BODIES) == HOT_PATHS
    # Nothing on the lean path needs a session, a CSRF token or a logged-in user.
    assert not [m for m in API_MIDDLEWARE if "session" in m.lower() or "csrf" in m.lower()]


@pytest.mark.parametrize("path", sorted(HOT_PATHS))
def test_hot_path_answers_like_the_full_stack(
    path: str, secret: str, personas: Personas, live_gateway: LiveGateway
) -> None:
    auth = {"Authorization": f"Bearer {secret}"}
    lean = httpx.post(live_gateway.url + path, json=_body(path), headers=auth, timeout=10)
    full = Client().post(path, data=_body(path), content_type="application/json", headers=auth)
    assert lean.status_code == full.status_code == 200, lean.text
    for name in SECURITY_HEADERS:
        assert lean.headers.get(name) == full.headers.get(name), name
    assert lean.headers["x-request-id"] != full.headers["x-request-id"]
    # Billed and logged like any call: two calls, two log rows, the wallet down by both costs.
    logs = RequestLog.objects.filter(
        request_id__in=[lean.headers["x-request-id"], full.headers["x-request-id"]]
    )
    assert logs.count() == 2
    spent = sum(log.cost_micros for log in logs)
    assert spent > 0
    assert Wallet.objects.get(organization=personas.org).balance_micros == 1_000_000 - spent


@pytest.mark.parametrize("path", sorted(HOT_PATHS))
def test_hot_path_errors_use_the_envelope(path: str, live_gateway: LiveGateway) -> None:
    bad_key = httpx.post(
        live_gateway.url + path,
        json=_body(path),
        headers={"Authorization": "Bearer lw-not-a-real-key-at-all-000000"},
        timeout=10,
    )
    assert bad_key.status_code == 401
    assert bad_key.json()["error"]["type"] == "authentication_error"
    if path != "/v1/messages":  # Anthropic's error shape has no request id field
        assert bad_key.json()["error"]["request_id"] == bad_key.headers["x-request-id"]
    for name in ("x-content-type-options", "x-frame-options", "referrer-policy"):
        assert bad_key.headers.get(name), name
    garbage = httpx.post(
        live_gateway.url + path,
        content=b"{not json",
        headers={"Authorization": "Bearer lw-not-a-real-key-at-all-000000"},
        timeout=10,
    )
    assert garbage.status_code in (400, 401)
    assert "error" in garbage.json()


def test_run_db_uses_the_gateway_threads_only_on_the_lean_path() -> None:
    import asyncio
    import threading

    from llmwise import http

    def name() -> str:
        return threading.current_thread().name

    async def main() -> tuple[str, str]:
        token = http._on_hot_path.set(True)
        try:
            lean = await http.run_db(name)
        finally:
            http._on_hot_path.reset(token)
        return lean, await http.run_db(name)

    lean, elsewhere = asyncio.run(main())
    assert lean.startswith("gateway-db")
    assert not elsewhere.startswith("gateway-db")


def test_concurrent_calls_on_the_lean_path_all_bill_once(
    secret: str, personas: Personas, live_gateway: LiveGateway
) -> None:
    import asyncio

    from apps.wallet.selectors import wallet_audit_problems

    async def main() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=30) as client:
            return list(
                await asyncio.gather(
                    *(
                        client.post(
                            live_gateway.url + "/v1/chat/completions",
                            json=_body("/v1/chat/completions"),
                            headers={"Authorization": f"Bearer {secret}"},
                        )
                        for _ in range(24)
                    )
                )
            )

    responses = asyncio.run(main())
    assert [r.status_code for r in responses] == [200] * 24
    ids = [r.headers["x-request-id"] for r in responses]
    logs = RequestLog.objects.filter(request_id__in=ids)
    assert logs.count() == 24
    spent = sum(log.cost_micros for log in logs)
    wallet = Wallet.objects.get(organization=personas.org)
    assert (wallet.balance_micros, wallet.reserved_micros) == (1_000_000 - spent, 0)
    assert wallet_audit_problems() == []


def test_the_hold_lives_as_long_as_the_setting_says(
    secret: str, settings: Any, live_gateway: LiveGateway
) -> None:
    from apps.wallet.models import Reservation

    settings.GATEWAY_RESERVATION_TTL_SECONDS = 120
    response = httpx.post(
        live_gateway.url + "/v1/chat/completions",
        json=_body("/v1/chat/completions"),
        headers={"Authorization": f"Bearer {secret}"},
        timeout=10,
    )
    assert response.status_code == 200
    hold = Reservation.objects.get(request_id=response.headers["x-request-id"])
    assert hold.status == Reservation.Status.SETTLED
    assert (hold.expires_at - hold.created_at).total_seconds() == 120


def test_a_client_gone_while_its_hold_is_written_leaves_nothing_held(
    secret: str, personas: Personas, live_gateway: LiveGateway
) -> None:
    """The client goes away while the call's reserve waits on the wallet row (another
    transaction holds its lock): once the reserve commits, the hold is given back at once."""
    import time

    import psycopg
    from django.db import connection

    from apps.wallet.models import Reservation

    if connection.vendor != "postgresql":
        pytest.skip("the row lock that holds the reserve back is PostgreSQL's")
    wallet = Wallet.objects.get(organization=personas.org)
    db = connection.settings_dict
    locker = psycopg.connect(
        dbname=db["NAME"],
        host=db["HOST"] or "127.0.0.1",
        port=db["PORT"] or 5432,
        user=db["USER"],
        password=db["PASSWORD"] or None,
    )
    url, headers = live_gateway.url + "/v1/chat/completions", {"Authorization": f"Bearer {secret}"}
    # A first call warms the caches, so the second one waits on nothing but its reserve.
    body = _body("/v1/chat/completions")
    assert httpx.post(url, json=body, headers=headers, timeout=10).status_code == 200
    before = set(Reservation.objects.values_list("pk", flat=True))
    try:
        locker.execute("SELECT 1 FROM wallet_wallet WHERE id = %s FOR UPDATE", [wallet.pk])
        with pytest.raises(httpx.ReadTimeout):  # the client gives up and closes the connection
            httpx.post(url, json=body, headers=headers, timeout=httpx.Timeout(5, read=0.5))
        time.sleep(0.3)  # the server sees the disconnect and cancels the call
        assert set(Reservation.objects.values_list("pk", flat=True)) == before
    finally:
        locker.rollback()  # the reserve goes through now
        locker.close()
    deadline = time.monotonic() + 5
    statuses: list[str] = []
    while time.monotonic() < deadline:
        statuses = list(Reservation.objects.exclude(pk__in=before).values_list("status", flat=True))
        if statuses and Reservation.Status.HELD not in statuses:
            break
        time.sleep(0.05)
    assert statuses == [Reservation.Status.RELEASED]
    wallet.refresh_from_db()
    assert wallet.reserved_micros == 0
