"""Per-key and per-organization limits on POST /v1/chat/completions, and the shared counters.

Calls go through HTTP (our views in-process, or the live ASGI server for concurrency) to the
sandbox upstream. Time is controlled through the counters' injectable clock, never by sleeping
through a window. Every scenario runs on both backends: in-process memory, and Redis when
REDIS_URL is set.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from io import StringIO
from typing import Any

import httpx
import pytest
from django.core.management import call_command
from django.db import connection
from django.test import Client

from apps.accounts import services as account_services
from apps.accounts.models import ApiKey
from apps.gateway.counters import (
    Counters,
    MemoryCounters,
    RedisCounters,
    Window,
    counters,
    counters_redis_url,
)
from apps.gateway.models import CatalogModel, RequestLog
from apps.gateway.pricing import reservation_micros
from apps.gateway.sandbox import SandboxServer
from apps.wallet import services as wallet_services
from apps.wallet.models import LedgerEntry, Reservation, Wallet
from tests.conftest import Personas
from tests.gateway.conftest import LiveGateway

URL = "/v1/chat/completions"
MODEL = "gpt-4o-mini"
FUNDS = 1_000_000
# The start of a one-minute bucket, so the sliding-window arithmetic below is exact.
T0 = 60.0 * 28_333_334
BACKENDS = ("memory", "redis")


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def _use_backend(name: str, settings: Any) -> Counters:
    if name == "redis" and not counters_redis_url():
        pytest.skip("Redis counters need REDIS_URL")
    settings.GATEWAY_COUNTERS_BACKEND = name
    store = counters()
    if isinstance(store, MemoryCounters):
        store.clear()  # Redis is flushed per test by the cache fixture (same database)
    return store


@pytest.fixture(params=BACKENDS)
def clock(request: pytest.FixtureRequest, settings: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The configured counters backend (both, in turn) on a fake clock."""
    fake = FakeClock()
    store = _use_backend(request.param, settings)
    monkeypatch.setattr(store, "clock", fake)
    return fake


@pytest.fixture
def store(clock: FakeClock) -> Counters:
    return counters()


# --- the counters interface -----------------------------------------------------------------


def _run(coro: Any) -> Any:
    return asyncio.run(coro)


async def _close(store: Counters) -> None:
    if isinstance(store, RedisCounters):
        await store.aclose()


def test_window_counts_slide_and_expire(store: Counters, clock: FakeClock) -> None:
    async def scenario() -> list[float]:
        seen = []
        for _ in range(3):
            await store.hit("w", window_seconds=60)
        seen.append((await store.peek("w", window_seconds=60)).used)
        clock.advance(90)  # half-way through the next bucket: the old one weighs one half
        seen.append((await store.peek("w", window_seconds=60)).used)
        await store.hit("w", window_seconds=60, amount=2)
        seen.append((await store.peek("w", window_seconds=60)).used)
        clock.advance(120)  # two windows on: nothing left
        seen.append((await store.peek("w", window_seconds=60)).used)
        await _close(store)
        return seen

    assert _run(scenario()) == [3, 1.5, 3.5, 0]


def test_take_is_all_or_nothing_and_retry_after_is_exact(store: Counters, clock: FakeClock) -> None:
    wide, narrow = Window("wide", 60, 1, 10), Window("narrow", 60, 1, 2)

    async def scenario() -> None:
        assert (await store.take([wide, narrow])).admitted
        assert (await store.take([wide, narrow])).admitted
        refused = await store.take([wide, narrow])
        assert not refused.admitted
        assert refused.refused is not None
        assert refused.refused.key == "narrow"
        assert refused.refused.remaining == 0
        # Nothing was counted in the window that had room either.
        assert (await store.peek("wide", window_seconds=60)).used == 2
        # Two hits at the bucket's start, limit 2: the next fits once the bucket has ended and
        # faded by half (90 s), not a moment before.
        wait = refused.refused.retry_after
        assert wait == pytest.approx(90, abs=0.01)
        clock.advance(wait - 0.05)
        assert not (await store.take([wide, narrow])).admitted
        clock.advance(0.05)
        assert (await store.take([wide, narrow])).admitted
        await _close(store)

    _run(scenario())


