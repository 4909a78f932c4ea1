"""Account deletion, the accounts layer's part: who may go, closing an organization's accounts
data, and erasing a person.

The whole deletion (texts, holds, ledger notes, newsletter) is orchestrated by
:func:`apps.dashboard.privacy_services.account_delete`, which calls these inside its one
transaction; nothing here commits on its own. The rules are written down in ``docs/privacy.md``.

Personal data is replaced, not blanked, by one placeholder per deletion (``deleted-user-…``,
random, so it links nothing to the person) wherever the row itself must stay: audit events and
ledger notes keep saying *that* someone did something, no longer *who*.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from importlib import import_module
from typing import Any

from allauth.account.models import EmailAddress
from allauth.socialaccount.models import SocialAccount
from django.conf import settings
from django.contrib.admin.models import LogEntry
from django.contrib.auth import SESSION_KEY as AUTH_SESSION_KEY
from django.contrib.contenttypes.models import ContentType
from django.db.models import Q, TextField
from django.db.models.functions import Cast
from django.utils import timezone

from .models import ApiKey, AuditEvent, Invitation, Membership, Organization, Role, User
from .services import api_key_revoke, audit_record

PLACEHOLDER_PREFIX = "deleted-user-"
PLACEHOLDER_RANDOM_BYTES = 4
REDACTED_EMAIL = "[redacted email]"
CLOSED_ORG_NAME = "Closed organization"
CLOSED_SLUG_PREFIX = "closed-"
CLOSED_SLUG_RANDOM_BYTES = 6
# Good enough to find an address in free text (notes, audit values); it need not validate one.
EMAIL_PATTERN = re.compile(r"[\w.!#$%&'*+/=?^`{|}~-]+@[\w-]+(?:\.[\w-]+)+")


def placeholder_new() -> str:
    """The stand-in for one deleted person, e.g. ``deleted-user-3f9a1c2b``."""
    return PLACEHOLDER_PREFIX + secrets.token_hex(PLACEHOLDER_RANDOM_BYTES)


# --- redaction of free text and JSON ------------------------------------------------------------
def redact_text(
    text: str, *, texts: Collection[str], replacement: str, every_email: bool = False
) -> str:
    """``text`` with each of ``texts`` (case-insensitive) replaced by ``replacement`` and, with
    ``every_email``, any other email address by ``[redacted email]``."""
    for needle in sorted((t for t in texts if t), key=len, reverse=True):
        text = re.sub(re.escape(needle), lambda _match: replacement, text, flags=re.IGNORECASE)
    if every_email:
        text = EMAIL_PATTERN.sub(REDACTED_EMAIL, text)
    return text


def redact_json(
    value: Any,
    *,
    texts: Collection[str],
    exact: Collection[str] = (),
    replacement: str,
    every_email: bool = False,
) -> Any:
    """``value`` (JSON) with personal data replaced in every string: ``texts`` wherever they
    occur, ``exact`` only as a whole value (names: too short to replace inside other words).
    Keys are ours and stay."""
    exact_folded = {e.casefold() for e in exact if e}
    if isinstance(value, str):
        if value.casefold() in exact_folded:
            return replacement
        return redact_text(value, texts=texts, replacement=replacement, every_email=every_email)
    if isinstance(value, list):
        return [
            redact_json(
                v, texts=texts, exact=exact, replacement=replacement, every_email=every_email
            )
            for v in value
        ]
    if isinstance(value, dict):
        return {
            k: redact_json(
                v, texts=texts, exact=exact, replacement=replacement, every_email=every_email
            )
            for k, v in value.items()
        }
    return value


def _audit_events_redact(
    events: Any,
    *,
    texts: Collection[str],
    exact: Collection[str],
    replacement: str,
    every_email: bool,
) -> int:
    changed = 0
    for event in events.only("pk", "actor_label", "data").iterator(chunk_size=500):
        label = redact_text(
            event.actor_label, texts=texts, replacement=replacement, every_email=every_email
        )
        data = redact_json(
            event.data, texts=texts, exact=exact, replacement=replacement, every_email=every_email
        )
        if label != event.actor_label or data != event.data:
            # The audit log is written once by audit_record; this redaction is its only update.
            AuditEvent.objects.filter(pk=event.pk).update(actor_label=label[:254], data=data)
            changed += 1
    return changed


# --- who may go ---------------------------------------------------------------------------------
@dataclass(frozen=True)
class DeletionPlan:
    """What deleting ``user``'s account does to each of their organizations.

    * ``close``: organizations where they are the only member — closed with the account;
    * ``blocked``: organizations they alone own while others belong to them — ownership must be
      transferred (or the others removed) first; while any exists, nothing can be deleted;
    * ``leave``: every other membership simply ends.
    """

    close: list[Organization] = field(default_factory=list)
    blocked: list[Organization] = field(default_factory=list)
    leave: list[Membership] = field(default_factory=list)

    @property
    def allowed(self) -> bool:
        return not self.blocked


def account_deletion_plan(*, user: User) -> DeletionPlan:
    """Sort ``user``'s memberships by what their account deletion would do (see the class)."""
    plan = DeletionPlan()
    memberships = (
        Membership.objects.filter(user=user)
        .select_related("organization")
        .order_by("organization__name", "organization_id")
    )
    for membership in memberships:
        org = membership.organization
        others = Membership.objects.filter(organization=org).exclude(user=user)
        if not others.exists():
            plan.close.append(org)
        elif membership.role == Role.OWNER and not others.filter(role=Role.OWNER).exists():
            plan.blocked.append(org)
        else:
            plan.leave.append(membership)
    return plan


