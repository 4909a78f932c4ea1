"""Live provider health: rolling error rate and latency per provider+model, circuit breakers and
rate-limit cooldowns, shared by every worker and server process through :mod:`..counters`.

The call service asks :func:`attempt_gate` before each attempt and reports with
:func:`attempt_record` (or :func:`attempt_abandon` when the caller went away) after it. What is
stored, per target (provider + our model id), all under the counters' keys:

- sliding windows over ``GATEWAY_MESH_WINDOW_SECONDS``: calls, provider failures and a latency
  histogram for display (never reset), plus the breaker's own calls/failures (reset when the
  breaker closes, so the failures that opened it cannot trip it again at once);
- ``open_until``: absent = **closed**; a wall-clock deadline in the future = **open** (skipped);
  in the past = **half-open**: exactly one caller at a time wins the ``probe`` slot
  (``value_set(only_if_absent)``, atomic across processes) and tries; success closes the breaker,
  failure re-opens it for another cool-down;
- ``last_failure``: when and with which code the target last failed (display, and to pick the
  least-recently-failed target when every target of a chain is unavailable);
- per provider listed in ``GATEWAY_MESH_RATE_LIMIT_PROVIDERS`` (OpenRouter): a window of 429s and
  a ``cooldown`` deadline (max of the configured cool-down and the Retry-After, capped) during
  which every model of that provider is skipped. The deadline is a TTL'd value, so the cooldown
  lifts by itself: a cooldown that never lifts is a known failure of other gateways.

Only provider trouble counts as a failure (``ProviderError.retryable``: connection errors,
timeouts, 408, 429, 5xx, 529): a 400 or a content-policy refusal is the request's fault and shows
the provider answering. With the customer's own key (BYOK) a 429 is their account's limit, not the
provider's health, so it neither counts nor cools the provider down for everyone.

Writes on the hot path are cheap too: a successful attempt is only added to this process's tally,
which is sent to the store in one operation per target every ``SUCCESS_FLUSH_SECONDS`` (a Redis
round trip per call was a fifth of the gateway's CPU). A failure, a probe or a forced attempt is
written at once, together with the target's tallied successes, so the error rate a breaker
trips on always counts this process's successes; other processes' arrive within that delay.

Reads on the hot path are cheap: each process keeps a copy of each target's breaker and cool-down
state for ``GATEWAY_MESH_STATE_CACHE_SECONDS`` (its own trips and recoveries apply at once; other
processes' within that delay). :func:`healthy` answers from that copy only, without I/O, for the
auto-router. If Redis is unreachable the counters carry on in each process's own memory
(:mod:`..counters`): breakers and cooldowns then work per process until Redis answers again, and
:func:`health_snapshot` refuses (a fleet-wide status must not show one process's counts). Should
the store raise anyway, every target counts as healthy and nothing is recorded: a Redis outage
must not take the gateway down.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
import weakref
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from enum import StrEnum
from typing import Final

from asgiref.sync import async_to_sync
from django.conf import settings
from redis.exceptions import RedisError

from ..counters import Counters, Window, counters
from ..providers import base as provider_base
from ..providers.base import ProviderError
from ..selectors import catalog_list

logger = logging.getLogger(__name__)

COUNTER_ERRORS = (RedisError, OSError)
MS_PER_SECOND: Final = 1000
# Latency histogram bucket upper bounds (ms); the last bucket is everything slower.
LATENCY_BUCKETS_MS: Final = (
    25,
    50,
    100,
    200,
    300,
    500,
    750,
    1000,
    1500,
    2000,
    3000,
    5000,
    8000,
    13000,
    20000,
    30000,
    60000,
)
# An open breaker nobody routes to is forgotten after this long past its cool-down (it closes
# without a probe; real traffic trips it again within a few calls if the target is still down).
BREAKER_MEMORY_SECONDS: Final = 3600.0
LAST_FAILURE_MEMORY_SECONDS: Final = 86400.0
# last_failure packs (time in ms, code index) into one integer, so one write stores both.
CODE_SLOTS: Final = 1000
FAILURE_CODES: Final = (
    "other",
    provider_base.CODE_UNREACHABLE,
    provider_base.CODE_TIMEOUT,
    provider_base.CODE_INVALID_RESPONSE,
    provider_base.CODE_STREAM_INTERRUPTED,
    provider_base.CODE_SERVER_ERROR,
    provider_base.CODE_OVERLOADED,
    provider_base.CODE_RATE_LIMITED,
)
# healthy() trusts a process's copy of a state at most this long; older copies count as healthy
# (the call service re-reads the shared state before it actually calls, and skips if need be).
HEALTHY_VIEW_MAX_AGE_SECONDS: Final = 5.0
RESET: Final = -(10**12)  # an amount that empties a window bucket (floored at zero)


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class SkipReason(StrEnum):
    CIRCUIT_OPEN = "circuit_open"
    PROBE_IN_FLIGHT = "circuit_half_open"  # another caller is probing it
    PROVIDER_COOLDOWN = "provider_cooldown"


@dataclass(frozen=True, slots=True)
class Target:
    provider: str
    model: str  # our catalog id

    @property
    def key(self) -> str:
        return f"health:{self.provider}|{self.model}"


@dataclass(frozen=True, slots=True)
class Gate:
    """The answer of :func:`attempt_gate`: call the target (perhaps as its probe) or skip it."""

    target: Target
    go: bool
    probe: bool = False  # this call decides a half-open breaker
    forced: bool = False  # tried although unavailable (every target of the chain was)
    skip: SkipReason | None = None
    last_failure_at: float = 0.0  # wall-clock seconds; 0 when unknown


@dataclass(frozen=True, slots=True)
class TargetHealth:
    """What :func:`health_snapshot` reports for one target."""

    provider: str
    model: str
    state: BreakerState
    calls: int  # in the rolling window
    errors: int
    error_rate: float | None  # None without calls
    p50_ms: int | None  # successful calls only
    p95_ms: int | None
    open_until: datetime | None
    cooldown_until: datetime | None  # the provider's rate-limit cooldown
    last_failure_at: datetime | None
    last_failure_code: str


@dataclass(slots=True)
class _View:
    """A process's copy of shared state: a deadline in wall-clock seconds (None: none)."""

    until: float | None
    fetched: float  # time.monotonic()


