"""BYOK: an organization's own provider keys — set, remove, verify, list.

The secret is encrypted before it reaches the database (:mod:`apps.gateway.encryption`), shown
back only as its last four characters, and kept out of audit data, logs and error reports
(``sensitive_variables``). Calls pick the key up through :func:`apps.gateway.credentials.
credential_for`, whose in-process cache is cleared here whenever a key changes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from asgiref.sync import async_to_sync
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import QuerySet
from django.utils import timezone
from django.views.decorators.debug import sensitive_variables

from apps.accounts.models import Organization, Role, User
from apps.accounts.services import API_KEY_PREFIX, audit_record, membership_require
from llmwise.errors import ApplicationError, Conflict, NotFound

from .credentials import credential_cache_clear
from .encryption import DecryptionFailed, current_key_id, decrypt, encrypt, reencrypt
from .models import CatalogModel, Provider, ProviderKey, Tier
from .providers.base import (
    CODE_RATE_LIMITED,
    ChatMessage,
    ChatRequest,
    ProviderError,
)
from .providers.registry import adapter_for, provider_base_url
from .providers.transport import Timeouts

SECRET_MIN_CHARS = 16  # shorter than any provider's real key format
SECRET_MAX_CHARS = 512
SUFFIX_CHARS = 4
# Printable ASCII without spaces: every provider's keys look like this, and it keeps a pasted
# sentence, a newline or an invisible character from being stored as a "key".
SECRET_PATTERN = re.compile(r"[\x21-\x7e]+")
VERIFY_PROMPT = "Reply with one word."
VERIFY_MAX_TOKENS = 1
VERIFY_CONNECT_SECONDS = 5.0

TIER_ORDER = {Tier.BUDGET: 0, Tier.STANDARD: 1, Tier.FRONTIER: 2}


# --- reads ------------------------------------------------------------------------------------
def provider_keys_of(*, org: Organization) -> QuerySet[ProviderKey]:
    """``org``'s stored keys, one per provider at most."""
    return ProviderKey.objects.filter(organization=org).select_related("created_by")


def provider_key_of(*, org: Organization, key_id: int) -> ProviderKey:
    """``org``'s key with this id; another organization's key is simply not found."""
    key = ProviderKey.objects.filter(organization=org, pk=key_id).first()
    if key is None:
        raise NotFound("Provider key not found.")
    return key


# --- writes -----------------------------------------------------------------------------------
def _provider(provider: str) -> Provider:
    if provider not in Provider.values:
        raise ApplicationError(f"Unknown provider {provider!r}.", param="provider")
    return Provider(provider)


@sensitive_variables("secret", "cleaned")
def _clean_secret(secret: str, provider: Provider) -> str:
    """A loose sanity check: catches pastes that cannot be a key, not keys that are wrong (the
    "verify" button asks the provider for that)."""
    cleaned = secret.strip()
    if not cleaned:
        raise ApplicationError(f"Paste your {provider.label} API key.", param="secret")
    if cleaned.startswith(API_KEY_PREFIX):
        raise ApplicationError(
            f"That is an LLMWise API key. Paste the key from your {provider.label} account.",
            param="secret",
        )
    if not SECRET_PATTERN.fullmatch(cleaned):
        raise ApplicationError(
            "An API key has no spaces, line breaks or special characters; check the paste.",
            param="secret",
        )
    if len(cleaned) < SECRET_MIN_CHARS:
        raise ApplicationError(
            f"That is too short to be a {provider.label} API key.", param="secret"
        )
    if len(cleaned) > SECRET_MAX_CHARS:
        raise ApplicationError(
            f"That is too long to be a {provider.label} API key.", param="secret"
        )
    return cleaned


def _forget_cached(org: Organization, provider: str) -> None:
    # Now, for this process's next call, and again after commit, in case a call re-read the old
    # row between the two.
    credential_cache_clear(org=org, provider=provider)
    transaction.on_commit(lambda: credential_cache_clear(org=org, provider=provider))


@sensitive_variables("secret", "cleaned", "sealed")
@transaction.atomic
def provider_key_set(
    *, org: Organization, actor: User | None, provider: str, secret: str
) -> ProviderKey:
    """Store ``org``'s key for ``provider`` (admins and owners), replacing any previous one.

    The new key starts unverified; calls use it from now on.
    """
    membership_require(org=org, user=actor, role=Role.ADMIN)
    choice = _provider(provider)
    cleaned = _clean_secret(secret, choice)
    sealed = encrypt(cleaned)
    fields = {
        "secret_encrypted": sealed.token,
        "encryption_key_id": sealed.key_id,
        "suffix": cleaned[-SUFFIX_CHARS:],
        "created_by": actor,
        "created_at": timezone.now(),
        "last_verified_at": None,
        "last_verify_ok": None,
        "last_used_at": None,
    }
    key = ProviderKey.objects.select_for_update().filter(organization=org, provider=choice).first()
    replaced = key is not None
    if key is not None:
        for name, value in fields.items():
            setattr(key, name, value)
        key.save(update_fields=list(fields))
    else:
        try:
            with transaction.atomic():
                key = ProviderKey.objects.create(organization=org, provider=choice, **fields)
        except IntegrityError:
            raise Conflict(
                f"The {choice.label} key was changed at the same moment; try again.",
                param="provider",
            ) from None
    audit_record(
        org=org,
        actor=actor,
        action="provider_key.replace" if replaced else "provider_key.set",
        target=f"provider_key:{key.pk}",
        data={"provider": choice.value, "suffix": key.suffix},
    )
    _forget_cached(org, choice)
    return key