def user_emails(*, user: User) -> list[str]:
    """Every address of ``user``: the login one and any other allauth knows, lowercased."""
    addresses = {user.email.lower()}
    addresses.update(
        e.lower() for e in EmailAddress.objects.filter(user=user).values_list("email", flat=True)
    )
    return sorted(a for a in addresses if a)


# --- closing an organization --------------------------------------------------------------------
def organization_close(*, org: Organization, emails: Sequence[str], placeholder: str) -> None:
    """The accounts side of closing ``org`` with its last member's account.

    Every API key is revoked (and evicted from the in-process cache), every invitation deleted
    (they hold other people's addresses), the name and slug replaced (a personal workspace is
    named after its owner's address) and zero retention switched on, so even a call that slipped
    through stores no text. Its audit events lose every email address and the former names. The
    organization row itself stays: its wallet and ledger are the money record.
    """
    for key_id in ApiKey.objects.filter(organization=org, revoked_at=None).values_list(
        "pk", flat=True
    ):
        api_key_revoke(org=org, actor=None, key_id=key_id)
    Invitation.objects.filter(organization=org).delete()
    former = [org.name, org.slug]
    org.name = CLOSED_ORG_NAME
    org.slug = CLOSED_SLUG_PREFIX + secrets.token_hex(CLOSED_SLUG_RANDOM_BYTES)
    org.zero_retention = True
    org.save(update_fields=["name", "slug", "zero_retention"])
    _audit_events_redact(
        AuditEvent.objects.filter(organization=org),
        texts=emails,
        exact=former,
        replacement=placeholder,
        every_email=True,
    )
    audit_record(
        org=org,
        actor=None,
        action="organization.close",
        target=f"org:{org.pk}",
        data={"reason": "account_deleted", "by": placeholder},
    )


# --- erasing the person -------------------------------------------------------------------------
def _sessions_end(user: User) -> int:
    """Delete every stored session of ``user`` (database-backed session engines).

    With other engines the sessions die anyway: they name a user id that no longer exists.
    Linear in the live sessions; deleting an account is rare.
    """
    store_class = import_module(settings.SESSION_ENGINE).SessionStore
    if not hasattr(store_class, "get_model_class"):
        return 0
    model = store_class.get_model_class()
    decoder = store_class()
    ended = []
    live = model.objects.filter(expire_date__gt=timezone.now()).only("session_key", "session_data")
    for session in live.iterator(chunk_size=500):
        if str(decoder.decode(session.session_data).get(AUTH_SESSION_KEY)) == str(user.pk):
            ended.append(session.session_key)
    model.objects.filter(session_key__in=ended).delete()
    return len(ended)


def user_erase(*, user: User, emails: Sequence[str], placeholder: str) -> None:
    """Remove ``user`` and their personal data from the accounts tables; call it last.

    Audit events anywhere lose the addresses (and a name stored as a whole value) to the
    placeholder; invitations sent *to* them are deleted; allauth's email addresses and social
    accounts, admin history about them and their sessions go; then the user row is deleted:
    memberships go with it and every "created by"/"actor" reference becomes empty (SET_NULL).
    """
    AuditEvent.objects.filter(actor=user).update(actor_label=placeholder)
    exact = [user.name.strip()] if user.name.strip() else []
    mentions = Q()
    for needle in [*emails, *exact]:
        mentions |= Q(data_text__icontains=needle) | Q(actor_label__iexact=needle)
    if mentions:
        _audit_events_redact(
            AuditEvent.objects.annotate(data_text=Cast("data", TextField())).filter(mentions),
            texts=emails,
            exact=exact,
            replacement=placeholder,
            every_email=False,
        )
    by_email = Q()
    for address in emails:
        by_email |= Q(email__iexact=address)
    if by_email:
        Invitation.objects.filter(by_email).delete()
    EmailAddress.objects.filter(user=user).delete()
    SocialAccount.objects.filter(user=user).delete()
    LogEntry.objects.filter(
        content_type=ContentType.objects.get_for_model(User), object_id=str(user.pk)
    ).delete()
    _sessions_end(user)
    user.delete()
