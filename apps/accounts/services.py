"""Every write to accounts data goes through here.

Services are keyword-only and transactional. ``actor`` is the user acting from the dashboard;
``None`` means an operator (management command) or the system, which skips role checks.
Emails go out in ``transaction.on_commit`` so a rolled-back action sends nothing.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.core.mail import send_mail
from django.db import IntegrityError, transaction
from django.template.loader import render_to_string
from django.urls import reverse
from django.utils import timezone
from django.utils.text import slugify
from redis.exceptions import RedisError

from llmwise import metrics
from llmwise.errors import ApplicationError, Conflict, NotFound, NotPermitted
from llmwise.logging import log_context_bind

from .models import (
    PLAYGROUND_KEY_NAME,
    ApiKey,
    AuditEvent,
    Invitation,
    Membership,
    Organization,
    Role,
    User,
)

logger = logging.getLogger(__name__)
# What the shared cache raises when Redis is unreachable (the in-process cache never does).
CACHE_ERRORS = (RedisError, OSError)

API_KEY_PREFIX = "lw-"
API_KEY_RANDOM_BYTES = 32
API_KEY_LOOKUP_CHARS = 12  # "lw-" + 9 characters: shown in the dashboard, indexed
SLUG_MAX_LENGTH = 50


def _sha256(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


# --- audit ------------------------------------------------------------------------------------
def audit_record(
    *,
    org: Organization,
    actor: User | None,
    action: str,
    target: str = "",
    data: dict[str, Any] | None = None,
) -> AuditEvent:
    """Append one audit event. Call it inside the transaction of the change it describes."""
    return AuditEvent.objects.create(
        organization=org,
        actor=actor,
        actor_label=actor.email if actor is not None else "system",
        action=action,
        target=target,
        data=data or {},
    )


# --- permissions ------------------------------------------------------------------------------
def membership_require(*, org: Organization, user: User | None, role: str) -> Membership | None:
    """Return ``user``'s membership in ``org`` when it has at least ``role``.

    An outsider gets :class:`NotFound` (they must not learn the org exists); a member without the
    role gets :class:`NotPermitted`. ``user=None`` is the operator and passes.
    """
    if user is None:
        return None
    membership = Membership.objects.filter(organization=org, user=user).first()
    if membership is None:
        raise NotFound("Organization not found.")
    if not membership.has_role(role):
        raise NotPermitted(f"This needs the {Role(role).label.lower()} role or higher.")
    return membership


# --- users and organizations ------------------------------------------------------------------
def _unique_slug(base: str) -> str:
    root = (slugify(base) or "org")[:SLUG_MAX_LENGTH].strip("-") or "org"
    slug = root
    while Organization.objects.filter(slug=slug).exists():
        slug = f"{root[: SLUG_MAX_LENGTH - 7]}-{secrets.token_hex(3)}"
    return slug


@transaction.atomic
def organization_create(
    *, name: str, owner: User, slug: str | None = None, is_personal: bool = False
) -> Organization:
    """Create an organization with ``owner`` as its first owner."""
    name = name.strip()
    if not name:
        raise ApplicationError("An organization needs a name.", param="name")
    if slug is not None:
        if slug != slugify(slug) or not slug:
            raise ApplicationError(
                "A slug may contain only lowercase letters, digits and hyphens.", param="slug"
            )
        if Organization.objects.filter(slug=slug).exists():
            raise Conflict(f"The slug {slug!r} is taken.", param="slug")
    org = Organization.objects.create(
        name=name[:150], slug=slug or _unique_slug(name), is_personal=is_personal
    )
    Membership.objects.create(organization=org, user=owner, role=Role.OWNER)
    audit_record(
        org=org,
        actor=owner,
        action="organization.create",
        target=f"org:{org.pk}",
        data={"name": org.name, "personal": is_personal},
    )
    return org


def organization_create_personal(*, user: User) -> Organization:
    """Every new user gets an organization of their own."""
    local_part = user.email.split("@", 1)[0]
    return organization_create(name=f"{local_part}'s workspace", owner=user, is_personal=True)


@transaction.atomic
def organization_update(
    *, org: Organization, actor: User | None, name: str, zero_retention: bool | None = None
) -> Organization:
    membership_require(org=org, user=actor, role=Role.ADMIN)
    name = name.strip()
    if not name:
        raise ApplicationError("An organization needs a name.", param="name")
    changes: dict[str, Any] = {}
    if name != org.name:
        changes["name"] = [org.name, name]
        org.name = name[:150]
    if zero_retention is not None and zero_retention != org.zero_retention:
        changes["zero_retention"] = [org.zero_retention, zero_retention]
        org.zero_retention = zero_retention
    if changes:
        org.save(update_fields=["name", "zero_retention"])
        audit_record(
            org=org, actor=actor, action="organization.update", target=f"org:{org.pk}", data=changes
        )
    return org


@transaction.atomic
def user_get_or_create(*, email: str) -> tuple[User, bool]:
    """The user with this email, created (without a usable password) if missing."""
    email = User.objects.normalize_email(email).lower()
    user = User.objects.filter(email__iexact=email).first()
    if user is not None:
        return user, False
    user = User.objects.create_user(email=email, password=None)
    return user, True


# --- memberships ------------------------------------------------------------------------------
def _lock_membership(org: Organization, membership_id: int) -> Membership:
    membership = (
        Membership.objects.select_for_update()
        .select_related("user")
        .filter(organization=org, pk=membership_id)
        .first()
    )
    if membership is None:
        raise NotFound("Member not found.")
    return membership


def _owner_count(org: Organization) -> int:
    return Membership.objects.filter(organization=org, role=Role.OWNER).count()


@transaction.atomic
def membership_change_role(
    *, org: Organization, actor: User | None, membership_id: int, role: str
) -> Membership:
    """Make a member an admin or back. Owners change only through a transfer."""
    acting = membership_require(org=org, user=actor, role=Role.ADMIN)
    target = _lock_membership(org, membership_id)
    if role not in (Role.ADMIN, Role.MEMBER):
        raise ApplicationError("Use 'transfer ownership' to make someone an owner.", param="role")
    if target.role == Role.OWNER:
        raise NotPermitted("An owner's role changes only by transferring ownership.")
    if acting is not None and acting.pk == target.pk:
        raise ApplicationError("You cannot change your own role.")
    if target.role != role:
        audit_record(
            org=org,
            actor=actor,
            action="member.role_change",
            target=f"user:{target.user_id}",
            data={"email": target.user.email, "from": target.role, "to": role},
        )
        target.role = role
        target.save(update_fields=["role"])
    return target


@transaction.atomic
def membership_remove(*, org: Organization, actor: User | None, membership_id: int) -> None:
    """Remove someone else from the organization. Admins cannot remove owners."""
    acting = membership_require(org=org, user=actor, role=Role.ADMIN)
    target = _lock_membership(org, membership_id)
    if acting is not None and acting.pk == target.pk:
        raise ApplicationError("To remove yourself, leave the organization.")
    if target.role == Role.OWNER and (acting is None or acting.role != Role.OWNER):
        raise NotPermitted("Only an owner can remove an owner.")
    if target.role == Role.OWNER and _owner_count(org) <= 1:
        raise ApplicationError("An organization needs at least one owner.")
    audit_record(
        org=org,
        actor=actor,
        action="member.remove",
        target=f"user:{target.user_id}",
        data={"email": target.user.email, "role": target.role},
    )
    target.delete()


@transaction.atomic
def membership_leave(*, org: Organization, user: User) -> None:
    """Leave an organization. The last owner must transfer ownership first."""
    membership = Membership.objects.select_for_update().filter(organization=org, user=user).first()
    if membership is None:
        raise NotFound("Organization not found.")
    if membership.role == Role.OWNER and _owner_count(org) <= 1:
        raise ApplicationError(
            "You are the only owner: transfer ownership to another member before leaving."
        )
    audit_record(
        org=org,
        actor=user,
        action="member.leave",
        target=f"user:{user.pk}",
        data={"email": user.email, "role": membership.role},
    )
    membership.delete()


@transaction.atomic
def organization_transfer_ownership(
    *, org: Organization, actor: User, membership_id: int
) -> Membership:
    """Make another member the owner; the acting owner becomes an admin."""
    acting = membership_require(org=org, user=actor, role=Role.OWNER)
    assert acting is not None  # noqa: S101 - actor is a real user here
    target = _lock_membership(org, membership_id)
    if target.pk == acting.pk:
        raise ApplicationError("You already own this organization.")
    target.role = Role.OWNER
    target.save(update_fields=["role"])
    Membership.objects.filter(pk=acting.pk).update(role=Role.ADMIN)
    audit_record(
        org=org,
        actor=actor,
        action="organization.transfer_ownership",
        target=f"user:{target.user_id}",
        data={"to": target.user.email},
    )
    return target


# --- invitations ------------------------------------------------------------------------------
@dataclass(frozen=True)
class IssuedInvitation:
    invitation: Invitation
    token: str

    @property
    def accept_path(self) -> str:
        return reverse("invitation_accept", args=[self.token])


def _send_invitation_email(invitation_id: int, token: str) -> None:
    invitation = Invitation.objects.select_related("organization", "invited_by").get(
        pk=invitation_id
    )
    url = settings.SITE_URL + reverse("invitation_accept", args=[token])
    context = {"invitation": invitation, "url": url}
    send_mail(
        subject=f"[LLMWise] You are invited to join {invitation.organization.name}",
        message=render_to_string("emails/invitation.txt", context),
        from_email=None,
        recipient_list=[invitation.email],
    )


@transaction.atomic
def invitation_create(
    *, org: Organization, actor: User | None, email: str, role: str = Role.MEMBER
) -> IssuedInvitation:
    """Invite an email address. A newer invitation for the same address replaces the old one."""
    membership_require(org=org, user=actor, role=Role.ADMIN)
    email = User.objects.normalize_email(email.strip()).lower()
    if not email or "@" not in email:
        raise ApplicationError("Enter a valid email address.", param="email")
    if role not in (Role.ADMIN, Role.MEMBER):
        raise ApplicationError("Invite as a member or an admin.", param="role")
    if Membership.objects.filter(organization=org, user__email__iexact=email).exists():
        raise Conflict(f"{email} is already a member.", param="email")
    now = timezone.now()
    Invitation.objects.filter(
        organization=org, email__iexact=email, accepted_at=None, revoked_at=None
    ).update(revoked_at=now)
    token = secrets.token_urlsafe(32)
    invitation = Invitation.objects.create(
        organization=org,
        email=email,
        role=role,
        token_hash=_sha256(token),
        invited_by=actor,
        expires_at=now + timedelta(days=settings.INVITATION_TTL_DAYS),
    )
    audit_record(
        org=org,
        actor=actor,
        action="invitation.create",
        target=f"invitation:{invitation.pk}",
        data={"email": email, "role": role},
    )
    transaction.on_commit(lambda: _send_invitation_email(invitation.pk, token))
    return IssuedInvitation(invitation=invitation, token=token)


def invitation_for_token(*, token: str) -> Invitation:
    invitation = (
        Invitation.objects.select_related("organization", "invited_by")
        .filter(token_hash=_sha256(token))
        .first()
    )
    if invitation is None:
        raise NotFound("This invitation link is not valid.")
    return invitation


@transaction.atomic
def invitation_accept(*, token: str, user: User) -> Membership:
    """Join the organization of a pending invitation addressed to ``user``'s email."""
    invitation = invitation_for_token(token=token)
    return _invitation_accept_locked(invitation_id=invitation.pk, user=user)


