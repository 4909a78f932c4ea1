"""Admission from an allowance (apps/gateway/limits.py): windows far from their limit admit a
server process's calls from a share counted in advance, with no counter round trip per call.
Served by the real server on its loop (the allowance is taken in the background there), counted
in the real Redis; the counters' buckets are read straight from Redis."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import pytest
import redis
from django.db import connection

from apps.accounts import services as account_services
from apps.gateway.counters import KEY_PREFIX, bucket_index, counters_redis_url
from apps.gateway.sandbox import SandboxServer
from apps.wallet import services as wallet_services
from tests.conftest import Personas
from tests.gateway.conftest import LiveGateway

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.usefixtures("catalog")]

URL = "/v1/chat/completions"
BODY = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5}


@pytest.fixture
def secret(personas: Personas, settings: Any, sandbox: SandboxServer) -> str:
    if connection.vendor != "postgresql" or not counters_redis_url():
        pytest.skip("allowances are made on the server's loop, counted in Redis")
    settings.PROVIDER_SANDBOX = True
    settings.PROVIDER_SANDBOX_URL = sandbox.base_url
    settings.GATEWAY_ORG_TPM = 0  # requests only: the arithmetic below stays exact
    wallet = wallet_services.wallet_for_org(org=personas.org)
    wallet_services.wallet_grant(wallet=wallet, amount_micros=10_000_000, note="allowance")
    return account_services.api_key_create(
        org=personas.org, name="k", created_by=personas.owner
    ).secret


def _call(gateway: LiveGateway, secret: str) -> httpx.Response:
    return httpx.post(
        gateway.url + URL, json=BODY, headers={"Authorization": f"Bearer {secret}"}, timeout=10
    )


def _org_bucket(personas: Personas, window_seconds: float, index: int) -> int:
    client = redis.Redis.from_url(counters_redis_url())
    try:
        value = client.get(f"{KEY_PREFIX}w:org:{personas.org.pk}:rpm:{window_seconds:g}:{index}")
    finally:
        client.close()
    return int(value or 0)


def test_calls_admitted_from_an_allowance_never_pass_the_limit(
    live_gateway: LiveGateway, secret: str, settings: Any
) -> None:
    settings.GATEWAY_ORG_RPM = 100
    first = _call(live_gateway, secret)
    assert first.status_code == 200
    # 99 left, more than half the limit: an allowance of 5% of it (4 calls) is counted now.
    time.sleep(0.3)

    async def burst() -> list[int]:
        async with httpx.AsyncClient(base_url=live_gateway.url, timeout=20) as client:
            responses = await asyncio.gather(
                *(
                    client.post(URL, json=BODY, headers={"Authorization": f"Bearer {secret}"})
                    for _ in range(130)
                )
            )
        return [r.status_code for r in responses]

    statuses = asyncio.run(burst())
    admitted = statuses.count(200)
    assert set(statuses) == {200, 429}
    # Never more than the limit in all; at most the allowance's unused part refused early.
    assert 99 - 4 <= admitted <= 99


def test_an_allowance_admits_without_counting_each_call_and_gives_back_what_it_did_not_use(
    live_gateway: LiveGateway, secret: str, settings: Any, personas: Personas
) -> None:
    window = 4
    settings.GATEWAY_LIMITS_WINDOW_SECONDS = window
    settings.GATEWAY_ORG_RPM = 1000
    while time.time() % window > 0.5:  # start at the beginning of a bucket
        time.sleep(0.05)
    index = bucket_index(time.time(), window)
    first = _call(live_gateway, secret)
    assert first.headers["x-ratelimit-remaining-requests"] == "999"
    deadline = time.monotonic() + 2
    while _org_bucket(personas, window, index) < 1 + 49 and time.monotonic() < deadline:
        time.sleep(0.02)
    # The allowance (5% of the 999 left) is counted in one take.
    assert _org_bucket(personas, window, index) == 1 + 49
    remaining = set()
    for _ in range(5):
        response = _call(live_gateway, secret)
        assert response.status_code == 200
        remaining.add(response.headers["x-ratelimit-remaining-requests"])
    # Admitted from it: nothing more counted, and the headers show the windows as it left them.
    assert bucket_index(time.time(), window) == index, "the machine was too slow for the bucket"
    assert _org_bucket(personas, window, index) == 1 + 49
    assert remaining == {"950"}
    # Once its bucket is over, the next call retires it: the 44 calls it did not hand out are
    # given back, and its bucket holds exactly the 6 calls made.
    time.sleep(window - time.time() % window + 0.1)
    assert _call(live_gateway, secret).status_code == 200
    deadline = time.monotonic() + 2
    while _org_bucket(personas, window, index) != 6 and time.monotonic() < deadline:
        time.sleep(0.02)
    assert _org_bucket(personas, window, index) == 6


def test_another_organizations_calls_never_draw_on_an_allowance(
    live_gateway: LiveGateway, secret: str, settings: Any, personas: Personas
) -> None:
    settings.GATEWAY_ORG_RPM = 1000
    assert _call(live_gateway, secret).status_code == 200
    time.sleep(0.3)  # our allowance (49 calls) is counted by now
    wallet = wallet_services.wallet_for_org(org=personas.other_org)
    wallet_services.wallet_grant(wallet=wallet, amount_micros=1_000_000, note="outsider")
    theirs = account_services.api_key_create(
        org=personas.other_org, name="k", created_by=personas.outsider
    ).secret
    # Their first call is counted on its own, in their organization's window only.
    response = _call(live_gateway, theirs)
    assert response.status_code == 200
    assert response.headers["x-ratelimit-remaining-requests"] == "999"


def test_a_call_admitted_from_an_allowance_still_needs_credit(
    live_gateway: LiveGateway,
    secret: str,
    settings: Any,
    personas: Personas,
    sandbox: SandboxServer,
) -> None:
    settings.GATEWAY_ORG_RPM = 1000
    assert _call(live_gateway, secret).status_code == 200
    time.sleep(0.3)
    assert _call(live_gateway, secret).headers["x-ratelimit-remaining-requests"] == "950"
    wallet = wallet_services.wallet_for_org(org=personas.org)
    wallet.refresh_from_db()
    wallet_services.wallet_grant(
        wallet=wallet, amount_micros=-wallet.available_micros, note="drained"
    )
    upstream_calls = sandbox.app.chat_calls
    refused = _call(live_gateway, secret)
    assert refused.status_code == 402
    assert refused.json()["error"]["type"] == "insufficient_credit"
    assert sandbox.app.chat_calls == upstream_calls  # nothing went upstream
