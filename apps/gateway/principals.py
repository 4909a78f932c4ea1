"""Who a call is billed to when it comes from the dashboard session instead of an API key.

The call service bills and logs through an :class:`ApiKey` (its organization, its allowed models,
its limits, the request log's key). A dashboard user has none, so each organization gets one
internal key (``ApiKey.internal``), created on demand through the accounts service by the
platform (``created_by=None``). Its secret is thrown away at creation: nobody can present it over
HTTP, it only names the principal. Customers never see it among their API keys nor manage it
(revoke, policy pins); its calls show in usage as "Playground".
"""

from __future__ import annotations

from django.db import transaction

from apps.accounts import selectors as account_selectors
from apps.accounts import services as account_services
from apps.accounts.models import PLAYGROUND_KEY_NAME, ApiKey, Organization, User
from llmwise.errors import NotFound

DASHBOARD_KEY_NAME = PLAYGROUND_KEY_NAME


def session_organization(*, user: User, session_org_id: object) -> Organization:
    """The organization the user is working in, by the same rule as the dashboard middleware:
    the session's current org when the user still belongs to it, else their first one."""
    membership = account_selectors.membership_in(
        user=user, org_id=session_org_id if isinstance(session_org_id, int | str) else None
    )
    if membership is None:
        membership = account_selectors.memberships_of(user=user).first()
    if membership is None:
        raise NotFound("You are not a member of any organization.", code="no_organization")
    return membership.organization


@transaction.atomic
def dashboard_api_key(*, org: Organization) -> ApiKey:
    """The org's usable internal dashboard key, created when there is none (or it was revoked
    or expired, which only the platform can do)."""
    # Lock the org row so two first calls at once create one key, not two.
    Organization.objects.select_for_update().filter(pk=org.pk).first()
    existing = [
        key
        for key in ApiKey.objects.select_related("organization")
        .filter(organization=org, internal=True, revoked_at=None)
        .order_by("-created_at")
        if key.is_usable
    ]
    if existing:
        return existing[0]
    issued = account_services.api_key_create(
        org=org, name=DASHBOARD_KEY_NAME, created_by=None, internal=True
    )
    return ApiKey.objects.select_related("organization").get(pk=issued.api_key.pk)


def session_api_key(*, user: User, session_org_id: object) -> ApiKey:
    """The principal for a dashboard-session call of ``user``."""
    return dashboard_api_key(org=session_organization(user=user, session_org_id=session_org_id))