@transaction.atomic
def invitation_accept_addressed(*, invitation_id: int, user: User) -> Membership:
    """Accept an invitation listed on the dashboard of the (verified) user it was sent to.

    Someone who signs up from an invitation email loses the link on the way through email
    verification; being logged in with the invited address is what authorizes here.
    """
    invitation = Invitation.objects.filter(pk=invitation_id, email__iexact=user.email).first()
    if invitation is None:
        raise NotFound("Invitation not found.")
    return _invitation_accept_locked(invitation_id=invitation.pk, user=user)


def _invitation_accept_locked(*, invitation_id: int, user: User) -> Membership:
    invitation = (
        Invitation.objects.select_for_update().select_related("organization").get(pk=invitation_id)
    )
    if invitation.revoked_at is not None:
        raise ApplicationError("This invitation was withdrawn.", code="invitation_revoked")
    if invitation.accepted_at is not None:
        raise ApplicationError("This invitation was already used.", code="invitation_used")
    if invitation.is_expired:
        raise ApplicationError(
            "This invitation has expired. Ask for a new one.", code="invitation_expired"
        )
    if invitation.email.lower() != user.email.lower():
        raise NotPermitted(
            f"This invitation was sent to {invitation.email}; you are signed in as {user.email}."
        )
    membership, created = Membership.objects.get_or_create(
        organization=invitation.organization, user=user, defaults={"role": invitation.role}
    )
    invitation.accepted_at = timezone.now()
    invitation.accepted_by = user
    invitation.save(update_fields=["accepted_at", "accepted_by"])
    audit_record(
        org=invitation.organization,
        actor=user,
        action="invitation.accept",
        target=f"invitation:{invitation.pk}",
        data={"email": user.email, "role": membership.role, "joined": created},
    )
    return membership


