"""Which provider key a call uses: the platform's, or the organization's own (BYOK).

A BYOK call reserves and charges no credit; it is logged with its would-be cost.

This runs on every call, so the answer is cached in-process for
``BYOK_CREDENTIAL_CACHE_SECONDS``: a busy organization costs one query (and one decryption) per
provider per process per interval, and most organizations, which store no key, cost no more than
that either (the "no key" answer is cached too). Setting or removing a key clears the entry in the
process that did it (:func:`credential_cache_clear`); other processes follow within the interval.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from django.conf import settings
from django.utils import timezone

from apps.accounts.models import Organization
from llmwise.errors import ApplicationError

from .encryption import DecryptionFailed, decrypt
from .models import ProviderKey
from .providers.registry import platform_key

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Credential:
    secret: str = field(repr=False)  # never in a log line or a traceback's repr
    byok: bool = False


class ByokKeyUnreadable(ApplicationError):
    """The organization stored a key we can no longer decrypt (the encryption key is gone).

    Falling back to the platform key would silently bill a customer who expects not to be billed,
    so the call fails instead, telling them to enter the key again.
    """

    status_code = 500
    error_type = "api_error"
    code = "byok_key_unreadable"


@dataclass(frozen=True)
class _Entry:
    expires: float  # time.monotonic()
    key_id: int | None = None  # None: the organization stores no key for this provider
    secret: str = field(default="", repr=False)
    last_used_at: datetime | None = None


# (organization id, organization creation time, provider) → entry. The creation time is there
# because an id alone can name a different organization after a rolled-back insert (SQLite reuses
# ids then), and a cache must never hand one tenant another's key.
_CacheKey = tuple[int, datetime, str]
_cache: dict[_CacheKey, _Entry] = {}
CACHE_MAX_ENTRIES = 10_000  # beyond this, expired entries are swept before adding one


def _cache_key(org: Organization, provider: str) -> _CacheKey:
    return (org.pk, org.created_at, provider)


def credential_cache_clear(*, org: Organization, provider: str) -> None:
    """Forget ``org``'s cached credential for ``provider`` (after its key was set or removed)."""
    _cache.pop(_cache_key(org, provider), None)
    _providers_cache.pop((org.pk, org.created_at), None)


# (organization id, creation time) → (expires, providers with a stored key): what the auto-router
# and policies need to prefer BYOK models, without decrypting anything.
_providers_cache: dict[tuple[int, datetime], tuple[float, frozenset[str]]] = {}


async def byok_providers_of(*, org: Organization) -> frozenset[str]:
    """The providers ``org`` stored its own key for (cached like the credentials: at most one
    query per organization per ``BYOK_CREDENTIAL_CACHE_SECONDS`` per process)."""
    cache_key = (org.pk, org.created_at)
    cached = _providers_cache.get(cache_key)
    now = time.monotonic()
    if cached is not None and cached[0] > now:
        return cached[1]
    providers = frozenset(
        [
            provider
            async for provider in ProviderKey.objects.filter(organization_id=org.pk).values_list(
                "provider", flat=True
            )
        ]
    )
    if len(_providers_cache) >= CACHE_MAX_ENTRIES:
        _providers_cache.clear()
    _providers_cache[cache_key] = (now + settings.BYOK_CREDENTIAL_CACHE_SECONDS, providers)
    return providers


def _cache_put(cache_key: _CacheKey, entry: _Entry) -> None:
    if len(_cache) >= CACHE_MAX_ENTRIES:
        now = time.monotonic()
        for stale in [k for k, v in _cache.items() if v.expires <= now]:
            _cache.pop(stale, None)
        if len(_cache) >= CACHE_MAX_ENTRIES:
            _cache.clear()
    _cache[cache_key] = entry


async def _load(org: Organization, provider: str) -> _Entry:
    expires = time.monotonic() + settings.BYOK_CREDENTIAL_CACHE_SECONDS
    row = await (
        ProviderKey.objects.filter(organization_id=org.pk, provider=provider)
        .values_list("pk", "secret_encrypted", "encryption_key_id", "last_used_at")
        .afirst()
    )
    if row is None:
        return _Entry(expires=expires)
    key_id, token, encryption_key_id, last_used_at = row
    try:
        secret = decrypt(token=token, key_id=encryption_key_id)
    except DecryptionFailed as exc:
        logger.error("BYOK key %s of organization %s cannot be decrypted: %s", key_id, org.pk, exc)
        raise ByokKeyUnreadable(
            f"Your stored {provider} key can no longer be read. Enter it again under "
            "Settings → Provider keys, or remove it to use LLMWise credit.",
        ) from None
    return _Entry(expires=expires, key_id=key_id, secret=secret, last_used_at=last_used_at)


async def _mark_used(entry: _Entry, key_id: int) -> _Entry:
    """Write ``last_used_at`` at most once per ``BYOK_LAST_USED_INTERVAL_SECONDS`` per key."""
    now = timezone.now()
    interval = timedelta(seconds=settings.BYOK_LAST_USED_INTERVAL_SECONDS)
    if entry.last_used_at is not None and now - entry.last_used_at < interval:
        return entry
    await ProviderKey.objects.filter(pk=key_id).aupdate(last_used_at=now)
    return _Entry(expires=entry.expires, key_id=key_id, secret=entry.secret, last_used_at=now)


async def credential_for(*, org: Organization, provider: str) -> Credential:
    """The key to call ``provider`` with for ``org``: its own when it stored one, else ours."""
    cache_key = _cache_key(org, provider)
    entry = _cache.get(cache_key)
    if entry is None or entry.expires <= time.monotonic():
        entry = await _load(org, provider)
        if entry.key_id is not None:
            entry = await _mark_used(entry, entry.key_id)
        _cache_put(cache_key, entry)
    if entry.key_id is None:
        return Credential(secret=platform_key(provider))
    return Credential(secret=entry.secret, byok=True)
