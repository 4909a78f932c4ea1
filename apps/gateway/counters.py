"""Shared counters: the one small interface for rate limits, health stats, breakers and cooldowns.

Two things are stored, under string keys:

- **Windows**: how much was counted under a key over the last ``window_seconds``. A sliding-window
  counter (two fixed buckets, the previous one weighted by how much of it still overlaps the
  last ``window_seconds``): bounded memory, no burst of twice the limit at a bucket boundary as
  with fixed windows, and an exact ``retry_after``. :meth:`Counters.take` counts several windows
  *all or nothing*, atomically, and refuses when any would go over its limit.
- **Values**: integers with a TTL (cached sums, in-flight holds, cooldown deadlines).

Backends behave the same and are chosen by settings (:func:`counters`): Redis (one atomic Lua
script per operation, redis-py's asyncio client with one connection pool per event loop) and
in-process memory (the embedded default: a lock, expiring entries, a bound on their number).

**When Redis is unreachable** (refused, reset or silent for ``GATEWAY_COUNTERS_TIMEOUT_SECONDS``),
the Redis backend carries on in the process's own memory: every operation is answered by an
in-process store, Redis is tried again every ``GATEWAY_COUNTERS_RETRY_SECONDS`` (by one caller;
the others keep counting locally meanwhile), and once it answers the process returns to it and
forgets what it counted locally. So rate limits, health and breakers degrade to per-process
state instead of failing open or closed; :attr:`Counters.degraded` says which is in use. One
warning is logged when a process switches either way (not one per call).

Window arithmetic runs on the backend's ``clock`` (wall-clock seconds, injectable for tests), not
on Redis' clock, so both backends compute identical results; app servers sharing one Redis need
clocks in NTP agreement, which only matters at bucket boundaries. Value TTLs run on the store's
own clock (Redis' for Redis).
"""

from __future__ import annotations

import asyncio
import heapq
import logging
import math
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.signals import setting_changed
from django.dispatch import receiver

from .resp import RespClient

Clock = Callable[[], float]
T = TypeVar("T")

logger = logging.getLogger(__name__)

KEY_PREFIX = "llmwise:ctr:"
# A bucket is read while it is current or previous: keep it two windows, plus a margin for
# clocks that disagree a little between app servers.
BUCKET_TTL_WINDOWS = 2
BUCKET_TTL_MARGIN_SECONDS = 5.0
# Floating-point slack added to a computed wait, so waiting exactly that long always admits
# (a few ulps of a wall-clock timestamp; small enough not to round Retry-After up a second).
RETRY_SLACK_SECONDS = 1e-6
# The in-process store drops this share of its entries (soonest to expire first) when full.
EVICT_FRACTION = 0.1
SWEEP_EVERY_WRITES = 10_000


@dataclass(frozen=True, slots=True)
class Window:
    """One window to count in :meth:`Counters.take`. ``limit`` None counts without refusing."""

    key: str
    window_seconds: float
    amount: int = 1
    limit: int | None = None


@dataclass(frozen=True, slots=True)
class WindowState:
    """A window as seen by one operation (after the hit when it was admitted)."""

    key: str
    window_seconds: float
    limit: int | None
    used: float  # weighted count over the last window_seconds
    reset_seconds: float  # until the window holds nothing again
    retry_after: float  # for a refused hit: until its amount would fit; 0 otherwise

    @property
    def remaining(self) -> int | None:
        if self.limit is None:
            return None
        return max(math.floor(self.limit - self.used), 0)


@dataclass(frozen=True, slots=True)
class Take:
    """The answer of :meth:`Counters.take`: admitted or not, and every window's state."""

    admitted: bool
    at: float  # the clock time the hit was counted at (give it to :meth:`Counters.adjust`)
    states: tuple[WindowState, ...]
    refused_index: int | None = None

    @property
    def refused(self) -> WindowState | None:
        return None if self.refused_index is None else self.states[self.refused_index]