@transaction.atomic
def provider_key_delete(*, org: Organization, actor: User | None, provider: str) -> None:
    """Remove ``org``'s key for ``provider``: its calls are billed to the wallet again."""
    membership_require(org=org, user=actor, role=Role.ADMIN)
    choice = _provider(provider)
    key = ProviderKey.objects.select_for_update().filter(organization=org, provider=choice).first()
    if key is None:
        raise NotFound(f"No {choice.label} key is stored.")
    audit_record(
        org=org,
        actor=actor,
        action="provider_key.delete",
        target=f"provider_key:{key.pk}",
        data={"provider": choice.value, "suffix": key.suffix},
    )
    key.delete()
    _forget_cached(org, choice)


@dataclass(frozen=True)
class VerifyResult:
    """``ok`` is True (the provider accepted the key), False (it refused it, or the key cannot
    be used) or None (inconclusive: the provider could not be asked; nothing was recorded)."""

    ok: bool | None
    message: str
    model: str = ""


def verify_model(*, provider: str) -> CatalogModel | None:
    """The cheapest enabled catalog model of ``provider``: budget tier first, then by price."""
    models = list(CatalogModel.objects.filter(provider=provider, enabled=True))
    if not models:
        return None
    return min(
        models,
        key=lambda m: (
            TIER_ORDER.get(Tier(m.tier), len(TIER_ORDER)),
            m.input_price_micros_per_mtok + m.output_price_micros_per_mtok,
            m.id,
        ),
    )


@sensitive_variables("secret")
async def _verify_call(*, provider: str, upstream_model: str, secret: str) -> None:
    timeouts = Timeouts(
        connect=VERIFY_CONNECT_SECONDS,
        first_byte=settings.BYOK_VERIFY_TIMEOUT_SECONDS,
        total=settings.BYOK_VERIFY_TIMEOUT_SECONDS,
    )
    adapter = adapter_for(
        provider=provider, base_url=provider_base_url(provider), timeouts=timeouts
    )
    request = ChatRequest(
        upstream_model=upstream_model,
        messages=(ChatMessage("user", VERIFY_PROMPT),),
        max_tokens=VERIFY_MAX_TOKENS,
    )
    await adapter.complete(request, api_key=secret)


def _verdict(exc: ProviderError, label: str) -> tuple[bool | None, str]:
    """What a failed verification call says about the key."""
    mine = exc.as_byok()
    status = f" (HTTP {exc.upstream_status})" if exc.upstream_status else ""
    if mine.code in ("byok_key_invalid", "byok_key_forbidden"):
        return False, f"{label} refused this key{status}. Check it, or paste a new one."
    if mine.code == "byok_quota_exhausted":
        return False, f"{label} accepted this key, but the account is out of quota{status}."
    if exc.code == CODE_RATE_LIMITED:
        return True, f"{label} accepted this key (it is rate-limited right now)."
    return None, f"Could not verify the key: {exc.message} Nothing was recorded; try again."


@sensitive_variables("secret")
def provider_key_verify(*, org: Organization, actor: User | None, provider: str) -> VerifyResult:
    """Ask the provider whether ``org``'s key works with one tiny real call (a one-token
    completion on its cheapest model), and record the answer on the key.

    Runs outside any transaction: no database lock is held while the provider answers.
    """
    membership_require(org=org, user=actor, role=Role.ADMIN)
    choice = _provider(provider)
    key = ProviderKey.objects.filter(organization=org, provider=choice).first()
    if key is None:
        raise NotFound(f"No {choice.label} key is stored.")
    model = verify_model(provider=choice)
    if model is None:
        raise ApplicationError(
            f"No enabled {choice.label} model is in the catalog to verify the key with."
        )
    ok: bool | None
    try:
        secret = decrypt(token=key.secret_encrypted, key_id=key.encryption_key_id)
    except DecryptionFailed:
        ok, message = False, "This key can no longer be read. Paste it again."
    else:
        try:
            async_to_sync(_verify_call)(
                provider=choice, upstream_model=model.upstream_name, secret=secret
            )
        except ProviderError as exc:
            ok, message = _verdict(exc, choice.label)
        else:
            ok, message = True, f"{choice.label} accepted this key ({model.id} answered)."
    if ok is not None:
        # Only if the key was not replaced meanwhile: a verdict belongs to the key it tested.
        ProviderKey.objects.filter(pk=key.pk, created_at=key.created_at).update(
            last_verified_at=timezone.now(), last_verify_ok=ok
        )
    return VerifyResult(ok=ok, message=message, model=model.id)


# --- rotation ---------------------------------------------------------------------------------
@dataclass
class RotationReport:
    key_id: str  # the newest encryption key's id
    reencrypted: int = 0
    current: int = 0  # already under the newest key
    changed: int = 0  # replaced or removed while we worked: already under the newest key
    failed: list[int] = field(default_factory=list)  # ids of keys no configured key opens


def provider_keys_reencrypt() -> RotationReport:
    """Re-encrypt every stored provider key under the newest encryption key (idempotent).

    Each row is rewritten only if it still holds the ciphertext we read, so a key set during the
    run (already under the newest key) is never overwritten with an older secret.
    """
    report = RotationReport(key_id=current_key_id())
    report.current = ProviderKey.objects.filter(encryption_key_id=report.key_id).count()
    stale = (
        ProviderKey.objects.exclude(encryption_key_id=report.key_id)
        .order_by("pk")
        .values_list("pk", "secret_encrypted", "encryption_key_id")
    )
    for pk, token, key_id in stale.iterator():
        try:
            sealed = reencrypt(token=token, key_id=key_id)
        except DecryptionFailed:
            report.failed.append(pk)
            continue
        updated = ProviderKey.objects.filter(pk=pk, secret_encrypted=token).update(
            secret_encrypted=sealed.token, encryption_key_id=sealed.key_id
        )
        if updated:
            report.reencrypted += 1
        else:
            report.changed += 1
    return report