def test_adjust_trues_up_a_hold_in_its_own_bucket(store: Counters, clock: FakeClock) -> None:
    async def scenario() -> None:
        taken = await store.take([Window("tpm", 60, 100, 150)])
        clock.advance(30)
        await store.adjust([Window("tpm", 60, -70)], at=taken.at)
        assert (await store.peek("tpm", window_seconds=60)).used == 30
        await store.adjust([Window("tpm", 60, -500)], at=taken.at)  # floored at zero
        assert (await store.peek("tpm", window_seconds=60)).used == 0
        clock.advance(200)  # the bucket is gone: a late true-up changes nothing
        await store.adjust([Window("tpm", 60, 40)], at=taken.at)
        assert (await store.peek("tpm", window_seconds=60)).used == 0
        await _close(store)

    _run(scenario())


def test_values_with_ttl_limits_and_floors(store: Counters) -> None:
    async def scenario() -> None:
        assert await store.value_get("v") is None
        assert await store.value_set("v", 5, ttl_seconds=30)
        assert not await store.value_set("v", 9, ttl_seconds=30, only_if_absent=True)
        assert await store.value_get("v") == 5
        assert await store.value_add("v", 3, ttl_seconds=None) == (True, 8)
        assert await store.value_add("v", 3, ttl_seconds=None, limit=10) == (False, 8)
        assert await store.value_add("v", -20, ttl_seconds=None, floor=0) == (True, 0)
        assert await store.value_add("absent", 1, ttl_seconds=None, only_if_present=True) == (
            False,
            None,
        )
        assert await store.value_add("new", 4, ttl_seconds=30, limit=4) == (True, 4)
        await store.delete("v")
        assert await store.value_get("v") is None
        await _close(store)

    _run(scenario())


def test_value_ttl_expires(settings: Any) -> None:
    memory = MemoryCounters(clock=FakeClock())
    _run(memory.value_set("v", 1, ttl_seconds=5))
    memory.clock.advance(5)  # type: ignore[attr-defined]
    assert _run(memory.value_get("v")) is None
    if not counters_redis_url():
        return
    redis = RedisCounters(url=counters_redis_url())

    async def scenario() -> int | None:
        await redis.value_set("ttl", 1, ttl_seconds=0.2)
        await asyncio.sleep(0.3)
        value = await redis.value_get("ttl")
        await redis.aclose()
        return value

    assert _run(scenario()) is None


def test_concurrent_takes_never_exceed_the_limit(store: Counters) -> None:
    """Tasks on one loop and threads with their own loops (and their own Redis pools)."""
    window = Window("busy", 60, 1, 10)

    async def burst(n: int) -> int:
        results = await asyncio.gather(*(store.take([window]) for _ in range(n)))
        await _close(store)
        return sum(r.admitted for r in results)

    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        admitted = sum(pool.map(lambda _: _run(burst(15)), range(4)))
    assert admitted == 10
    assert _run(store.peek("busy", window_seconds=60)).used == 10


def test_memory_backend_stays_bounded() -> None:
    clock = FakeClock()
    memory = MemoryCounters(clock=clock, max_entries=100)

    async def scenario() -> None:
        for i in range(1_000):
            await memory.hit(f"k{i}", window_seconds=60)
        assert len(memory) <= 100
        clock.advance(10_000)
        await memory.value_set("fresh", 1, ttl_seconds=60)
        memory._sweep(clock())  # what the next write past the bound does
        assert len(memory) == 1

    _run(scenario())