_breakers: dict[str, _View] = {}
_cooldowns: dict[str, _View] = {}
# Background recordings (streams record without delaying their first byte): strong references,
# or the event loop may collect a task before it ran.
_pending: set[asyncio.Task[None]] = set()
SUCCESS_FLUSH_SECONDS: Final = 0.25


class _Tally:
    """Successful attempts not yet in the store: per target, the amount per window.

    Shared by every event loop of the process (the server's, and those of sync code and tests),
    hence the lock; whichever loop flushes takes everything."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._counts: dict[Target, dict[tuple[str, float], int]] = {}
        self._flushing: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()

    def add(self, target: Target, windows: Iterable[Window]) -> None:
        with self._lock:
            counts = self._counts.setdefault(target, {})
            for window in windows:
                slot = (window.key, window.window_seconds)
                counts[slot] = counts.get(slot, 0) + window.amount
        loop = asyncio.get_running_loop()
        if loop not in self._flushing:
            self._flushing.add(loop)
            loop.call_later(SUCCESS_FLUSH_SECONDS, self._flush_later, loop)

    def _flush_later(self, loop: asyncio.AbstractEventLoop) -> None:
        self._flushing.discard(loop)
        task = loop.create_task(self.flush())
        _pending.add(task)
        task.add_done_callback(_pending.discard)

    def clear(self) -> None:
        with self._lock:
            self._counts.clear()

    def pop(self, target: Target) -> list[Window]:
        with self._lock:
            counts = self._counts.pop(target, {})
        return [Window(key, size, amount) for (key, size), amount in counts.items()]

    async def flush(self) -> None:
        """Send every target's tally to the store (one operation per target)."""
        with self._lock:
            targets = list(self._counts)
        for target in targets:
            windows = self.pop(target)
            if not windows:
                continue
            try:
                await counters().take(windows)
            except COUNTER_ERRORS:
                logger.exception("health: counters unavailable, successes on %s lost", target.key)


_tally = _Tally()


async def successes_flush() -> None:
    """Send this process's tallied successes to the store now (reads call it first, tests may)."""
    await _tally.flush()


