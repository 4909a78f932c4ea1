"""The database going away under the live gateway: 503 in our envelope, never a 500 page.

The live ASGI server (real HTTP) serves the same handler as production, hot path included. The
"outage" points the database settings at a port where nothing listens and closes the open
connections, so every statement from then on fails as it does while PostgreSQL restarts;
nothing of ours is patched.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from io import StringIO
from typing import Any

import httpx
import psycopg
import pytest
from django.core.management import call_command
from django.db import connection, connections
from django.utils import timezone
from psycopg import sql

from apps.accounts import services as account_services
from apps.gateway.sandbox import SandboxServer
from apps.wallet import services as wallet_services
from apps.wallet.models import LedgerEntry, Reservation, Wallet
from tests.conftest import Personas
from tests.gateway.conftest import FaultControl, LiveGateway
from tests.servers import close_shared_thread_connections

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("catalog")]

FUNDS = 1_000_000
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20}


class Outage:
    """Takes the test database away for real, for every connection of every thread and pool
    of this process: new connections are refused (``ALLOW_CONNECTIONS false``) and the open
    ones are terminated; then lets them in again. Driven from the maintenance database."""

    def __init__(self) -> None:
        db = connection.settings_dict
        self.name = db["NAME"]
        self.admin = psycopg.connect(
            dbname="postgres",
            host=db["HOST"] or "127.0.0.1",
            port=db["PORT"] or 5432,
            user=db["USER"],
            password=db["PASSWORD"] or None,
            autocommit=True,
        )

    def _allow(self, allowed: bool) -> None:
        quoted = sql.Identifier(self.name)
        value = sql.SQL("true" if allowed else "false")
        self.admin.execute(
            sql.SQL("ALTER DATABASE {} WITH ALLOW_CONNECTIONS {}").format(quoted, value)
        )

    def begin(self) -> None:
        self._allow(False)
        self.admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
            [self.name],
        )
        account_services.api_key_caches_clear()  # authenticate against the database again

    def end(self) -> None:
        self._allow(True)
        # This thread's and the sync thread's connections were terminated: let them reconnect.
        close_shared_thread_connections()
        connections.close_all()
        account_services.api_key_caches_clear()

    def close(self) -> None:
        self._allow(True)
        self.admin.close()


@pytest.fixture
def outage() -> Iterator[Outage]:
    if connection.vendor != "postgresql":
        pytest.skip("an SQLite file cannot go away")
    switch = Outage()
    try:
        yield switch
    finally:
        switch.end()
        switch.close()


@pytest.fixture
def secret(personas: Personas, settings: Any, sandbox: SandboxServer) -> str:
    settings.PROVIDER_SANDBOX = True
    settings.PROVIDER_SANDBOX_URL = sandbox.base_url
    wallet = wallet_services.wallet_for_org(org=personas.org)
    wallet_services.wallet_grant(wallet=wallet, amount_micros=FUNDS, note="outage tests")
    return account_services.api_key_create(
        org=personas.org, name="k", created_by=personas.owner
    ).secret


def _post(url: str, secret: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(url, json=body, headers={"Authorization": f"Bearer {secret}"}, timeout=30)


@pytest.mark.parametrize(
    ("path", "body", "error_of"),
    [
        ("/v1/chat/completions", BODY, lambda b: b["error"]),
        ("/v1/chat/completions", {**BODY, "stream": True}, lambda b: b["error"]),
        ("/api/v1/chat", {**BODY, "stream": True}, lambda b: b["error"]),
        ("/v1/messages", BODY, lambda b: b["error"]),
        ("/api/v1/wallet", None, lambda b: b["error"]),
    ],
)
def test_requests_during_the_outage_get_503_in_the_envelope_then_service_resumes(
    live_gateway: LiveGateway,
    secret: str,
    outage: Outage,
    path: str,
    body: dict[str, Any] | None,
    error_of: Any,
) -> None:
    url = live_gateway.url + path
    outage.begin()
    if body is None:
        response = httpx.get(url, headers={"Authorization": f"Bearer {secret}"}, timeout=30)
    else:
        response = _post(url, secret, body)
    assert response.status_code == 503, response.text[:300]
    assert response.headers["retry-after"] == "1"
    assert response.headers["content-type"].startswith("application/json")
    error = error_of(response.json())
    assert error["message"]
    request_id = response.headers.get("x-request-id") or response.headers.get("request-id")
    assert request_id
    assert request_id in response.text
    outage.end()
    if body is None:
        again = httpx.get(url, headers={"Authorization": f"Bearer {secret}"}, timeout=30)
    else:
        again = _post(url, secret, {**body, "stream": False})
    assert again.status_code == 200, again.text[:300]


@contextmanager
def _streaming(
    live_gateway: LiveGateway, secret: str, **body: Any
) -> Iterator[tuple[str, Iterator[str]]]:
    """A chat stream through the live gateway, opened and read up to its first text: yields its
    request id and the rest of its lines."""
    with httpx.stream(
        "POST",
        live_gateway.url + "/v1/chat/completions",
        json={**BODY, "stream": True, **body},
        headers={"Authorization": f"Bearer {secret}"},
        timeout=30,
    ) as response:
        assert response.status_code == 200
        lines = response.iter_lines()
        assert any("content" in next(lines) for _ in range(4))
        yield response.headers["x-request-id"], lines


def test_a_stream_whose_settle_fails_ends_with_an_error_event_and_is_not_charged(
    live_gateway: LiveGateway,
    secret: str,
    personas: Personas,
    outage: Outage,
    faults: FaultControl,
) -> None:
    faults.set(provider="openai", fault="none", chunk_delay_ms=100)
    with _streaming(live_gateway, secret, max_tokens=200) as (request_id, lines):
        outage.begin()  # the call is held and streaming; its settle will find no database
        events = [
            json.loads(line.removeprefix("data: "))
            for line in lines
            if line.startswith("data: ") and line != "data: [DONE]"
        ]
    outage.end()
    assert events[-1]["error"]["code"] == "service_unavailable"
    assert events[-1]["error"]["request_id"] == request_id
    assert not any("usage" in event and event.get("choices") == [] for event in events)
    # The hold is still there (the settle never committed): the sweeper frees it, no charge.
    held = Reservation.objects.get(request_id=request_id)
    assert held.status == Reservation.Status.HELD
    assert not LedgerEntry.objects.filter(request_id=request_id).exists()
    # Time passes: the hold expires (its TTL outlives any call) and the sweeper frees it.
    Reservation.objects.filter(pk=held.pk).update(expires_at=timezone.now())
    assert wallet_services.reservations_release_expired() == 1
    wallet = Wallet.objects.get(organization=personas.org)
    assert (wallet.balance_micros, wallet.reserved_micros) == (FUNDS, 0)
    call_command("wallet_audit", stdout=StringIO(), stderr=StringIO())


def test_a_settle_that_meets_a_short_outage_is_retried_and_charged_once(
    live_gateway: LiveGateway,
    secret: str,
    personas: Personas,
    outage: Outage,
    faults: FaultControl,
) -> None:
    """The database goes away while a stream is being answered and comes back within the
    settle's retry budget: the answer ends normally, after the database is back, charged once."""
    import threading
    import time

    ended_at: list[float] = []

    def database_back() -> None:
        outage.end()
        ended_at.append(time.monotonic())

    faults.set(provider="openai", fault="none", chunk_delay_ms=20)
    options = {"include_usage": True}
    with _streaming(live_gateway, secret, max_tokens=40, stream_options=options) as (
        request_id,
        lines,
    ):
        outage.begin()
        back = threading.Timer(2.0, database_back)  # the stream ends well before: its settle waits
        back.start()
        rest = [line for line in lines if line.startswith("data: ")]
        done_at = time.monotonic()
        back.join()
    connections.close_all()  # this thread's connection was terminated with the others
    assert rest[-1] == "data: [DONE]"
    assert done_at >= ended_at[0]  # the answer ended only once the settle got through
    final = json.loads(rest[-2].removeprefix("data: "))
    assert final["choices"] == []
    assert final["usage"]["completion_tokens"] > 0
    charge = LedgerEntry.objects.get(request_id=request_id)
    assert -charge.amount_micros == final["llmwise"]["charged_micros"] > 0
    assert Reservation.objects.get(request_id=request_id).status == Reservation.Status.SETTLED
    wallet = Wallet.objects.get(organization=personas.org)
    assert (wallet.balance_micros, wallet.reserved_micros) == (FUNDS + charge.amount_micros, 0)
    call_command("wallet_audit", stdout=StringIO(), stderr=StringIO())