def test_backends_give_the_same_results() -> None:
    if not counters_redis_url():
        pytest.skip("needs REDIS_URL")
    steps = [(0, 3), (10, 4), (20, 2), (35, 5), (61, 3), (75, 6), (119, 2), (130, 8), (250, 1)]

    async def play(store: Counters, clock: FakeClock) -> list[tuple[Any, ...]]:
        out = []
        for at, amount in steps:
            clock.now = T0 + at
            taken = await store.take([Window("same", 60, amount, 10), Window("other", 30, 1, 4)])
            out.append(
                (
                    taken.admitted,
                    taken.refused_index,
                    [(s.used, s.remaining, s.reset_seconds, s.retry_after) for s in taken.states],
                )
            )
        await _close(store)
        return out

    memory_clock, redis_clock = FakeClock(), FakeClock()
    memory = MemoryCounters(clock=memory_clock)
    redis = RedisCounters(url=counters_redis_url(), clock=redis_clock)
    expected = _run(play(memory, memory_clock))
    assert _run(play(redis, redis_clock)) == expected
    assert any(not admitted for admitted, _, _ in expected)  # the sequence does refuse


# --- limits through POST /v1/chat/completions -----------------------------------------------


@pytest.fixture
def gateway(settings: Any, sandbox: SandboxServer, clock: FakeClock) -> SandboxServer:
    settings.PROVIDER_SANDBOX = True
    settings.PROVIDER_SANDBOX_URL = sandbox.base_url
    return sandbox


def _key(personas: Personas, org: Any = None, **limits: Any) -> tuple[str, ApiKey]:
    org = org or personas.org
    owner = personas.owner if org == personas.org else personas.outsider
    issued = account_services.api_key_create(org=org, name="k", created_by=owner, **limits)
    return issued.secret, issued.api_key


def _fund(org: Any, micros: int = FUNDS) -> Wallet:
    wallet = wallet_services.wallet_for_org(org=org)
    wallet_services.wallet_grant(wallet=wallet, amount_micros=micros, note="limit tests")
    return wallet


def _post(secret: str, content: str = "hi", **fields: Any) -> Any:
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}], **fields}
    return Client().post(
        URL, body, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {secret}"
    )


def _change_key(key: ApiKey, **fields: Any) -> None:
    """An admin edits the key: saved, and evicted from the 1 s authentication cache as a key
    update service must do (as api_key_revoke does)."""
    ApiKey.objects.filter(pk=key.pk).update(**fields)
    account_services.api_key_cache_evict(key=key)


def _audit_ok() -> None:
    call_command("wallet_audit", stdout=StringIO(), stderr=StringIO())


@pytest.mark.django_db
@pytest.mark.usefixtures("catalog")
def test_rpm_refuses_with_429_headers_and_nothing_charged_until_the_window_moves(
    personas: Personas, gateway: SandboxServer, clock: FakeClock, settings: Any
) -> None:
    settings.GATEWAY_ORG_RPM = 0
    settings.GATEWAY_ORG_TPM = 0
    wallet = _fund(personas.org)
    secret, _ = _key(personas, rpm_limit=2)
    first, second = _post(secret), _post(secret)
    assert (first.status_code, second.status_code) == (200, 200)
    assert first["x-ratelimit-limit-requests"] == "2"
    assert (first["x-ratelimit-remaining-requests"], second["x-ratelimit-remaining-requests"]) == (
        "1",
        "0",
    )
    assert second["x-ratelimit-reset-requests"] == "2m0s"
    assert "x-ratelimit-limit-tokens" not in first  # no token limit anywhere

    calls_before = gateway.app.chat_calls
    wallet.refresh_from_db()
    balance = wallet.balance_micros
    refused = _post(secret)
    assert refused.status_code == 429
    error = refused.json()["error"]
    assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limit_rpm")
    assert error["request_id"] == refused["x-request-id"]
    assert "2 requests per minute" in error["message"]
    assert refused["Retry-After"] == "90"
    assert refused["x-ratelimit-limit-requests"] == "2"
    assert refused["x-ratelimit-remaining-requests"] == "0"
    # Refused: nothing sent upstream, reserved, charged or logged.
    assert gateway.app.chat_calls == calls_before
    assert Reservation.objects.count() == 2
    assert RequestLog.objects.count() == 2
    wallet.refresh_from_db()
    assert (wallet.balance_micros, wallet.reserved_micros) == (balance, 0)

    clock.advance(89)
    assert _post(secret).status_code == 429
    clock.advance(1)
    assert _post(secret).status_code == 200
    assert LedgerEntry.objects.filter(kind=LedgerEntry.Kind.CHARGE).count() == 3
    _audit_ok()


