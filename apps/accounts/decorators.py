"""View decorators for pages that work inside the current organization."""

from __future__ import annotations

from collections.abc import Callable
from functools import wraps
from typing import Any

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import redirect
from django.urls import reverse
from django.utils.http import url_has_allowed_host_and_scheme

from llmwise.errors import ApplicationError, NotFound, NotPermitted

from .models import Role

View = Callable[..., HttpResponse]


def _back(request: HttpRequest) -> str:
    """Where to show a refused action's message: the page the form was on, when it is ours.

    Redirecting to the action's own URL would turn a POST-only endpoint into a 405.
    """
    if request.method == "GET":
        return request.get_full_path()
    referer = request.headers.get("referer", "")
    if url_has_allowed_host_and_scheme(
        referer, allowed_hosts={request.get_host()}, require_https=request.is_secure()
    ):
        return referer
    return reverse("dashboard:overview")


def org_page(role: str = Role.MEMBER) -> Callable[[View], View]:
    """Require a logged-in user with at least ``role`` in the current organization.

    Service errors raised by the view become flash messages (or 404/403 pages), so views only
    handle the happy path.
    """

    def decorator(view: View) -> View:
        @login_required
        @wraps(view)
        def wrapped(request: HttpRequest, *args: Any, **kwargs: Any) -> HttpResponse:
            membership = request.membership  # type: ignore[attr-defined]
            if not membership:
                raise Http404("You are not a member of any organization.")
            if not membership.has_role(role):
                raise PermissionDenied(f"This page needs the {Role(role).label.lower()} role.")
            try:
                return view(request, *args, **kwargs)
            except NotFound as exc:
                raise Http404(exc.message) from exc
            except NotPermitted as exc:
                raise PermissionDenied(exc.message) from exc
            except ApplicationError as exc:
                messages.error(request, exc.message)
                return redirect(_back(request))

        return wrapped

    return decorator