def _bucket(now: float, window_seconds: float) -> tuple[int, float, float]:
    """The current bucket's index, the seconds elapsed in it, and the previous bucket's weight."""
    index = math.floor(now / window_seconds)
    elapsed = now - index * window_seconds
    return index, elapsed, 1.0 - elapsed / window_seconds


def bucket_index(now: float, window_seconds: float) -> int:
    """Which bucket of a ``window_seconds`` window the clock time ``now`` counts in."""
    return _bucket(now, window_seconds)[0]


def _over(*, prev: int, curr: int, weight: float, amount: int, limit: int) -> bool:
    # The Redis script evaluates the very same expression, in the same order, on doubles.
    return prev * weight + curr + amount > limit


def _state(window: Window, *, prev: int, curr: int, elapsed: float, refused: bool) -> WindowState:
    size = window.window_seconds
    weight = 1.0 - elapsed / size
    used = prev * weight + curr
    if curr > 0:
        reset = 2 * size - elapsed
    elif prev > 0:
        reset = size - elapsed
    else:
        reset = 0.0
    retry_after = 0.0
    if refused and window.limit is not None:
        room = window.limit - window.amount
        if room < 0:
            retry_after = math.inf  # this amount never fits
        elif curr + window.amount <= window.limit:
            # Wait until the previous bucket's fading weight leaves enough room.
            retry_after = size * (1 - (room - curr) / prev) - elapsed
        else:
            # Wait for the current bucket to become the previous one and fade enough.
            retry_after = (size - elapsed) + size * (1 - room / curr)
        retry_after = max(retry_after, 0.0) + RETRY_SLACK_SECONDS
    return WindowState(
        key=window.key,
        window_seconds=size,
        limit=window.limit,
        used=used,
        reset_seconds=reset,
        retry_after=retry_after,
    )


def _bucket_keys(key: str, window_seconds: float, index: int) -> tuple[str, str]:
    base = f"{KEY_PREFIX}w:{key}:{window_seconds:g}:"
    return f"{base}{index}", f"{base}{index - 1}"


def _bucket_ttl(window_seconds: float) -> float:
    return BUCKET_TTL_WINDOWS * window_seconds + BUCKET_TTL_MARGIN_SECONDS


class Counters(ABC):
    """The interface. All methods are coroutines; none blocks the event loop."""

    def __init__(self, *, clock: Clock = time.time) -> None:
        self.clock = clock

    @property
    def degraded(self) -> bool:
        """True while a shared backend is unreachable and this process counts on its own."""
        return False

    @abstractmethod
    async def take(self, windows: Sequence[Window]) -> Take:
        """Count every window's amount, or none: refused when any window with a limit would go
        over it. Atomic across processes for the Redis backend."""

    @abstractmethod
    async def adjust(self, windows: Sequence[Window], *, at: float) -> None:
        """Add each window's amount (may be negative, floored at zero) to the bucket that was
        current at ``at`` — e.g. to true up a hold counted by :meth:`take` — if it still counts."""

    @abstractmethod
    async def value_get(self, key: str) -> int | None:
        """The value under ``key``, or None when absent or expired."""

    @abstractmethod
    async def value_set(
        self, key: str, value: int, *, ttl_seconds: float, only_if_absent: bool = False
    ) -> bool:
        """Store ``value`` for ``ttl_seconds``; False when ``only_if_absent`` and it existed."""

    @abstractmethod
    async def value_add(
        self,
        key: str,
        amount: int,
        *,
        ttl_seconds: float | None,
        limit: int | None = None,
        floor: int | None = None,
        only_if_present: bool = False,
    ) -> tuple[bool, int | None]:
        """Add ``amount`` atomically; returns (done, value after — or before when refused).

        Refused when the result would exceed ``limit``, or when the key is absent and
        ``only_if_present``. An absent key starts at 0. ``ttl_seconds`` None keeps the current
        TTL (an absent key then needs ``only_if_present``); the result is raised to ``floor``.
        """

    @abstractmethod
    async def delete(self, key: str) -> None:
        """Forget a value."""

    async def hit(
        self, key: str, *, window_seconds: float, amount: int = 1, limit: int | None = None
    ) -> WindowState:
        """Count ``amount`` in one window (refused, nothing counted, when over ``limit``)."""
        taken = await self.take([Window(key, window_seconds, amount, limit)])
        return taken.states[0]

    async def peek(self, key: str, *, window_seconds: float) -> WindowState:
        """The window's state without counting anything."""
        taken = await self.take([Window(key, window_seconds, 0)])
        return taken.states[0]