def _merged(windows: Sequence[Window], extra: Sequence[Window]) -> list[Window]:
    """``windows`` with the amounts of ``extra`` added (same key and size), the rest appended."""
    index = {(w.key, w.window_seconds): i for i, w in enumerate(windows)}
    merged = list(windows)
    for window in extra:
        at = index.get((window.key, window.window_seconds))
        if at is None:
            merged.append(window)
        else:
            merged[at] = replace(merged[at], amount=merged[at].amount + window.amount)
    return merged


def health_local_clear() -> None:
    """Forget this process's copies of shared state and its unsent tally (tests; the shared
    state is untouched)."""
    _breakers.clear()
    _cooldowns.clear()
    _tally.clear()


def _window() -> float:
    return float(settings.GATEWAY_MESH_WINDOW_SECONDS)


def _stat_windows(target: Target, window: float) -> list[Window]:
    """calls, errors, latency sum, then one window per latency bucket (amounts 0: a read)."""
    base = target.key
    windows = [
        Window(f"{base}:calls", window, 0),
        Window(f"{base}:errors", window, 0),
        Window(f"{base}:lat_sum", window, 0),
    ]
    windows.extend(Window(f"{base}:lat{i}", window, 0) for i in range(len(LATENCY_BUCKETS_MS) + 1))
    return windows


def _trip_windows(target: Target) -> list[Window]:
    """The breaker's own calls/failures: over the rolling window, and over a short one so that a
    model that was busy and healthy (many successes in the long window) is still cut off within
    seconds of failing outright."""
    # The counters name each window after its length too: the two sizes never share a key.
    return [
        Window(f"{target.key}:b_{kind}", size, 0)
        for size in _trip_sizes()
        for kind in ("calls", "errors")
    ]


def _trip_sizes() -> tuple[float, float]:
    return _window(), float(settings.GATEWAY_MESH_BREAKER_FAST_WINDOW_SECONDS)


def _count(used: float) -> int:
    """A sliding window's weighted count as whole events: an event of the previous bucket that
    is partly weighted out still counts, so a quick burst across a bucket boundary trips the
    same as one inside a bucket."""
    return math.ceil(used - 1e-9) if used > 0 else 0


def _latency_bucket(latency_ms: int) -> int:
    for index, bound in enumerate(LATENCY_BUCKETS_MS):
        if latency_ms <= bound:
            return index
    return len(LATENCY_BUCKETS_MS)


def _percentile(counts: Sequence[float], fraction: float) -> int | None:
    """The ``fraction`` quantile of a histogram, interpolated linearly inside its bucket."""
    total = sum(counts)
    if total <= 0:
        return None
    rank = fraction * total
    seen = 0.0
    for index, count in enumerate(counts):
        if count <= 0:
            continue
        if seen + count >= rank:
            low = LATENCY_BUCKETS_MS[index - 1] if index > 0 else 0
            if index >= len(LATENCY_BUCKETS_MS):
                return low  # slower than the last bound: report the bound
            high = LATENCY_BUCKETS_MS[index]
            return round(low + (high - low) * (rank - seen) / count)
        seen += count
    return LATENCY_BUCKETS_MS[-1]


def is_health_failure(error: ProviderError, *, byok: bool) -> bool:
    """Whether ``error`` says the provider is in trouble (see the module docstring)."""
    if not error.retryable:
        return False
    return not (byok and error.code == provider_base.CODE_RATE_LIMITED)


def _encode_failure(at: float, code: str) -> int:
    index = FAILURE_CODES.index(code) if code in FAILURE_CODES else 0
    return int(at * MS_PER_SECOND) * CODE_SLOTS + index


def _decode_failure(value: int | None) -> tuple[float, str]:
    if not value:
        return 0.0, ""
    at_ms, index = divmod(value, CODE_SLOTS)
    code = FAILURE_CODES[index] if index < len(FAILURE_CODES) else "other"
    return at_ms / MS_PER_SECOND, code


def _to_datetime(at: float | None) -> datetime | None:
    return datetime.fromtimestamp(at, tz=UTC) if at else None


def _from_ms(value: int | None) -> float | None:
    return value / MS_PER_SECOND if value else None


def _fresh(view: _View | None, max_age: float) -> bool:
    return view is not None and time.monotonic() - view.fetched <= max_age


def _remember(views: dict[str, _View], key: str, until: float | None) -> None:
    views[key] = _View(until=until, fetched=time.monotonic())


