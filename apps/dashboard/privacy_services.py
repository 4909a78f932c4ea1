"""Privacy actions that span every app: an organization's data export and account deletion.

They live at the top layer because they touch accounts, wallet, gateway and optimizer data at
once; each lower layer does its own part (``apps.accounts.erasure``,
``apps.wallet.services.wallet_holds_release`` / ``ledger_notes_redact``,
``apps.gateway.services.organization_texts_erase``). The rules are in ``docs/privacy.md``.
"""

from __future__ import annotations

from dataclasses import dataclass

from django.db import transaction

from apps.accounts import erasure
from apps.accounts import selectors as account_selectors
from apps.accounts.models import Membership, Organization, Role, User
from apps.accounts.services import audit_record, membership_require
from apps.gateway import services as gateway_services
from apps.optimizer import replay as optimizer_replay
from apps.optimizer.models import ReplayRun
from apps.wallet import services as wallet_services
from llmwise.errors import ApplicationError, NotFound

from .models import NewsletterSubscription


# --- data export --------------------------------------------------------------------------------
def organization_export_start(*, user: User, org_id: object) -> Organization:
    """The organization ``user`` may export (owners and admins), with the export audit-logged.

    ``org_id`` is the organization the page showed; it must be one of the user's own: another
    organization is not found (404), a member without the role is refused (403).
    """
    membership = account_selectors.membership_in(
        user=user, org_id=org_id if isinstance(org_id, int | str) else None
    )
    if membership is None:
        raise NotFound("Organization not found.")
    org = membership.organization
    with transaction.atomic():
        membership_require(org=org, user=user, role=Role.ADMIN)
        audit_record(
            org=org,
            actor=user,
            action="organization.export",
            target=f"org:{org.pk}",
            data={"files": ["requests.csv", "ledger.csv"]},
        )
    return org


# --- account deletion ---------------------------------------------------------------------------
class AccountDeletionRefused(ApplicationError):
    """The account cannot be deleted as things are (nothing was changed)."""


@dataclass(frozen=True)
class AccountDeletion:
    """What a deletion did: the placeholder that replaced the person, the organizations closed
    and left, and the holds released in the closed ones."""

    placeholder: str
    closed_org_ids: list[int]
    left_org_ids: list[int]
    holds_released: int


def _organization_close(*, org: Organization, emails: list[str], placeholder: str) -> int:
    """Close ``org`` with its last member's account; returns the holds released.

    Order matters: stop what could still spend (replays, then holds), delete texts and secrets,
    then the accounts side (keys revoked, invitations, name, audit log).
    """
    unfinished = [ReplayRun.Status.DRAFT, *ReplayRun.ACTIVE_STATUSES]
    runs = ReplayRun.objects.filter(organization=org, status__in=unfinished)
    for run_id in runs.values_list("pk", flat=True):
        optimizer_replay.replay_cancel(org=org, actor=None, run_id=run_id)
    released = wallet_services.wallet_holds_release(org=org)
    gateway_services.organization_texts_erase(org=org)
    wallet_services.ledger_notes_redact(
        org=org, texts=emails, replacement=placeholder, every_email=True
    )
    erasure.organization_close(org=org, emails=emails, placeholder=placeholder)
    return released


def account_delete(*, user: User, password: str) -> AccountDeletion:
    """Delete ``user``'s account after checking their password, in one transaction.

    Refused (nothing changes) when the password is wrong, when the account has no password to
    confirm with, or while the user alone owns an organization that others belong to. Otherwise:
    organizations where they are the only member are closed (texts, provider keys and API keys
    gone, holds released; the wallet and ledger stay, money included), every other membership
    ends, their address is replaced by a placeholder in audit events and ledger notes, and the
    user row, email addresses, social accounts, sessions and newsletter subscription are deleted.
    """
    if not user.has_usable_password():
        raise AccountDeletionRefused(
            "Your account has no password yet (you sign in with GitHub or Google): set one "
            "under Account first, then confirm the deletion with it. Nothing was deleted.",
            param="password",
        )
    if not password or not user.check_password(password):
        raise AccountDeletionRefused(
            "That password is not correct. Nothing was deleted.", param="password"
        )
    with transaction.atomic():
        # Lock the user's organizations (in id order) so a concurrent deletion by another
        # member cannot leave an organization with no owner between our plan and our change.
        org_ids = list(
            Membership.objects.filter(user=user).values_list("organization_id", flat=True)
        )
        list(Organization.objects.select_for_update().filter(pk__in=org_ids).order_by("pk"))
        plan = erasure.account_deletion_plan(user=user)
        if not plan.allowed:
            names = ", ".join(org.name for org in plan.blocked)
            raise AccountDeletionRefused(
                f"You are the only owner of {names}, which other people belong to: transfer "
                "ownership (Team page) or remove the other members first. Nothing was deleted."
            )
        placeholder = erasure.placeholder_new()
        emails = erasure.user_emails(user=user)
        released = 0
        for org in plan.close:
            released += _organization_close(org=org, emails=emails, placeholder=placeholder)
        for membership in plan.leave:
            audit_record(
                org=membership.organization,
                actor=None,
                action="member.account_deleted",
                target=f"user:{user.pk}",
                data={"user": placeholder, "role": membership.role},
            )
        wallet_services.ledger_notes_redact(texts=emails, replacement=placeholder)
        NewsletterSubscription.objects.filter(email__in=emails).delete()
        erasure.user_erase(user=user, emails=emails, placeholder=placeholder)
    return AccountDeletion(
        placeholder=placeholder,
        closed_org_ids=[org.pk for org in plan.close],
        left_org_ids=[m.organization_id for m in plan.leave],
        holds_released=released,
    )