class MemoryCounters(Counters):
    """In-process counters for the embedded default (one process, every thread shares them).

    Memory is bounded: expired entries are swept, and past ``max_entries`` the soonest-expiring
    ones are dropped (a dropped window forgets its counts: limits err on the generous side).
    """

    def __init__(self, *, clock: Clock = time.time, max_entries: int = 100_000) -> None:
        super().__init__(clock=clock)
        self.max_entries = max_entries
        self._lock = threading.Lock()
        self._entries: dict[str, tuple[int, float]] = {}  # key → (value, expires at)
        self._writes = 0

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)

    def _get(self, key: str, now: float) -> int | None:
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry[1] <= now:
            del self._entries[key]
            return None
        return entry[0]

    def _put(self, key: str, value: int, expires_at: float, now: float) -> None:
        self._entries[key] = (value, expires_at)
        self._writes += 1
        if len(self._entries) > self.max_entries or self._writes >= SWEEP_EVERY_WRITES:
            self._sweep(now)

    def _sweep(self, now: float) -> None:
        self._writes = 0
        for key in [k for k, (_, expires) in self._entries.items() if expires <= now]:
            del self._entries[key]
        excess = len(self._entries) - self.max_entries
        if excess > 0:
            drop = excess + int(self.max_entries * EVICT_FRACTION)
            soonest = heapq.nsmallest(drop, self._entries.items(), key=lambda item: item[1][1])
            for key, _ in soonest:
                del self._entries[key]

    async def take(self, windows: Sequence[Window]) -> Take:
        now = self.clock()
        with self._lock:
            seen = []
            refused_index = None
            for i, window in enumerate(windows):
                index, elapsed, weight = _bucket(now, window.window_seconds)
                curr_key, prev_key = _bucket_keys(window.key, window.window_seconds, index)
                curr = self._get(curr_key, now) or 0
                prev = self._get(prev_key, now) or 0
                seen.append((curr_key, curr, prev, elapsed))
                if (
                    refused_index is None
                    and window.limit is not None
                    and _over(
                        prev=prev,
                        curr=curr,
                        weight=weight,
                        amount=window.amount,
                        limit=window.limit,
                    )
                ):
                    refused_index = i
            if refused_index is None:
                for i, (window, (curr_key, curr, prev, elapsed)) in enumerate(
                    zip(windows, seen, strict=True)
                ):
                    if window.amount:
                        curr += window.amount
                        expires = now + _bucket_ttl(window.window_seconds)
                        self._put(curr_key, curr, expires, now)
                        seen[i] = (curr_key, curr, prev, elapsed)
        states = tuple(
            _state(w, prev=prev, curr=curr, elapsed=elapsed, refused=i == refused_index)
            for i, (w, (_, curr, prev, elapsed)) in enumerate(zip(windows, seen, strict=True))
        )
        return Take(
            admitted=refused_index is None, at=now, states=states, refused_index=refused_index
        )

    async def adjust(self, windows: Sequence[Window], *, at: float) -> None:
        now = self.clock()
        with self._lock:
            for window in windows:
                index, _, _ = _bucket(at, window.window_seconds)
                key, _ = _bucket_keys(window.key, window.window_seconds, index)
                entry = self._entries.get(key)
                if entry is None or entry[1] <= now:
                    continue
                self._entries[key] = (max(entry[0] + window.amount, 0), entry[1])

    async def value_get(self, key: str) -> int | None:
        with self._lock:
            return self._get(KEY_PREFIX + "v:" + key, self.clock())

    async def value_set(
        self, key: str, value: int, *, ttl_seconds: float, only_if_absent: bool = False
    ) -> bool:
        now = self.clock()
        full = KEY_PREFIX + "v:" + key
        with self._lock:
            if only_if_absent and self._get(full, now) is not None:
                return False
            self._put(full, value, now + ttl_seconds, now)
            return True

    async def value_add(
        self,
        key: str,
        amount: int,
        *,
        ttl_seconds: float | None,
        limit: int | None = None,
        floor: int | None = None,
        only_if_present: bool = False,
    ) -> tuple[bool, int | None]:
        now = self.clock()
        full = KEY_PREFIX + "v:" + key
        with self._lock:
            entry = self._entries.get(full)
            if entry is not None and entry[1] <= now:
                entry = None
            if entry is None and (only_if_present or ttl_seconds is None):
                return False, None
            current = entry[0] if entry is not None else 0
            result = current + amount
            if limit is not None and result > limit:
                return False, current
            if floor is not None:
                result = max(result, floor)
            if ttl_seconds is not None:
                expires = now + ttl_seconds
            else:
                assert entry is not None  # noqa: S101 - guarded above
                expires = entry[1]
            self._put(full, result, expires, now)
            return True, result

    async def delete(self, key: str) -> None:
        with self._lock:
            self._entries.pop(KEY_PREFIX + "v:" + key, None)


