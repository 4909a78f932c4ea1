"""Reads of accounts data. Tenant first, always."""

from __future__ import annotations

from django.db.models import QuerySet
from django.utils import timezone

from .models import ApiKey, AuditEvent, Invitation, Membership, Organization, User


def memberships_of(*, user: User) -> QuerySet[Membership]:
    return (
        Membership.objects.filter(user=user)
        .select_related("organization")
        .order_by("-organization__is_personal", "organization__name")
    )


def membership_in(*, user: User, org_id: int | str | None) -> Membership | None:
    """The user's membership in ``org_id``, or None when they are not a member."""
    if org_id is None:
        return None
    try:
        pk = int(org_id)
    except (TypeError, ValueError):
        return None
    return (
        Membership.objects.filter(user=user, organization_id=pk)
        .select_related("organization")
        .first()
    )


def members_of(*, org: Organization) -> QuerySet[Membership]:
    return (
        Membership.objects.filter(organization=org).select_related("user").order_by("user__email")
    )


def pending_invitations(*, org: Organization) -> QuerySet[Invitation]:
    return Invitation.objects.filter(
        organization=org, accepted_at=None, revoked_at=None, expires_at__gt=timezone.now()
    ).order_by("-created_at")


def invitations_addressed_to(*, user: User) -> QuerySet[Invitation]:
    """Pending invitations sent to this user's email address, from any organization."""
    return (
        Invitation.objects.filter(
            email__iexact=user.email,
            accepted_at=None,
            revoked_at=None,
            expires_at__gt=timezone.now(),
        )
        .exclude(organization__memberships__user=user)
        .select_related("organization", "invited_by")
        .order_by("-created_at")
    )


def api_keys_of(*, org: Organization, include_internal: bool = False) -> QuerySet[ApiKey]:
    """``org``'s keys, usable ones first. The platform's internal keys (the dashboard's
    playground key) are left out unless asked for: customers do not manage them, but usage
    filters name them."""
    keys = ApiKey.objects.filter(organization=org)
    if not include_internal:
        keys = keys.filter(internal=False)
    return keys.order_by("revoked_at", "-created_at")


def audit_events_of(*, org: Organization) -> QuerySet[AuditEvent]:
    return AuditEvent.objects.filter(organization=org).select_related("actor")
