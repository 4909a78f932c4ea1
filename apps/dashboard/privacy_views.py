"""Dashboard pages for an organization's data export and for deleting one's account.

Thin: parse, call :mod:`apps.dashboard.privacy_services`, render. The rules are in
``docs/privacy.md``.
"""

from __future__ import annotations

from typing import cast

from allauth.core import ratelimit
from django import forms
from django.contrib.auth import logout
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.http import Http404, HttpResponse
from django.shortcuts import render
from django.utils import timezone
from django.views.decorators.http import require_POST

from apps.accounts import erasure
from apps.accounts.middleware import AuthedRequest
from apps.wallet import selectors as wallet_selectors
from llmwise.csv_export import StreamingDownload
from llmwise.errors import ApplicationError, NotFound, NotPermitted

from . import exports, privacy_services

# allauth's limit for password re-confirmation (ACCOUNT_RATE_LIMITS["reauthenticate"]).
REAUTHENTICATE_ACTION = "reauthenticate"


@require_POST
@login_required
def org_export(request: AuthedRequest) -> HttpResponse:
    """The organization named by the form (one of the user's own), as a streamed ZIP."""
    try:
        org = privacy_services.organization_export_start(
            user=request.user, org_id=request.POST.get("org")
        )
    except NotFound as exc:
        raise Http404(exc.message) from exc
    except NotPermitted as exc:
        raise PermissionDenied(exc.message) from exc
    now = timezone.now()
    response = StreamingDownload(
        exports.organization_export_stream(org=org, generated_at=now),
        content_type="application/zip",
    )
    filename = exports.export_filename(org=org, generated_at=now)
    response["Content-Disposition"] = f'attachment; filename="{filename}"'
    response["Cache-Control"] = "private, no-store"
    # Streamed so a long log never sits in memory; the decorators' types only know HttpResponse.
    return cast(HttpResponse, response)


class AccountDeleteForm(forms.Form):
    password = forms.CharField(
        label="Your password",
        strip=False,
        widget=forms.PasswordInput(attrs={"autocomplete": "current-password"}),
    )
    confirm = forms.BooleanField(
        label="I understand that this deletes my account for good and cannot be undone.",
        error_messages={"required": "Tick the box to confirm."},
    )


@login_required
def account_delete(request: AuthedRequest) -> HttpResponse:
    form = AccountDeleteForm(request.POST or None)
    status = 200
    if request.method == "POST":
        status = 400
        if not form.is_valid():
            pass
        elif not ratelimit.consume(request, action=REAUTHENTICATE_ACTION, user=request.user):
            form.add_error(None, "Too many attempts. Wait a minute, then try again.")
            status = 429
        else:
            try:
                deletion = privacy_services.account_delete(
                    user=request.user, password=form.cleaned_data["password"]
                )
            except ApplicationError as exc:
                form.add_error("password" if exc.param == "password" else None, exc.message)
            else:
                logout(request)
                return render(
                    request,
                    "dashboard/account_deleted.html",
                    {"closed": len(deletion.closed_org_ids)},
                )
    plan = erasure.account_deletion_plan(user=request.user)
    closing = [(org, wallet_selectors.wallet_summary(org=org)) for org in plan.close]
    return render(
        request,
        "dashboard/account_delete.html",
        {"form": form, "plan": plan, "closing": closing, "nav": "settings"},
        status=status,
    )