@transaction.atomic
def invitation_revoke(*, org: Organization, actor: User | None, invitation_id: int) -> None:
    membership_require(org=org, user=actor, role=Role.ADMIN)
    invitation = (
        Invitation.objects.select_for_update().filter(organization=org, pk=invitation_id).first()
    )
    if invitation is None:
        raise NotFound("Invitation not found.")
    if invitation.accepted_at is not None or invitation.revoked_at is not None:
        return
    invitation.revoked_at = timezone.now()
    invitation.save(update_fields=["revoked_at"])
    audit_record(
        org=org,
        actor=actor,
        action="invitation.revoke",
        target=f"invitation:{invitation.pk}",
        data={"email": invitation.email},
    )


# --- API keys ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class IssuedApiKey:
    """A freshly created key. ``secret`` exists only here: show it once, never store it."""

    api_key: ApiKey
    secret: str


def _new_secret() -> str:
    return API_KEY_PREFIX + secrets.token_urlsafe(API_KEY_RANDOM_BYTES)


@transaction.atomic
def api_key_create(
    *,
    org: Organization,
    name: str,
    created_by: User | None,
    expires_at: datetime | None = None,
    allowed_models: list[str] | None = None,
    rpm_limit: int | None = None,
    tpm_limit: int | None = None,
    spend_cap_micros: int | None = None,
    zero_retention: bool | None = None,
    internal: bool = False,
) -> IssuedApiKey:
    """Create an API key; the returned secret is the only copy there will ever be.

    ``internal`` keys are the platform's own principals for dashboard calls (made by the system,
    ``created_by=None``); customers neither see nor manage them, and their name is reserved.
    """
    membership_require(org=org, user=created_by, role=Role.ADMIN)
    name = name.strip()
    if not name:
        raise ApplicationError("Give the key a name.", param="name")
    if internal and created_by is not None:
        raise NotPermitted("Internal keys are made by the platform only.")
    if not internal and name.casefold() == PLAYGROUND_KEY_NAME.casefold():
        raise ApplicationError(
            f"“{PLAYGROUND_KEY_NAME}” names the dashboard's own calls in usage; choose another "
            "name.",
            param="name",
        )
    if expires_at is not None and expires_at <= timezone.now():
        raise ApplicationError("The expiry must be in the future.", param="expires_at")
    for value, param in (
        (rpm_limit, "rpm_limit"),
        (tpm_limit, "tpm_limit"),
        (spend_cap_micros, "spend_cap"),
    ):
        if value is not None and value <= 0:
            raise ApplicationError("Limits must be positive numbers.", param=param)
    models = sorted({m.strip() for m in (allowed_models or []) if m.strip()})
    for _attempt in range(3):
        secret = _new_secret()
        try:
            with transaction.atomic():
                key = ApiKey.objects.create(
                    organization=org,
                    name=name[:100],
                    prefix=secret[:API_KEY_LOOKUP_CHARS],
                    secret_hash=_sha256(secret),
                    created_by=created_by,
                    expires_at=expires_at,
                    allowed_models=models,
                    rpm_limit=rpm_limit,
                    tpm_limit=tpm_limit,
                    spend_cap_micros=spend_cap_micros,
                    zero_retention=zero_retention,
                    internal=internal,
                )
            break
        except IntegrityError:  # a prefix collision: astronomically rare, try a new secret
            continue
    else:  # pragma: no cover
        raise Conflict("Could not create a key, please try again.")
    audit_record(
        org=org,
        actor=created_by,
        action="api_key.create",
        target=f"api_key:{key.pk}",
        data={
            "name": key.name,
            "prefix": key.prefix,
            "expires_at": expires_at.isoformat() if expires_at else None,
            "allowed_models": models,
            "rpm_limit": rpm_limit,
            "tpm_limit": tpm_limit,
            "spend_cap_micros": spend_cap_micros,
            "zero_retention": zero_retention,
            **({"internal": True} if internal else {}),
        },
    )
    return IssuedApiKey(api_key=key, secret=secret)