# KEYS: (current bucket, previous bucket) per window.
# ARGV: n, then per window: amount, limit (-1: none), previous bucket's weight, bucket TTL (ms).
_TAKE = """
local n = tonumber(ARGV[1])
local out = {0}
local refused = 0
for i = 1, n do
  local a = 1 + (i - 1) * 4
  local amount = tonumber(ARGV[a + 1])
  local limit = tonumber(ARGV[a + 2])
  local weight = tonumber(ARGV[a + 3])
  local curr = tonumber(redis.call('GET', KEYS[2 * i - 1]) or '0')
  local prev = tonumber(redis.call('GET', KEYS[2 * i]) or '0')
  out[2 * i] = curr
  out[2 * i + 1] = prev
  if refused == 0 and limit >= 0 and prev * weight + curr + amount > limit then
    refused = i
  end
end
if refused == 0 then
  for i = 1, n do
    local a = 1 + (i - 1) * 4
    local amount = tonumber(ARGV[a + 1])
    if amount ~= 0 then
      out[2 * i] = redis.call('INCRBY', KEYS[2 * i - 1], amount)
      redis.call('PEXPIRE', KEYS[2 * i - 1], ARGV[a + 4])
    end
  end
end
out[1] = refused
return out
"""

# KEYS: one bucket per window. ARGV: the amounts.
_ADJUST = """
for i = 1, #KEYS do
  if redis.call('EXISTS', KEYS[i]) == 1 then
    if redis.call('INCRBY', KEYS[i], ARGV[i]) < 0 then
      redis.call('SET', KEYS[i], 0, 'KEEPTTL')
    end
  end
end
return 0
"""

# KEYS: the value. ARGV: amount, limit ('' none), ttl ms ('' keep), only_if_present, floor.
# Returns {done, present, value}.
_VALUE_ADD = """
local current = redis.call('GET', KEYS[1])
if not current then
  if ARGV[4] == '1' or ARGV[3] == '' then return {0, 0, 0} end
  current = 0
else
  current = tonumber(current)
end
if ARGV[2] ~= '' and current + tonumber(ARGV[1]) > tonumber(ARGV[2]) then
  return {0, 1, current}
end
local result = redis.call('INCRBY', KEYS[1], ARGV[1])
if ARGV[5] ~= '' and result < tonumber(ARGV[5]) then
  redis.call('SET', KEYS[1], ARGV[5], 'KEEPTTL')
  result = tonumber(ARGV[5])
end
if ARGV[3] ~= '' then redis.call('PEXPIRE', KEYS[1], ARGV[3]) end
return {1, 1, result}
"""