@pytest.mark.django_db
@pytest.mark.usefixtures("catalog")
def test_tpm_holds_the_worst_case_and_trues_up_to_real_usage(
    personas: Personas, gateway: SandboxServer, settings: Any
) -> None:
    settings.GATEWAY_ORG_TPM = 0
    _fund(personas.org)
    secret, key = _key(personas, tpm_limit=300)
    first = _post(secret, max_tokens=200)  # holds 5 (prompt estimate) + 200
    assert first.status_code == 200, first.content
    assert first["x-ratelimit-limit-tokens"] == "300"
    assert first["x-ratelimit-remaining-tokens"] == "95"
    used_first = first.json()["usage"]["total_tokens"]
    assert used_first < 100
    # Without the true-up the window would hold 205 and this 205-token hold would not fit.
    second = _post(secret, max_tokens=200)
    assert second.status_code == 200, second.content
    assert second["x-ratelimit-remaining-tokens"] == str(300 - used_first - 205)
    used = used_first + second.json()["usage"]["total_tokens"]
    window = _run(counters().peek(f"key:{key.prefix}:tpm", window_seconds=60))
    assert window.used == used

    calls_before = gateway.app.chat_calls
    refused = _post(secret, max_tokens=300 - used)  # worst case = 300 - used + 5: over
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limit_tpm"
    assert int(refused["Retry-After"]) >= 1
    assert refused["x-ratelimit-remaining-tokens"] == str(300 - used)
    never = _post(secret, max_tokens=400)  # can never fit in 300 tokens a minute
    assert never.status_code == 400
    assert never.json()["error"]["code"] == "tokens_exceed_tpm_limit"
    assert never.json()["error"]["param"] == "max_tokens"
    assert gateway.app.chat_calls == calls_before
    _audit_ok()


@pytest.mark.django_db
@pytest.mark.usefixtures("catalog")
def test_spend_cap_refuses_at_the_cap_and_before_a_worst_case_could_cross_it(
    personas: Personas, gateway: SandboxServer
) -> None:
    _fund(personas.org)
    model = CatalogModel.objects.get(pk=MODEL)
    worst = reservation_micros(model=model, prompt_tokens=5, max_tokens=50)  # "hi": 5 tokens
    cap = worst + 10
    secret, key = _key(personas, spend_cap_micros=cap)
    first = _post(secret, max_tokens=50)
    assert first.status_code == 200, first.content
    spent = first.json()["llmwise"]["cost_micros"]
    assert 10 < spent < worst  # the same call's worst case no longer fits under the cap

    calls_before = gateway.app.chat_calls
    refused = _post(secret, max_tokens=50)
    assert refused.status_code == 402
    error = refused.json()["error"]
    assert (error["type"], error["code"]) == ("insufficient_quota", "spend_cap_would_exceed")
    assert "spend cap" in error["message"]
    assert gateway.app.chat_calls == calls_before

    assert _post(secret, max_tokens=5).status_code == 200  # a cheap call still fits
    spent = sum(RequestLog.objects.filter(api_key=key).values_list("cost_micros", flat=True))
    # An admin lowers the cap to what was spent: the very next call is refused.
    _change_key(key, spend_cap_micros=spent)
    reached = _post(secret, max_tokens=1)
    assert reached.status_code == 402
    assert reached.json()["error"]["code"] == "spend_cap_reached"
    _audit_ok()


@pytest.mark.django_db
@pytest.mark.usefixtures("catalog")
def test_spend_cap_counts_spend_already_in_the_request_log(
    personas: Personas, gateway: SandboxServer
) -> None:
    _fund(personas.org)
    secret, key = _key(personas)  # no cap yet: nothing is tracked in the counters
    for _ in range(3):
        assert _post(secret).status_code == 200
    spent = sum(RequestLog.objects.filter(api_key=key).values_list("cost_micros", flat=True))
    _change_key(key, spend_cap_micros=spent)
    response = _post(secret)
    assert response.status_code == 402
    assert response.json()["error"]["code"] == "spend_cap_reached"