async def _breaker_until(store: Counters, target: Target, *, refresh: bool = False) -> float | None:
    view = _breakers.get(target.key)
    if refresh or not _fresh(view, settings.GATEWAY_MESH_STATE_CACHE_SECONDS):
        until = _from_ms(await store.value_get(f"{target.key}:open_until"))
        _remember(_breakers, target.key, until)
        return until
    assert view is not None  # noqa: S101 - _fresh checked it
    return view.until


async def _cooldown_until(store: Counters, provider: str) -> float | None:
    if provider not in settings.GATEWAY_MESH_RATE_LIMIT_PROVIDERS:
        return None
    view = _cooldowns.get(provider)
    if not _fresh(view, settings.GATEWAY_MESH_STATE_CACHE_SECONDS):
        until = _from_ms(await store.value_get(f"health:cooldown:{provider}"))
        _remember(_cooldowns, provider, until)
        return until
    assert view is not None  # noqa: S101 - _fresh checked it
    return view.until


def healthy(provider: str, model: str) -> bool:
    """Whether ``model`` of ``provider`` takes normal traffic, from this process's copy of the
    shared state (no I/O: safe in the auto-router's microsecond budget).

    False while its breaker is open or half-open (only probes go there) or while its provider
    cools down after sustained 429s. A copy older than a few seconds counts as healthy: the call
    service re-reads the shared state before calling and skips the target if need be.
    """
    now = counters().clock()
    cooldown = _cooldowns.get(provider)
    if (
        _fresh(cooldown, HEALTHY_VIEW_MAX_AGE_SECONDS)
        and cooldown is not None
        and cooldown.until is not None
        and cooldown.until > now
    ):
        return False
    breaker = _breakers.get(Target(provider, model).key)
    return not (
        _fresh(breaker, HEALTHY_VIEW_MAX_AGE_SECONDS)
        and breaker is not None
        and breaker.until is not None
    )


async def attempt_gate(provider: str, model: str) -> Gate:
    """Decide whether to call a target now: closed → go; open or cooling down → skip;
    half-open → go as its one probe if no other caller holds the probe slot, else skip."""
    target = Target(provider, model)
    store = counters()
    try:
        cooldown = await _cooldown_until(store, provider)
        now = store.clock()
        if cooldown is not None and cooldown > now:
            return Gate(target, go=False, skip=SkipReason.PROVIDER_COOLDOWN)
        until = await _breaker_until(store, target)
        if until is None:
            return Gate(target, go=True)
        if until > now:
            return await _skipped(store, target, SkipReason.CIRCUIT_OPEN)
        # Half-open by our copy: re-read, another process may have closed or re-opened it.
        until = await _breaker_until(store, target, refresh=True)
        if until is None:
            return Gate(target, go=True)
        if until > now:
            return await _skipped(store, target, SkipReason.CIRCUIT_OPEN)
        won = await store.value_set(
            f"{target.key}:probe",
            1,
            ttl_seconds=settings.GATEWAY_MESH_PROBE_TIMEOUT_SECONDS,
            only_if_absent=True,
        )
        if won:
            return Gate(target, go=True, probe=True)
        return await _skipped(store, target, SkipReason.PROBE_IN_FLIGHT)
    except COUNTER_ERRORS:
        logger.exception("health: counters unavailable, calling %s unchecked", target.key)
        return Gate(target, go=True)


async def _skipped(store: Counters, target: Target, reason: SkipReason) -> Gate:
    failed_at, _ = _decode_failure(await store.value_get(f"{target.key}:last_failure"))
    return Gate(target, go=False, skip=reason, last_failure_at=failed_at)


def gate_forced(gate: Gate) -> Gate:
    """The gate of a skipped target that is tried anyway (every target of its chain was
    unavailable: trying the least-recently-failed one beats failing without trying)."""
    return Gate(gate.target, go=True, forced=True, last_failure_at=gate.last_failure_at)