# Redis on the hot path answers in well under a millisecond; a reply this late means trouble.
DEFAULT_TIMEOUT_SECONDS = 0.5
DEFAULT_RETRY_SECONDS = 5.0


def _ms(seconds: float) -> int:
    return max(math.ceil(seconds * 1000), 1)


def _unreachable_errors() -> tuple[type[BaseException], ...]:
    from redis import exceptions

    # Connection refused/reset/timed out, a server still loading its data, or one that cannot
    # take writes (a replica after failover, out of memory): all mean "count elsewhere for now".
    # Other errors (a bad script, a wrong type) are bugs and are raised as they are.
    return (
        exceptions.ConnectionError,
        exceptions.TimeoutError,
        exceptions.ReadOnlyError,
        exceptions.OutOfMemoryError,
        OSError,
    )


class RedisCounters(Counters):
    """Counters in Redis, shared by every process. One atomic Lua script per operation.

    Commands go through :class:`~apps.gateway.resp.RespClient` (one pipelined connection, a
    fraction of redis-py's cost per command). A connection belongs to the loop that opened it:
    the server has one loop, but tests and ``async_to_sync`` callers make many, so there is one
    client per loop (dropped once its loop is closed).

    While Redis is unreachable the operations run on :attr:`local`, an in-process store on the
    same clock (see the module docstring). Each operation is bounded by ``timeout_seconds`` as
    a whole (connect, reply, and one immediate retry at most, for a pooled connection that a
    Redis restart closed): a frozen or dead Redis costs a caller that long, not redis-py's
    default of ten retries with back-off.
    """

    def __init__(
        self,
        *,
        url: str,
        clock: Clock = time.time,
        timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS,
        retry_seconds: float = DEFAULT_RETRY_SECONDS,
        max_entries: int = 100_000,
    ) -> None:
        super().__init__(clock=clock)
        self.url = url
        self.timeout_seconds = timeout_seconds
        self.retry_seconds = retry_seconds
        # Reads self.clock at each call, so a clock swapped in later (tests) applies to both.
        self.local = MemoryCounters(clock=lambda: self.clock(), max_entries=max_entries)
        self._unreachable = _unreachable_errors()
        self._degraded = False
        self._retry_at = 0.0  # time.monotonic() when Redis may be tried again
        self._clients: dict[asyncio.AbstractEventLoop, RespClient] = {}

    @property
    def degraded(self) -> bool:
        return self._degraded

    def _client(self) -> RespClient:
        loop = asyncio.get_running_loop()
        client = self._clients.get(loop)
        if client is None:
            # A client's socket refers to its loop, so a weak key alone never lets a finished
            # loop go: drop the clients of closed loops (their sockets close when collected).
            for closed in [other for other in self._clients if other.is_closed()]:
                del self._clients[closed]
            client = self._clients[loop] = RespClient(
                self.url, connect_timeout=self.timeout_seconds
            )
        return client

    async def aclose(self) -> None:
        """Close this loop's connection (ASGI lifespan shutdown, test teardown)."""
        client = self._clients.pop(asyncio.get_running_loop(), None)
        if client is not None:
            await client.aclose()

    # --- Redis, or this process's memory while Redis is unreachable ---------------------------
    def _redis_due(self) -> bool:
        if not self._degraded:
            return True
        now = time.monotonic()
        if now < self._retry_at:
            return False
        # This caller tries Redis; the others keep counting locally until it has an answer.
        self._retry_at = now + self.retry_seconds
        return True

    def _went_away(self, exc: BaseException) -> None:
        self._retry_at = time.monotonic() + self.retry_seconds
        if not self._degraded:
            self._degraded = True
            logger.warning(
                "counters: Redis unreachable (%s: %s); this process counts on its own "
                "(limits, health, breakers) and tries Redis again every %.1f s",
                type(exc).__name__,
                exc,
                self.retry_seconds,
            )

    def _came_back(self) -> None:
        if self._degraded:
            self._degraded = False
            self.local.clear()
            logger.warning("counters: Redis answers again; this process counts in Redis again")

    async def _either(
        self, shared: Callable[[], Awaitable[T]], local: Callable[[], Awaitable[T]]
    ) -> T:
        if self._redis_due():
            try:
                # One deadline for the whole operation (its retry included), rather than
                # redis-py's per-socket-call timeouts, which cost a task per send and per read.
                async with asyncio.timeout(self.timeout_seconds):
                    result = await shared()
            except self._unreachable as exc:
                self._went_away(exc)
            else:
                self._came_back()
                return result
        return await local()

    async def _eval(self, script: str, keys: Sequence[str], args: Sequence[Any]) -> Any:
        return await self._client().eval(script, list(keys), list(args))

    # --- the interface ---------------------------------------------------------------------
    async def take(self, windows: Sequence[Window]) -> Take:
        return await self._either(
            lambda: self._take_shared(windows), lambda: self.local.take(windows)
        )

    async def adjust(self, windows: Sequence[Window], *, at: float) -> None:
        await self._either(
            lambda: self._adjust_shared(windows, at=at),
            lambda: self.local.adjust(windows, at=at),
        )

    async def value_get(self, key: str) -> int | None:
        return await self._either(
            lambda: self._value_get_shared(key), lambda: self.local.value_get(key)
        )

    async def value_set(
        self, key: str, value: int, *, ttl_seconds: float, only_if_absent: bool = False
    ) -> bool:
        return await self._either(
            lambda: self._value_set_shared(
                key, value, ttl_seconds=ttl_seconds, only_if_absent=only_if_absent
            ),
            lambda: self.local.value_set(
                key, value, ttl_seconds=ttl_seconds, only_if_absent=only_if_absent
            ),
        )

    async def value_add(
        self,
        key: str,
        amount: int,
        *,
        ttl_seconds: float | None,
        limit: int | None = None,
        floor: int | None = None,
        only_if_present: bool = False,
    ) -> tuple[bool, int | None]:
        options: dict[str, Any] = {
            "ttl_seconds": ttl_seconds,
            "limit": limit,
            "floor": floor,
            "only_if_present": only_if_present,
        }
        return await self._either(
            lambda: self._value_add_shared(key, amount, **options),
            lambda: self.local.value_add(key, amount, **options),
        )

    async def delete(self, key: str) -> None:
        await self._either(lambda: self._delete_shared(key), lambda: self.local.delete(key))

    # --- the Redis side ----------------------------------------------------------------------
    async def _take_shared(self, windows: Sequence[Window]) -> Take:
        now = self.clock()
        keys: list[str] = []
        args: list[Any] = [len(windows)]
        elapsed_of: list[float] = []
        for window in windows:
            index, elapsed, weight = _bucket(now, window.window_seconds)
            keys.extend(_bucket_keys(window.key, window.window_seconds, index))
            limit = -1 if window.limit is None else window.limit
            # repr() round-trips the double exactly, so Lua compares the same number.
            args.extend(
                [window.amount, limit, repr(weight), _ms(_bucket_ttl(window.window_seconds))]
            )
            elapsed_of.append(elapsed)
        reply = await self._eval(_TAKE, keys, args) if windows else [0]
        refused = int(reply[0])
        refused_index = refused - 1 if refused else None
        states = tuple(
            _state(
                window,
                curr=int(reply[1 + 2 * i]),
                prev=int(reply[2 + 2 * i]),
                elapsed=elapsed_of[i],
                refused=i == refused_index,
            )
            for i, window in enumerate(windows)
        )
        return Take(
            admitted=refused_index is None, at=now, states=states, refused_index=refused_index
        )

    async def _adjust_shared(self, windows: Sequence[Window], *, at: float) -> None:
        keys = [
            _bucket_keys(w.key, w.window_seconds, _bucket(at, w.window_seconds)[0])[0]
            for w in windows
        ]
        if keys:
            await self._eval(_ADJUST, keys, [w.amount for w in windows])

    async def _value_get_shared(self, key: str) -> int | None:
        raw = await self._client().execute("GET", KEY_PREFIX + "v:" + key)
        return None if raw is None else int(raw)

    async def _value_set_shared(
        self, key: str, value: int, *, ttl_seconds: float, only_if_absent: bool
    ) -> bool:
        command = ["SET", KEY_PREFIX + "v:" + key, value, "PX", _ms(ttl_seconds)]
        done = await self._client().execute(*command, *(["NX"] if only_if_absent else []))
        return bool(done)

    async def _value_add_shared(
        self,
        key: str,
        amount: int,
        *,
        ttl_seconds: float | None,
        limit: int | None,
        floor: int | None,
        only_if_present: bool,
    ) -> tuple[bool, int | None]:
        done, present, value = await self._eval(
            _VALUE_ADD,
            [KEY_PREFIX + "v:" + key],
            [
                amount,
                "" if limit is None else limit,
                "" if ttl_seconds is None else _ms(ttl_seconds),
                "1" if only_if_present else "0",
                "" if floor is None else floor,
            ],
        )
        return bool(done), int(value) if present else None

    async def _delete_shared(self, key: str) -> None:
        await self._client().execute("DEL", KEY_PREFIX + "v:" + key)