@pytest.mark.django_db
@pytest.mark.usefixtures("catalog")
def test_org_limit_counts_every_key_of_the_org_and_no_other_org(
    personas: Personas, gateway: SandboxServer, settings: Any
) -> None:
    settings.GATEWAY_ORG_RPM = 3
    _fund(personas.org)
    _fund(personas.other_org)
    ours_a, _ = _key(personas)
    ours_b, _ = _key(personas)
    theirs, _ = _key(personas, org=personas.other_org)
    for _ in range(5):  # another organization's traffic counts only against itself
        _post(theirs)
    assert _post(ours_a).status_code == 200
    response = _post(ours_b)
    assert response.status_code == 200
    assert response["x-ratelimit-limit-requests"] == "3"
    assert response["x-ratelimit-remaining-requests"] == "1"
    assert _post(ours_a).status_code == 200
    refused = _post(ours_b)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "org_rate_limit"
    assert "your organization allows 3 requests" in refused.json()["error"]["message"]


@pytest.mark.django_db
@pytest.mark.usefixtures("catalog")
def test_key_without_limits_is_unaffected_by_a_limited_sibling(
    personas: Personas, gateway: SandboxServer, settings: Any
) -> None:
    settings.GATEWAY_ORG_RPM = 0
    settings.GATEWAY_ORG_TPM = 0
    _fund(personas.org)
    limited, _ = _key(personas, rpm_limit=1)
    free, _ = _key(personas)
    assert _post(limited).status_code == 200
    assert _post(limited).status_code == 429
    for _ in range(4):
        response = _post(free)
        assert response.status_code == 200
        assert not any(name.startswith("x-ratelimit") for name in response.headers)


@pytest.mark.django_db
@pytest.mark.usefixtures("catalog")
def test_limit_changes_and_revocation_apply_to_the_next_call(
    personas: Personas, gateway: SandboxServer
) -> None:
    _fund(personas.org)
    secret, key = _key(personas, rpm_limit=5)
    assert _post(secret).status_code == 200
    _change_key(key, rpm_limit=1)
    assert _post(secret).status_code == 429
    _change_key(key, rpm_limit=None)
    assert _post(secret).status_code == 200
    account_services.api_key_revoke(org=personas.org, actor=personas.owner, key_id=key.pk)
    assert _post(secret).status_code == 401


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("catalog")
def test_concurrent_requests_never_exceed_the_rpm_and_streams_carry_headers(
    personas: Personas, gateway: SandboxServer, live_gateway: LiveGateway, settings: Any
) -> None:
    """Our ASGI server on one loop, many requests at once: exactly the limit gets through."""
    if connection.vendor == "sqlite":
        # The in-memory test database locks under concurrent writers (the admitted calls'
        # reservations); the counters' own concurrency test above runs everywhere.
        pytest.skip("concurrent settled calls need PostgreSQL")
    wallet = _fund(personas.org)
    secret, _ = _key(personas, rpm_limit=5)
    headers = {"authorization": f"Bearer {secret}"}
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 20}
    with httpx.stream(
        "POST", live_gateway.url + URL, json={**body, "stream": True}, headers=headers
    ) as stream:
        assert stream.status_code == 200
        assert stream.headers["x-ratelimit-limit-requests"] == "5"
        assert stream.headers["x-ratelimit-remaining-requests"] == "4"
        stream.read()
    calls_before = gateway.app.chat_calls

    async def burst() -> list[int]:
        async with httpx.AsyncClient(base_url=live_gateway.url, timeout=10) as client:
            responses = await asyncio.gather(
                *(client.post(URL, json=body, headers=headers) for _ in range(16))
            )
        return [r.status_code for r in responses]

    statuses = _run(burst())
    assert sorted(statuses) == [200] * 4 + [429] * 12
    assert gateway.app.chat_calls == calls_before + 4
    wallet.refresh_from_db()
    assert wallet.reserved_micros == 0
    _audit_ok()


