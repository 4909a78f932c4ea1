"""Provider health: the breaker and cooldown state machine on both counter backends, the health
API, the dashboard status page, and two real server processes sharing breakers through Redis."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.db import connection
from django.test import Client

from apps.accounts import services as account_services
from apps.gateway.counters import (
    Counters,
    MemoryCounters,
    RedisCounters,
    Window,
    counters,
    counters_redis_url,
)
from apps.gateway.providers.base import ProviderError, error_for_status, transport_error
from apps.gateway.routing import health
from apps.gateway.sandbox import SandboxServer
from apps.wallet import services as wallet_services
from tests.conftest import Personas
from tests.gateway.conftest import FaultControl

BACKENDS = ("memory", "redis")
T0 = 1_800_000_000.0
COOLDOWN = 10.0
MODEL = "gpt-4o-mini"
FALLBACK = "claude-haiku-4.5"
REPO = Path(__file__).resolve().parents[2]


class FakeClock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> float:
        return self.now


@pytest.fixture(autouse=True)
def _fresh_health(settings: Any) -> None:
    settings.GATEWAY_MESH_BREAKER_COOLDOWN_SECONDS = COOLDOWN
    settings.GATEWAY_MESH_RATE_LIMIT_COOLDOWN_SECONDS = 2.0
    health.health_local_clear()


@pytest.fixture(params=BACKENDS)
def clock(request: pytest.FixtureRequest, settings: Any, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Each backend in turn, on a fake wall clock (no sleeping through windows and cool-downs)."""
    if request.param == "redis" and not counters_redis_url():
        pytest.skip("Redis counters need REDIS_URL")
    settings.GATEWAY_COUNTERS_BACKEND = request.param
    store = counters()
    if isinstance(store, MemoryCounters):
        store.clear()  # Redis is flushed per test by the cache fixture (same database)
    fake = FakeClock()
    monkeypatch.setattr(store, "clock", fake)
    return fake


def _run(coro: Any) -> Any:
    async def run() -> Any:
        try:
            return await coro
        finally:
            store: Counters = counters()
            if isinstance(store, RedisCounters):
                await store.aclose()

    return asyncio.run(run())


def _failure(code: int = 500, provider: str = "openai", retry_after: float | None = None) -> Any:
    return error_for_status(
        provider=provider, upstream_status=code, message="boom", retry_after=retry_after
    )


async def _call(
    provider: str, model: str, *, error: ProviderError | None = None, latency: int = 100
) -> health.Gate:
    gate = await health.attempt_gate(provider, model)
    if gate.go:
        await health.attempt_record(gate, error=error, latency_ms=latency)
    return gate


def _state(provider: str = "openai", model: str = MODEL) -> health.TargetHealth:
    [row] = _run(health.health_snapshot([(provider, model)]))
    return row


def test_successes_reach_the_shared_store_in_batches_without_a_read(clock: FakeClock) -> None:
    calls = health.Target("openai", MODEL).key + ":calls"

    async def play() -> tuple[float, float]:
        for _ in range(3):
            await _call("openai", MODEL)
        store = counters()
        before = (await store.take([Window(calls, health._window(), 0)])).states[0].used
        await asyncio.sleep(health.SUCCESS_FLUSH_SECONDS + 0.2)  # the flush is due by then
        after = (await store.take([Window(calls, health._window(), 0)])).states[0].used
        return before, after

    assert _run(play()) == (0, 3)


def test_the_breaker_opens_on_a_burst_of_failures(clock: FakeClock) -> None:
    async def play() -> list[bool]:
        seen = []
        for _ in range(4):
            await _call("openai", MODEL, latency=120)
        for _ in range(4):  # 4 of 8: 50% over ≥ 5 calls
            gate = await _call("openai", MODEL, error=_failure())
            seen.append(gate.go)
        seen.append((await health.attempt_gate("openai", MODEL)).go)
        return seen

    assert _run(play()) == [True, True, True, True, False]
    row = _state()
    assert row.state == health.BreakerState.OPEN
    assert (row.calls, row.errors, row.error_rate) == (8, 4, 0.5)
    assert row.p50_ms is not None
    assert 100 <= row.p50_ms <= 200
    assert row.last_failure_code == "upstream_server_error"
    assert row.last_failure_at is not None
    assert row.last_failure_at.timestamp() == T0
    assert not health.healthy("openai", MODEL)
    assert health.healthy("openai", "gpt-4o")  # per model