_backends: dict[tuple[Any, ...], Counters] = {}
_backends_lock = threading.Lock()


def counters_redis_url() -> str:
    """The Redis the counters use: their own setting, else the default cache's Redis."""
    if settings.GATEWAY_COUNTERS_REDIS_URL:
        return str(settings.GATEWAY_COUNTERS_REDIS_URL)
    cache = settings.CACHES.get("default", {})
    if str(cache.get("BACKEND", "")).endswith("RedisCache"):
        location = cache.get("LOCATION", "")
        return str(location[0] if isinstance(location, list | tuple) else location)
    return ""


_COUNTER_SETTINGS = frozenset(
    {
        "GATEWAY_COUNTERS_BACKEND",
        "GATEWAY_COUNTERS_REDIS_URL",
        "GATEWAY_COUNTERS_MAX_ENTRIES",
        "GATEWAY_COUNTERS_TIMEOUT_SECONDS",
        "GATEWAY_COUNTERS_RETRY_SECONDS",
        "CACHES",
    }
)
_current: Counters | None = None  # resolved once; the hot path (health checks) calls this a lot


@receiver(setting_changed)
def _forget_resolved_backend(*, setting: str, **kwargs: object) -> None:
    global _current
    if setting in _COUNTER_SETTINGS:
        _current = None