def test_reset_header_format() -> None:
    from apps.gateway.limits import _duration

    assert [_duration(s) for s in (0.25, 1, 59.6, 90, 120)] == [
        "250ms",
        "1s",
        "1m0s",
        "1m30s",
        "2m0s",
    ]


@pytest.mark.django_db
@pytest.mark.usefixtures("catalog")
def test_unreachable_counters_limit_per_process(
    personas: Personas, gateway: SandboxServer, settings: Any
) -> None:
    """A Redis outage must not take the gateway down, nor lift every limit: calls go through,
    limited by this process's own counts until Redis answers again."""
    settings.GATEWAY_COUNTERS_BACKEND = "redis"
    settings.GATEWAY_COUNTERS_REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    _fund(personas.org)
    secret, _ = _key(personas, rpm_limit=1, spend_cap_micros=1_000_000)
    first = _post(secret)
    assert first.status_code == 200, first.content
    assert first["x-ratelimit-limit-requests"] == "1"
    assert counters().degraded
    second = _post(secret)
    assert second.status_code == 429
    assert second.json()["error"]["code"] == "rate_limit_rpm"


@pytest.mark.django_db
@pytest.mark.usefixtures("catalog")
def test_a_roomy_key_holds_credit_during_admission_and_a_refusal_gives_it_back(
    personas: Personas, gateway: SandboxServer, settings: Any
) -> None:
    """With room left in every window at its last admission, a key's credit hold is written
    while the counters decide (the two round trips overlap). Refused after all (its limit was
    lowered meanwhile): the hold is released before the 429 goes out, nothing charged. From then
    on the key is admitted first, so refusals write nothing to the database."""
    settings.GATEWAY_ORG_RPM = 0
    settings.GATEWAY_ORG_TPM = 0
    wallet = _fund(personas.org)
    secret, key = _key(personas, rpm_limit=10)
    first, second = _post(secret), _post(secret)
    assert (first.status_code, second.status_code) == (200, 200)
    balance = Wallet.objects.get(pk=wallet.pk).balance_micros

    _change_key(key, rpm_limit=2)
    refused = _post(secret)
    assert refused.status_code == 429
    assert refused.json()["error"]["code"] == "rate_limit_rpm"
    # Held while admission was decided, then given back: a released hold, no charge, no log.
    hold = Reservation.objects.get(request_id=refused["x-request-id"])
    assert hold.status == Reservation.Status.RELEASED
    assert not RequestLog.objects.filter(request_id=refused["x-request-id"]).exists()
    wallet.refresh_from_db()
    assert (wallet.balance_micros, wallet.reserved_micros) == (balance, 0)

    again = _post(secret)
    assert again.status_code == 429
    assert not Reservation.objects.filter(request_id=again["x-request-id"]).exists()
    _audit_ok()


@pytest.mark.django_db
@pytest.mark.usefixtures("catalog")
def test_a_roomy_key_short_of_credit_gets_402_and_its_admission_back(
    personas: Personas, gateway: SandboxServer, settings: Any
) -> None:
    settings.GATEWAY_ORG_RPM = 0
    settings.GATEWAY_ORG_TPM = 0
    wallet = _fund(personas.org)
    secret, key = _key(personas, rpm_limit=10, tpm_limit=100_000)
    assert _post(secret, max_tokens=20).status_code == 200
    # Take the credit back: the next call's hold (written during its admission) is refused.
    wallet.refresh_from_db()
    wallet_services.wallet_grant(
        wallet=wallet, amount_micros=-wallet.available_micros, note="taken back"
    )
    short = _post(secret, max_tokens=20)
    assert short.status_code == 402
    assert short.json()["error"]["code"] == "insufficient_credit"
    assert not Reservation.objects.filter(request_id=short["x-request-id"]).exists()
    # The admission's token hold was given back: only the first call's real usage is counted.
    log = RequestLog.objects.get()
    state = asyncio.run(
        counters().peek(
            f"key:{key.prefix}:tpm", window_seconds=settings.GATEWAY_LIMITS_WINDOW_SECONDS
        )
    )
    assert state.used == log.prompt_tokens + log.completion_tokens
    _audit_ok()