def test_few_or_rare_failures_do_not_open_it(clock: FakeClock) -> None:
    async def play() -> None:
        for _ in range(4):
            await _call("openai", MODEL, error=_failure())  # 4 calls: below the minimum
        for _ in range(6):
            await _call("openai", MODEL)  # now 40%

    _run(play())
    _run(_call("openai", MODEL, error=_failure(400)))  # the request's fault, not the provider's
    assert _state().state == health.BreakerState.CLOSED
    assert _state().errors == 4


def test_half_open_lets_exactly_one_probe_through_and_it_decides(clock: FakeClock) -> None:
    async def trip() -> None:
        for _ in range(5):
            await _call(
                "openai",
                MODEL,
                error=transport_error(provider="openai", message="x", timed_out=True),
            )

    _run(trip())
    clock.now += COOLDOWN - 1
    assert not _run(health.attempt_gate("openai", MODEL)).go  # still cooling down
    clock.now += 1.5
    assert _state().state == health.BreakerState.HALF_OPEN

    async def race() -> list[health.Gate]:
        return list(await asyncio.gather(*(health.attempt_gate("openai", MODEL) for _ in range(5))))

    gates = _run(race())
    assert [g.probe for g in gates].count(True) == 1
    assert [g.go for g in gates].count(True) == 1
    assert {g.skip for g in gates if not g.go} == {health.SkipReason.PROBE_IN_FLIGHT}

    # The probe fails: open again for a whole cool-down.
    [probe] = [g for g in gates if g.probe]
    _run(health.attempt_record(probe, error=_failure(503), latency_ms=5))
    assert _state().state == health.BreakerState.OPEN
    clock.now += COOLDOWN + 0.5
    again = _run(health.attempt_gate("openai", MODEL))
    assert again.probe
    _run(health.attempt_record(again, error=None, latency_ms=80))  # the probe succeeds: closed
    assert _state().state == health.BreakerState.CLOSED
    assert health.healthy("openai", MODEL)
    # The breaker's window was emptied: one new failure does not re-open it.
    _run(_call("openai", MODEL, error=_failure()))
    assert _state().state == health.BreakerState.CLOSED


def test_an_abandoned_probe_frees_the_slot(clock: FakeClock) -> None:
    async def trip() -> None:
        for _ in range(5):
            await _call("openai", MODEL, error=_failure())

    _run(trip())
    clock.now += COOLDOWN + 1
    probe = _run(health.attempt_gate("openai", MODEL))
    assert probe.probe
    assert not _run(health.attempt_gate("openai", MODEL)).go
    _run(health.attempt_abandon(probe))
    assert _run(health.attempt_gate("openai", MODEL)).probe


def test_openrouter_429s_cool_the_provider_down_honouring_retry_after(clock: FakeClock) -> None:
    model = "meta-llama/llama-3.3-70b-instruct"

    async def burst(retry_after: float) -> None:
        for _ in range(3):
            await _call("openrouter", model, error=_failure(429, "openrouter", retry_after))

    _run(burst(5.0))
    gate = _run(health.attempt_gate("openrouter", model))
    assert (gate.go, gate.skip) == (False, health.SkipReason.PROVIDER_COOLDOWN)
    other = _run(health.attempt_gate("openrouter", "anthropic/claude-sonnet-4.5"))
    assert not other.go  # the whole provider: its rate limit is account-wide
    assert not health.healthy("openrouter", model)
    assert _state("openrouter", model).cooldown_until is not None
    clock.now += 4.0  # past the configured 2 s, not past Retry-After's 5 s
    assert not _run(health.attempt_gate("openrouter", model)).go
    clock.now += 1.5
    assert _run(health.attempt_gate("openrouter", model)).go
    # Other providers' 429s do not cool them down (their limits are per model or per key).
    for _ in range(4):
        _run(_call("groq", "llama-3.3-70b", error=_failure(429, "groq")))
    assert _run(health.attempt_gate("groq", "llama-3.3-70b")).go


def test_byok_rate_limits_are_not_the_providers_health(clock: FakeClock) -> None:
    async def play() -> None:
        for _ in range(6):
            gate = await health.attempt_gate("openrouter", "x")
            await health.attempt_record(
                gate, error=_failure(429, "openrouter"), latency_ms=1, byok=True
            )

    _run(play())
    assert _run(health.attempt_gate("openrouter", "x")).go
    assert _state("openrouter", "x").errors == 0