@transaction.atomic
def api_key_revoke(*, org: Organization, actor: User | None, key_id: int) -> ApiKey:
    """Revoke one of ``org``'s keys. A member (``actor``) can reach customer keys only: an
    internal key is not found for them; the system (``actor=None``, e.g. closing the
    organization) revokes any."""
    membership_require(org=org, user=actor, role=Role.ADMIN)
    keys = ApiKey.objects.select_for_update().filter(organization=org, pk=key_id)
    if actor is not None:
        keys = keys.filter(internal=False)
    key = keys.first()
    if key is None:
        raise NotFound("API key not found.")
    if key.revoked_at is None:
        key.revoked_at = timezone.now()
        key.revoked_by = actor
        key.save(update_fields=["revoked_at", "revoked_by"])
        # Evict now, not on commit: a rolled-back revoke only costs one extra lookup.
        api_key_cache_evict(key=key)
        audit_record(
            org=org,
            actor=actor,
            action="api_key.revoke",
            target=f"api_key:{key.pk}",
            data={"name": key.name, "prefix": key.prefix},
        )
    return key


# Authenticated keys are remembered in-process for at most this long: a busy key costs no query
# per request, and a revocation in another process takes effect within this time (in this
# process, at once: api_key_revoke evicts).
API_KEY_CACHE_SECONDS = 1.0
API_KEY_CACHE_MAX_ENTRIES = 10_000
_key_cache: dict[str, tuple[float, ApiKey]] = {}  # sha256(secret) → (expires, key)
_last_marked: dict[int, float] = {}  # key id → monotonic time of our last last_used write