async def attempt_record(
    gate: Gate, *, error: ProviderError | None, latency_ms: int, byok: bool = False
) -> None:
    """Count one finished attempt and move the breaker (see the module docstring).

    ``error`` None is a success; a non-retryable error counts as a call the provider answered.
    """
    target = gate.target
    store = counters()
    failed = error is not None and is_health_failure(error, byok=byok)
    window = _window()
    stats = _stat_windows(target, window)
    trip = _trip_windows(target)
    counted = [
        Window(stats[0].key, window, 1),
        Window(stats[1].key, window, int(failed)),
        *(replace(w, amount=1 if w.key.endswith(":b_calls") else int(failed)) for w in trip),
    ]
    if not failed:
        bucket = stats[3 + _latency_bucket(latency_ms)]
        counted += [Window(stats[2].key, window, latency_ms), Window(bucket.key, window, 1)]
        if not (gate.probe or gate.forced):
            _tally.add(target, counted)  # sent with the next flush (see the module docstring)
            return
    # This process's successes on the target go in first: the error rate must count them.
    counted = _merged(counted, _tally.pop(target))
    try:
        taken = await store.take(counted)
        now = taken.at
        if failed:
            assert error is not None  # noqa: S101 - failed implies an error
            await store.value_set(
                f"{target.key}:last_failure",
                _encode_failure(now, error.code),
                ttl_seconds=LAST_FAILURE_MEMORY_SECONDS,
            )
            await _rate_limit_cooldown(store, target, error, byok=byok, now=now)
        if gate.probe or gate.forced:
            if failed:
                if gate.probe:
                    await _open(store, target, now=now, only_if_absent=False)
            else:
                await _close(store, target, now=now)
            if gate.probe:
                await store.delete(f"{target.key}:probe")
        elif failed:
            breaker = taken.states[2 : 2 + len(trip)]
            min_calls = settings.GATEWAY_MESH_BREAKER_MIN_CALLS
            rate = settings.GATEWAY_MESH_BREAKER_ERROR_RATE
            if any(
                _count(calls.used) >= min_calls and errors.used >= rate * calls.used
                for calls, errors in zip(breaker[::2], breaker[1::2], strict=True)
            ):
                await _open(store, target, now=now, only_if_absent=True)
    except COUNTER_ERRORS:
        logger.exception("health: counters unavailable, attempt on %s not recorded", target.key)


def attempt_record_later(
    gate: Gate, *, error: ProviderError | None, latency_ms: int, byok: bool = False
) -> None:
    """:func:`attempt_record` in the background (a stream's first byte must not wait for it)."""
    task = asyncio.get_running_loop().create_task(
        attempt_record(gate, error=error, latency_ms=latency_ms, byok=byok)
    )
    _pending.add(task)
    task.add_done_callback(_pending.discard)


async def attempt_abandon(gate: Gate) -> None:
    """The attempt ended without an answer either way (client gone): count nothing, and free
    the probe slot so another caller can probe at once."""
    if not gate.probe:
        return
    try:
        await counters().delete(f"{gate.target.key}:probe")
    except COUNTER_ERRORS:
        logger.exception("health: counters unavailable, probe slot of %s kept", gate.target.key)


async def _open(store: Counters, target: Target, *, now: float, only_if_absent: bool) -> None:
    cooldown = float(settings.GATEWAY_MESH_BREAKER_COOLDOWN_SECONDS)
    until = now + cooldown
    done = await store.value_set(
        f"{target.key}:open_until",
        int(until * MS_PER_SECOND),
        ttl_seconds=cooldown + BREAKER_MEMORY_SECONDS,
        only_if_absent=only_if_absent,
    )
    if done:
        _remember(_breakers, target.key, until)
        logger.warning("health: breaker of %s opened for %.1f s", target.key, cooldown)
    else:
        await _breaker_until(store, target, refresh=True)


async def _close(store: Counters, target: Target, *, now: float) -> None:
    await store.delete(f"{target.key}:open_until")
    _remember(_breakers, target.key, None)
    # Empty the breaker's window (current and previous bucket): the failures that opened it must
    # not trip it again on the first new failure.
    empty = [replace(w, amount=RESET) for w in _trip_windows(target)]
    await store.adjust(empty, at=now)
    for size in set(_trip_sizes()):
        await store.adjust([w for w in empty if w.window_seconds == size], at=now - size)
    logger.warning("health: breaker of %s closed", target.key)


