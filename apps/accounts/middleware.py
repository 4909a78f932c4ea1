"""Resolve the organization the logged-in user is working in.

The current org is remembered in the session; it always comes from the user's own memberships,
never from a client-sent id. ``request.membership`` and ``request.org`` are lazy: requests that
don't use them cost no query.
"""

from __future__ import annotations

from http import HTTPStatus

from django.http import HttpRequest, HttpResponse
from django.utils.functional import SimpleLazyObject

from llmwise import metrics
from llmwise.logging import log_context_bind
from llmwise.middleware import DualModeMiddleware

from . import selectors
from .models import Membership, Organization, User

SESSION_KEY = "current_org_id"


def current_membership(request: HttpRequest) -> Membership | None:
    user = request.user
    if not user.is_authenticated:
        return None
    membership = selectors.membership_in(user=user, org_id=request.session.get(SESSION_KEY))
    if membership is None:
        membership = selectors.memberships_of(user=user).first()
        if membership is not None:
            request.session[SESSION_KEY] = membership.organization_id
    if membership is not None:
        log_context_bind(org_id=membership.organization_id)
    return membership


class CurrentOrganizationMiddleware(DualModeMiddleware):
    def before(self, request: HttpRequest) -> None:
        membership = SimpleLazyObject(lambda: current_membership(request))
        request.membership = membership  # type: ignore[attr-defined]
        request.org = SimpleLazyObject(  # type: ignore[attr-defined]
            lambda: membership.organization if membership else None
        )


class RateLimitStatusMiddleware(DualModeMiddleware):
    """A sign-in refused by a rate limit answers 429 with Retry-After, not 200.

    allauth shows "too many failed login attempts" as a form error on an ordinary page; the
    account adapter marks such a request (``rate_limit_retry_after``) and this sets the status,
    so clients, proxies and monitoring see the refusal for what it is.
    """

    def after(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        retry_after = getattr(request, "rate_limit_retry_after", None)
        if retry_after is not None and response.status_code == HTTPStatus.OK:
            response.status_code = HTTPStatus.TOO_MANY_REQUESTS
            response["Retry-After"] = str(int(retry_after))
            metrics.rate_limit_rejected("login_failed")
        return response


class AuthedRequest(HttpRequest):
    """For type checking: a request whose user is logged in."""

    user: User


class OrgRequest(AuthedRequest):
    """For type checking: a dashboard request with its current organization resolved."""

    org: Organization
    membership: Membership