def api_key_authenticate(*, secret: str) -> ApiKey | None:
    """The usable key for ``secret``, or None. Constant-time on the hash comparison.

    Marks the key as used at most once per ``API_KEY_LAST_USED_INTERVAL`` seconds (shared through
    the cache), so a busy key costs no extra write per request.
    """
    if not secret.startswith(API_KEY_PREFIX) or len(secret) < API_KEY_LOOKUP_CHARS + 8:
        return None
    digest = _sha256(secret)
    now = time.monotonic()
    cached = _key_cache.get(digest)
    if cached is not None and cached[0] > now:
        key = cached[1]
    else:
        found = (
            ApiKey.objects.select_related("organization")
            .filter(prefix=secret[:API_KEY_LOOKUP_CHARS])
            .first()
        )
        if found is None or not hmac.compare_digest(found.secret_hash, digest):
            return None
        key = found
        if len(_key_cache) >= API_KEY_CACHE_MAX_ENTRIES:
            _key_cache.clear()
        _key_cache[digest] = (now + API_KEY_CACHE_SECONDS, key)
    if not key.is_usable:  # expiry is re-checked on every call, cached or not
        return None
    api_key_mark_used(key=key)
    log_context_bind(org_id=key.organization_id)  # every later log line of the request names it
    return key


def api_key_authenticate_cached(*, secret: str, client_ip: str | None) -> ApiKey | None:
    """The key for ``secret`` when :func:`api_key_authenticate_limited` would answer it from
    memory alone (remembered, usable, its last-used mark fresh, the IP not blocked), else None.

    No I/O: the async gateway calls this first and only goes to a thread for the full check.
    """
    if client_ip is not None and client_ip in _blocked_ips:
        return None
    if not secret.startswith(API_KEY_PREFIX):
        return None
    cached = _key_cache.get(_sha256(secret))
    now = time.monotonic()
    if cached is None or cached[0] <= now:
        return None
    key = cached[1]
    if not key.is_usable:
        return None
    if now - _last_marked.get(key.pk, float("-inf")) >= settings.API_KEY_LAST_USED_INTERVAL:
        return None
    return key


def api_key_cache_evict(*, key: ApiKey) -> None:
    _key_cache.pop(key.secret_hash, None)


def api_key_caches_clear() -> None:
    """Forget every remembered key and last-used mark (tests; operators after bulk changes)."""
    _key_cache.clear()
    _last_marked.clear()
    _blocked_ips.clear()