async def _rate_limit_cooldown(
    store: Counters, target: Target, error: ProviderError, *, byok: bool, now: float
) -> None:
    if (
        byok
        or error.code != provider_base.CODE_RATE_LIMITED
        or target.provider not in settings.GATEWAY_MESH_RATE_LIMIT_PROVIDERS
    ):
        return
    state = await store.hit(
        f"health:429:{target.provider}",
        window_seconds=float(settings.GATEWAY_MESH_RATE_LIMIT_WINDOW_SECONDS),
    )
    if _count(state.used) < settings.GATEWAY_MESH_RATE_LIMIT_COUNT:
        return
    seconds = min(
        max(float(settings.GATEWAY_MESH_RATE_LIMIT_COOLDOWN_SECONDS), error.retry_after or 0.0),
        float(settings.GATEWAY_MESH_RATE_LIMIT_COOLDOWN_MAX_SECONDS),
    )
    until = now + seconds
    await store.value_set(
        f"health:cooldown:{target.provider}", int(until * MS_PER_SECOND), ttl_seconds=seconds
    )
    _remember(_cooldowns, target.provider, until)
    logger.warning(
        "health: %s cools down for %.1f s after sustained 429s", target.provider, seconds
    )


def catalog_health(*, allowed_models: Sequence[str] = ()) -> list[TargetHealth]:
    """:func:`health_snapshot` of every enabled catalog model (those in ``allowed_models`` only,
    when given), for the synchronous status views."""
    models = catalog_list()
    if allowed_models:
        models = models.filter(pk__in=list(allowed_models))
    targets = [(m.provider, m.id) for m in models]
    return async_to_sync(health_snapshot)(targets)


async def _target_health(store: Counters, target: Target, window: float) -> TargetHealth:
    taken = await store.take(_stat_windows(target, window))
    used = [state.used for state in taken.states]
    calls, errors = used[0], used[1]
    now = taken.at
    until = _from_ms(await store.value_get(f"{target.key}:open_until"))
    cooldown = _from_ms(await store.value_get(f"health:cooldown:{target.provider}"))
    failed_at, code = _decode_failure(await store.value_get(f"{target.key}:last_failure"))
    _remember(_breakers, target.key, until)
    if until is None:
        state = BreakerState.CLOSED
    elif until > now:
        state = BreakerState.OPEN
    else:
        state = BreakerState.HALF_OPEN
    histogram = used[3:]
    return TargetHealth(
        provider=target.provider,
        model=target.model,
        state=state,
        calls=_count(calls),
        errors=_count(errors),
        error_rate=round(min(errors / calls, 1.0), 4) if calls > 0 else None,
        p50_ms=_percentile(histogram, 0.5),
        p95_ms=_percentile(histogram, 0.95),
        open_until=_to_datetime(until),
        cooldown_until=_to_datetime(cooldown) if cooldown and cooldown > now else None,
        last_failure_at=_to_datetime(failed_at),
        last_failure_code=code,
    )


async def health_snapshot(targets: Iterable[tuple[str, str]]) -> list[TargetHealth]:
    """Health of each (provider, model) target, in the given order, for display.

    Counts are the sliding window's (the previous bucket weighted by its overlap), rounded up;
    latency percentiles come from a histogram of successful calls (bucket-interpolated).
    Raises ``ConnectionError`` (one of :data:`COUNTER_ERRORS`) when the shared store is
    unreachable: a status page should say so rather than show one process's own counts.
    """
    await _tally.flush()
    store = counters()
    window = _window()
    if not store.degraded:
        rows = list(
            await asyncio.gather(*(_target_health(store, Target(p, m), window) for p, m in targets))
        )
        if not store.degraded:
            return rows
    raise ConnectionError("the shared health store (Redis) is unreachable")


async def breaker_states(targets: Iterable[tuple[str, str]]) -> list[tuple[str, str, BreakerState]]:
    """The breaker state of each (provider, model) target from the shared store, for the metrics
    scrape: one read per target, nothing else. Raises the counter store's error when it is
    unreachable."""
    store = counters()
    now = store.clock()
    states = []
    for provider, model in targets:
        until = _from_ms(await store.value_get(f"{Target(provider, model).key}:open_until"))
        if until is None:
            state = BreakerState.CLOSED
        elif until > now:
            state = BreakerState.OPEN
        else:
            state = BreakerState.HALF_OPEN
        states.append((provider, model, state))
    return states