def counters() -> Counters:
    """The configured backend (one instance per configuration, shared by the process)."""
    current = _current
    if current is not None:
        return current
    return _resolve_counters()


def _resolve_counters() -> Counters:
    global _current
    choice = settings.GATEWAY_COUNTERS_BACKEND or ""
    url = counters_redis_url()
    if not choice:
        choice = "redis" if url else "memory"
    if choice not in ("redis", "memory"):
        raise ImproperlyConfigured("GATEWAY_COUNTERS_BACKEND must be 'redis', 'memory' or empty.")
    if choice == "redis" and not url:
        raise ImproperlyConfigured("Redis counters need REDIS_URL or GATEWAY_COUNTERS_REDIS_URL.")
    max_entries = settings.GATEWAY_COUNTERS_MAX_ENTRIES
    timeout = float(settings.GATEWAY_COUNTERS_TIMEOUT_SECONDS)
    retry = float(settings.GATEWAY_COUNTERS_RETRY_SECONDS)
    config: tuple[Any, ...] = (
        (choice, url, max_entries, timeout, retry)
        if choice == "redis"
        else (choice, "", max_entries)
    )
    backend = _backends.get(config)
    if backend is None:
        with _backends_lock:
            backend = _backends.get(config)
            if backend is None:
                backend = (
                    RedisCounters(
                        url=url,
                        timeout_seconds=timeout,
                        retry_seconds=retry,
                        max_entries=max_entries,
                    )
                    if choice == "redis"
                    else MemoryCounters(max_entries=max_entries)
                )
                _backends[config] = backend
    _current = backend
    return backend