def api_key_mark_used(*, key: ApiKey) -> None:
    interval = settings.API_KEY_LAST_USED_INTERVAL
    now = time.monotonic()
    # The local check spares a cache round trip per request; the shared cache.add keeps the
    # write to one per interval across all processes.
    if now - _last_marked.get(key.pk, float("-inf")) < interval:
        return
    _last_marked[key.pk] = now
    try:
        first = cache.add(f"api_key:used:{key.pk}", 1, timeout=interval)
    except CACHE_ERRORS:
        # The shared cache (Redis) is down: write anyway; the local check above still bounds
        # it to one write per interval per process, and an outage must not fail the request.
        first = True
    if first:
        stamp = timezone.now()
        ApiKey.objects.filter(pk=key.pk).update(last_used_at=stamp)
        key.last_used_at = stamp


# --- brute-force limit on API-key authentication ------------------------------------------------
class TooManyFailedAuthentications(ApplicationError):
    """An IP address failed API-key authentication too often: 429 with Retry-After."""

    status_code = 429
    error_type = "rate_limit_error"
    code = "too_many_failed_authentications"

    def __init__(self, message: str, *, retry_after: float) -> None:
        super().__init__(message)
        self.retry_after = retry_after


BLOCKED_IPS_MAX_ENTRIES = 10_000
_blocked_ips: dict[str, float] = {}  # client IP → monotonic time its block ends (this process)


def api_key_authenticate_limited(*, secret: str, client_ip: str | None) -> ApiKey | None:
    """:func:`api_key_authenticate`, refusing an IP address that failed too often.

    More than ``API_KEY_AUTH_FAILURES_PER_IP`` failed attempts from one IP within a window of
    ``API_KEY_AUTH_FAILURE_WINDOW_SECONDS`` (counted over the current and the previous fixed
    window, so a burst across a boundary is caught) raise :class:`TooManyFailedAuthentications`
    (429) until the window ends, for every attempt from that IP, right keys included (a blocked
    guesser learns nothing). Counts live in the shared cache (Redis in scale-out), so every
    process sees them; a process that saw the limit crossed then refuses that IP from memory,
    without a database lookup. A successful authentication costs nothing extra: the counter is
    touched on the failure path only. ``client_ip=None`` (unknown) is not limited.
    """
    limit: int = settings.API_KEY_AUTH_FAILURES_PER_IP
    if not client_ip or limit <= 0:
        return api_key_authenticate(secret=secret)
    now = time.monotonic()
    blocked_until = _blocked_ips.get(client_ip)
    if blocked_until is not None:
        if blocked_until > now:
            raise _too_many(blocked_until - now)
        _blocked_ips.pop(client_ip, None)
    key = api_key_authenticate(secret=secret)
    if key is not None:
        return key
    window: int = settings.API_KEY_AUTH_FAILURE_WINDOW_SECONDS
    wall = time.time()
    bucket = int(wall // window)
    counter = f"api_key:auth_failures:{client_ip}:{bucket}"
    try:
        cache.add(counter, 0, timeout=window * 2)
        try:
            failures = cache.incr(counter)
        except ValueError:  # evicted between add and incr
            cache.set(counter, 1, timeout=window * 2)
            failures = 1
        # The previous window counts too, so a burst across a window boundary is not forgiven
        # half-way: the limit holds over any stretch of one window (and at most two).
        failures += int(cache.get(f"api_key:auth_failures:{client_ip}:{bucket - 1}", 0))
    except CACHE_ERRORS:
        # The shared cache (Redis) is down: answer the wrong key with its 401 rather than a
        # 500; the count resumes when the cache is back (a key is far too long to guess anyway).
        logger.warning("api key auth: cache unavailable, failure from %s not counted", client_ip)
        return None
    if failures > limit:
        retry_after = (bucket + 1) * window - wall
        if len(_blocked_ips) >= BLOCKED_IPS_MAX_ENTRIES:
            _blocked_ips.clear()
        _blocked_ips[client_ip] = now + retry_after
        raise _too_many(retry_after)
    return None


def _too_many(retry_after: float) -> TooManyFailedAuthentications:
    metrics.rate_limit_rejected(TooManyFailedAuthentications.code)
    return TooManyFailedAuthentications(
        "Too many failed API key attempts from your address; try again later.",
        retry_after=max(retry_after, 1.0),
    )
