"""Redis going away under the shared counters and the cache, faked at the wire.

A relay on a loopback port stands between us and the real Redis (REDIS_URL): ``up`` forwards
bytes both ways, ``down`` closes everything (connections refused and reset, as when Redis stops)
and ``frozen`` accepts connections but never answers (a Redis that hangs). Nothing of ours is
patched: the counters and Django's cache talk to the relay as they would to Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import pytest
import redis
from django.core.cache import cache
from django.test import Client

from apps.accounts import services as account_services
from apps.gateway.counters import RedisCounters, Window, counters, counters_redis_url
from apps.gateway.providers.base import error_for_status
from apps.gateway.routing import health
from llmwise.settings.base import redis_cache_options
from tests.conftest import Personas

TIMEOUT = 0.3  # seconds the counters wait for the relay before counting on their own
RETRY = 0.3  # seconds before they try Redis again
MODEL = "gpt-4o-mini"


class Relay:
    """A TCP relay to ``target`` that can be switched up, down or frozen at run time."""

    def __init__(self, target: tuple[str, int] | None) -> None:
        self.target = target
        self.mode = "up"
        self.port = 0
        self._listener: socket.socket | None = None
        self._sockets: set[socket.socket] = set()
        self._lock = threading.Lock()

    def start(self) -> Relay:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self.port))
        listener.listen(64)
        self.port = listener.getsockname()[1]
        self._listener = listener
        threading.Thread(target=self._accept, args=(listener,), daemon=True).start()
        return self

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.add(sock)

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return  # closed: down
            self._track(client)
            if self.mode == "frozen" or self.target is None:
                continue  # held open, never answered
            upstream = socket.create_connection(self.target)
            self._track(upstream)
            for source, sink in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pump, args=(source, sink), daemon=True).start()

    def _pump(self, source: socket.socket, sink: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := source.recv(65536):
                if self.mode == "frozen":
                    return
                sink.sendall(data)
        for sock in (source, sink):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def down(self) -> None:
        """Refuse new connections and cut the live ones, as a stopped Redis does."""
        self.mode = "down"
        if self._listener is not None:
            # shutdown() wakes the accept() blocked in the relay's thread; close() alone won't.
            with contextlib.suppress(OSError):
                self._listener.shutdown(socket.SHUT_RDWR)
            self._listener.close()
            self._listener = None
        with self._lock:
            doomed, self._sockets = self._sockets, set()
        for sock in doomed:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()

    def up(self) -> None:
        self.mode = "up"
        if self._listener is None:
            self.start()

    def freeze(self) -> None:
        self.mode = "frozen"

    def stop(self) -> None:
        self.down()


def _redis_target() -> tuple[str, int]:
    parts = urlsplit(counters_redis_url())
    return parts.hostname or "127.0.0.1", parts.port or 6379


@pytest.fixture
def relay() -> Iterator[Relay]:
    if not counters_redis_url():
        pytest.skip("needs a Redis (REDIS_URL)")
    relay = Relay(_redis_target()).start()
    yield relay
    relay.stop()


@pytest.fixture
def relayed(relay: Relay, settings: Any) -> RedisCounters:
    """The counters, through the relay, with short timeouts."""
    settings.GATEWAY_COUNTERS_BACKEND = "redis"
    settings.GATEWAY_COUNTERS_REDIS_URL = f"redis://127.0.0.1:{relay.port}/{_db()}"
    settings.GATEWAY_COUNTERS_TIMEOUT_SECONDS = TIMEOUT
    settings.GATEWAY_COUNTERS_RETRY_SECONDS = RETRY
    store = counters()
    assert isinstance(store, RedisCounters)
    health.health_local_clear()
    return store


def _db() -> str:
    """The test worker's own Redis database (the cache's), so flushing it is ours to do."""
    return counters_redis_url().rstrip("/").rpartition("/")[2]


def _direct() -> redis.Redis:
    return redis.Redis.from_url(counters_redis_url())


async def _timed(coro: Any) -> tuple[Any, float]:
    started = time.perf_counter()
    result = await coro
    return result, time.perf_counter() - started


def test_counters_carry_on_in_the_process_and_return_to_redis(
    relay: Relay, relayed: RedisCounters
) -> None:
    window = [Window("outage", 60, 1, limit=2)]

    async def scenario() -> list[Any]:
        seen: list[Any] = []
        taken = await relayed.take(window)
        seen.append((taken.admitted, relayed.degraded))
        relay.down()  # Redis stops: the pooled connection is cut, new ones are refused
        taken, seconds = await _timed(relayed.take(window))
        seen.append((taken.admitted, relayed.degraded, seconds < TIMEOUT * 3))
        # Counted by this process alone from here: a fresh window, so the limit of 2 allows
        # one more and then refuses.
        seen.append((await relayed.take(window)).admitted)
        seen.append((await relayed.take(window)).admitted)
        relay.up()
        await asyncio.sleep(RETRY + 0.05)
        taken = await relayed.take(window)
        # Back on Redis: its window still has the first hit, so this second one is admitted.
        seen.append((taken.admitted, relayed.degraded, len(relayed.local)))
        await relayed.aclose()
        return seen

    assert asyncio.run(scenario()) == [
        (True, False),
        (True, True, True),
        True,
        False,
        (True, False, 0),
    ]
    keys = [k.decode() for k in _direct().keys("llmwise:ctr:w:outage:*")]
    assert len(keys) == 1
    assert int(_direct().get(keys[0]) or 0) == 2


def test_a_frozen_redis_costs_one_timeout_then_nothing(
    relay: Relay, relayed: RedisCounters
) -> None:
    async def scenario() -> list[float]:
        await relayed.value_set("v", 1, ttl_seconds=60)
        relay.freeze()
        durations = []
        for _ in range(3):
            _, seconds = await _timed(relayed.value_get("v"))
            durations.append(seconds)
        await relayed.aclose()
        return durations

    first, *rest = asyncio.run(scenario())
    # One call waits for the timeout (plus the one immediate retry), the next ones do not even
    # try Redis until the retry interval has passed.
    assert TIMEOUT <= first < 3 * TIMEOUT + 0.5
    assert all(seconds < 0.05 for seconds in rest)
    assert relayed.degraded


def test_breakers_work_per_process_while_redis_is_down(
    relay: Relay, relayed: RedisCounters
) -> None:
    failure = error_for_status(provider="openai", upstream_status=500, message="boom")

    async def scenario() -> tuple[bool, bool]:
        relay.down()
        for _ in range(5):
            gate = await health.attempt_gate("openai", MODEL)
            await health.attempt_record(gate, error=failure, latency_ms=5)
        gate = await health.attempt_gate("openai", MODEL)
        await relayed.aclose()
        return gate.go, relayed.degraded

    go, degraded = asyncio.run(scenario())
    assert (go, degraded) == (False, True)  # the breaker opened on this process's own counts
    with pytest.raises(health.COUNTER_ERRORS):
        asyncio.run(health.health_snapshot([("openai", MODEL)]))


@pytest.fixture
def frozen_cache(settings: Any) -> Iterator[Relay]:
    """Django's cache pointed at a Redis that accepts connections and never answers."""
    relay = Relay(None).start()
    relay.freeze()
    settings.CACHES = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": relay.url,
            "OPTIONS": redis_cache_options(TIMEOUT),
        }
    }
    settings.GATEWAY_COUNTERS_BACKEND = "memory"  # this test is about the cache only
    yield relay
    relay.stop()


@pytest.mark.usefixtures("frozen_cache")
def test_the_cache_gives_up_on_a_hung_redis_within_its_timeout() -> None:
    started = time.perf_counter()
    with pytest.raises(redis.exceptions.TimeoutError):
        cache.get("anything")
    # One attempt and one immediate retry, each bounded by the timeout: not redis-py's default
    # of 5 s and ten retries with back-off.
    assert time.perf_counter() - started < 2 * TIMEOUT + 0.5


@pytest.mark.django_db
@pytest.mark.usefixtures("frozen_cache")
def test_api_keys_work_while_the_cache_is_down(personas: Personas) -> None:
    secret = account_services.api_key_create(
        org=personas.org, name="k", created_by=personas.owner
    ).secret
    account_services.api_key_caches_clear()
    known = Client().get("/api/v1/key", HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert known.status_code == 200, known.content  # "last used" is still written
    wrong = Client().get("/api/v1/key", HTTP_AUTHORIZATION="Bearer lw-" + "x" * 40)
    assert wrong.status_code == 401
    assert wrong.json()["error"]["code"] == "invalid_api_key"