def test_an_unreachable_store_lets_calls_through(settings: Any) -> None:
    settings.GATEWAY_COUNTERS_BACKEND = "redis"
    settings.GATEWAY_COUNTERS_REDIS_URL = "redis://127.0.0.1:1/0"  # nothing listens there
    gate = _run(health.attempt_gate("openai", MODEL))
    assert gate.go
    _run(health.attempt_record(gate, error=_failure(), latency_ms=1))  # logged, not raised


# --- GET /api/v1/health/providers and the dashboard page ---------------------------------------


@pytest.fixture
def _memory_counters(settings: Any) -> None:
    settings.GATEWAY_COUNTERS_BACKEND = "memory"
    store = counters()
    assert isinstance(store, MemoryCounters)
    store.clear()


def _trip(model: str = MODEL, provider: str = "openai") -> None:
    async def play() -> None:
        for _ in range(5):
            await _call(provider, model, error=_failure())

    _run(play())


@pytest.mark.django_db
@pytest.mark.usefixtures("catalog", "_memory_counters")
def test_health_api_lists_state_error_rate_latency_and_last_failure(personas: Personas) -> None:
    _run(_call("anthropic", FALLBACK, latency=300))
    _trip()
    secret = account_services.api_key_create(
        org=personas.org, name="k", created_by=personas.owner
    ).secret
    response = Client().get("/api/v1/health/providers", HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert response.status_code == 200
    body = response.json()
    assert body["object"] == "list"
    assert body["window_seconds"] == 30.0
    rows = {row["model"]: row for row in body["data"]}
    assert len(rows) >= 20
    openai = rows[MODEL]
    assert (openai["provider"], openai["state"], openai["calls"], openai["failures"]) == (
        "openai",
        "open",
        5,
        5,
    )
    assert openai["error_rate"] == 1.0
    assert openai["open_until"] is not None
    assert openai["last_failure"]["code"] == "upstream_server_error"
    assert openai["latency_ms"] == {"p50": None, "p95": None}
    anthropic = rows[FALLBACK]
    assert anthropic["state"] == "closed"
    assert anthropic["error_rate"] == 0.0
    assert 200 <= anthropic["latency_ms"]["p50"] <= 300
    assert anthropic["last_failure"] is None
    assert rows["gpt-4o"]["error_rate"] is None  # no calls


@pytest.mark.django_db
@pytest.mark.usefixtures("catalog", "_memory_counters")
def test_health_api_shows_only_the_models_the_key_may_use(personas: Personas) -> None:
    secret = account_services.api_key_create(
        org=personas.org, name="k", created_by=personas.owner, allowed_models=[FALLBACK]
    ).secret
    response = Client().get("/api/v1/health/providers", HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert [row["model"] for row in response.json()["data"]] == [FALLBACK]


@pytest.mark.django_db
def test_health_api_needs_a_valid_key() -> None:
    missing = Client().get("/api/v1/health/providers")
    assert missing.status_code == 401
    assert "error" in missing.json()
    wrong = Client().get("/api/v1/health/providers", HTTP_AUTHORIZATION="Bearer lw-nope")
    assert wrong.status_code == 401


@pytest.mark.django_db
def test_health_api_says_when_health_is_unavailable(personas: Personas, settings: Any) -> None:
    secret = account_services.api_key_create(
        org=personas.org, name="k", created_by=personas.owner
    ).secret
    settings.GATEWAY_COUNTERS_BACKEND = "redis"
    settings.GATEWAY_COUNTERS_REDIS_URL = "redis://127.0.0.1:1/0"
    response = Client().get("/api/v1/health/providers", HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert response.status_code == 503
    assert response.json()["error"]["code"] == "health_unavailable"


@pytest.mark.django_db
@pytest.mark.usefixtures("catalog", "_memory_counters")
def test_dashboard_status_page_shows_the_table(personas: Personas) -> None:
    _trip()
    for user in (personas.owner, personas.member, personas.outsider):
        page = personas.client(user).get("/dashboard/routing/")
        assert page.status_code == 200
        html = page.content.decode()
        assert "Provider health" in html
        assert f'data-model="{MODEL}" data-state="open"' in html
        assert f'data-model="{FALLBACK}" data-state="closed"' in html
        assert "upstream_server_error" in html
    partial = personas.client(personas.member).get(
        "/dashboard/routing/?part=health", HTTP_HX_REQUEST="true"
    )
    assert partial.status_code == 200
    assert b"<h1>" not in partial.content
    assert b'id="provider-health-table"' in partial.content


@pytest.mark.django_db
def test_dashboard_status_page_needs_a_login() -> None:
    response = Client().get("/dashboard/routing/")
    assert response.status_code == 302
    assert "/accounts/login/" in response["Location"]


# --- two server processes sharing breakers through Redis ---------------------------------------


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def two_servers(sandbox: SandboxServer) -> Iterator[list[str]]:
    """Two uvicorn processes of our app on this test's database and Redis."""
    if not counters_redis_url() or connection.vendor != "postgresql":
        pytest.skip("two processes share breakers through Redis (and PostgreSQL)")
    db = connection.settings_dict
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "llmwise.settings.test",
        "DATABASE_URL": (
            f"postgres://{db['USER']}@{db['HOST'] or '127.0.0.1'}:{db['PORT'] or 5432}/{db['NAME']}"
        ),
        "GATEWAY_COUNTERS_BACKEND": "redis",
        "GATEWAY_COUNTERS_REDIS_URL": counters_redis_url(),
        "PROVIDER_SANDBOX": "true",
        "PROVIDER_SANDBOX_URL": sandbox.base_url,
        "GATEWAY_MESH_BREAKER_COOLDOWN_SECONDS": "30",
        "GATEWAY_MESH_STATE_CACHE_SECONDS": "0.2",
    }
    if db.get("PASSWORD"):
        env["DATABASE_URL"] = env["DATABASE_URL"].replace(
            f"{db['USER']}@", f"{db['USER']}:{db['PASSWORD']}@"
        )
    ports = [_free_port(), _free_port()]
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "llmwise.asgi:application",
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--log-level",
                "warning",
                "--lifespan",
                "off",
            ],
            cwd=REPO,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for port in ports
    ]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    try:
        deadline = time.monotonic() + 30
        for url, proc in zip(urls, procs, strict=True):
            while True:
                try:
                    if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if proc.poll() is not None or time.monotonic() > deadline:
                    err = proc.stderr.read().decode() if proc.stderr else ""
                    raise AssertionError(f"server at {url} did not start: {err[-2000:]}")
                time.sleep(0.1)
        yield urls
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("catalog")
def test_two_processes_share_breaker_state_through_redis(
    personas: Personas, faults: FaultControl, two_servers: list[str]
) -> None:
    wallet = wallet_services.wallet_for_org(org=personas.org)
    wallet_services.wallet_grant(wallet=wallet, amount_micros=1_000_000, note="two servers")
    secret = account_services.api_key_create(
        org=personas.org, name="k", created_by=personas.owner
    ).secret
    first, second = two_servers
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hello"}],
        "max_tokens": 20,
        "fallbacks": [FALLBACK],
    }
    headers = {"authorization": f"Bearer {secret}"}

    def attempts(url: str) -> list[tuple[str, str]]:
        response = httpx.post(url + "/v1/chat/completions", json=body, headers=headers, timeout=10)
        assert response.status_code == 200, response.text
        return [(a["model"], a["status"]) for a in response.json()["llmwise"]["route"]["attempts"]]

    # Process B has seen the model healthy (and cached that) before A trips the breaker.
    assert attempts(second) == [(MODEL, "ok")]
    faults.set(provider="openai", fault="http_500")
    # A burst of failures through A opens the breaker: after 4 or 5 (B's success counts in the
    # window, fully or weighted down when a window bucket boundary fell in between).
    seen_by_a = [attempts(first) for _ in range(6)]
    failed_over = [(MODEL, "error"), (FALLBACK, "ok")]
    skipped = [(MODEL, "skipped"), (FALLBACK, "ok")]
    assert seen_by_a[:4] == [failed_over] * 4
    assert seen_by_a[5] == skipped
    deadline = time.monotonic() + 5  # "traffic shifts away within 5 s"; the cache is 0.2 s
    seen: list[tuple[str, str]] = []
    while time.monotonic() < deadline:
        seen = attempts(second)
        if seen[0] == (MODEL, "skipped"):
            break
        time.sleep(0.1)
    assert seen == skipped
    # …and this process reads the same state through the same Redis.
    shared = _state("openai", MODEL)
    assert shared.state == health.BreakerState.OPEN
    assert shared.errors >= 4
    assert shared.calls - shared.errors == 1  # B's one success
