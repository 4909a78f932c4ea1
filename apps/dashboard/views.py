"""Dashboard pages. Thin: parse the form, call a service or selector, render.

Every page works on ``request.org``, the current organization resolved from the user's own
memberships. Objects of other organizations are simply not found (404).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal

from django.contrib import messages
from django.contrib.auth.decorators import login_required
from django.core.exceptions import PermissionDenied
from django.db import transaction
from django.http import Http404, HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse
from django.views.decorators.http import require_POST

from apps.accounts import selectors, services
from apps.accounts.decorators import org_page
from apps.accounts.middleware import SESSION_KEY, AuthedRequest, OrgRequest
from apps.accounts.models import Role
from apps.gateway import analytics
from apps.gateway.byok import provider_keys_of
from apps.gateway.models import OrgGatewaySettings
from apps.gateway.rollups import rollups_last_run
from apps.gateway.services import org_default_chain_set
from apps.wallet import selectors as wallet_selectors
from apps.wallet import services as wallet_services
from apps.wallet.models import CreditPurchase
from llmwise.errors import ApplicationError, NotFound, NotPermitted

from .forms import (
    MICROS_PER_USD,
    ApiKeyCreateForm,
    InvitationForm,
    OrganizationForm,
    OrganizationSettingsForm,
)


@dataclass(frozen=True)
class ChecklistStep:
    label: str
    done: bool
    action: str = ""  # where to do it (a URL), while it is not done
    action_label: str = ""
    hint: str = ""


def _getting_started(request: OrgRequest) -> list[ChecklistStep]:
    """The first-login checklist: what a new organization does before its traffic flows."""
    org = request.org
    keys = selectors.api_keys_of(org=org)
    return [
        # Signing in needs a verified address (mandatory verification): done by being here.
        ChecklistStep("Verify your email address", True),
        ChecklistStep(
            "Buy credits",
            wallet_selectors.purchases_of(org=org)
            .filter(status=CreditPurchase.Status.PAID)
            .exists(),
            reverse("dashboard:billing"),
            "Buy credits",
            "your trial credit covers the first calls",
        ),
        ChecklistStep(
            "Create an API key",
            keys.exists(),
            reverse("dashboard:api_keys"),
            "Create an API key",
        ),
        ChecklistStep(
            "Make your first API call",
            keys.filter(last_used_at__isnull=False).exists(),
            hint="copy a snippet below",
        ),
    ]


@org_page()
def overview(request: OrgRequest) -> HttpResponse:
    org = request.org
    steps = _getting_started(request)
    # Unknown or mismatched values fall back to the defaults: a bad link never breaks the page.
    window = analytics.analytics_window(
        range_key=request.GET.get("range"), granularity=request.GET.get("granularity")
    )
    usage = analytics.usage_overview(org=org, window=window)
    return render(
        request,
        "dashboard/overview.html",
        {
            "checklist_steps": steps,
            # label → done, for whoever only needs to know what is left
            "checklist": [(step.label, step.done) for step in steps],
            "checklist_done": all(step.done for step in steps),
            "first_call_done": steps[-1].done,
            "base_url": request.build_absolute_uri("/").rstrip("/"),
            "invitations": selectors.invitations_addressed_to(user=request.user),
            "nav": "overview",
            "usage": usage,
            "burn": analytics.burn_rate(org=org),
            "ranges": _range_choices(),
            "chart_data": _overview_chart_data(usage),
            "rollups_updated_at": rollups_last_run(),
        },
    )


RANGE_LABELS = {"24h": "24 hours", "7d": "7 days", "30d": "30 days"}
GRANULARITY_LABELS = {analytics.HOUR: "hourly", analytics.DAY: "daily"}


def _range_choices() -> list[tuple[str, str, str]]:
    """(range, granularity, label) for each view the Overview offers, in display order."""
    choices = []
    for key, (_hours, allowed) in analytics.RANGES.items():
        for granularity in allowed:
            label = RANGE_LABELS.get(key, key)
            if len(allowed) > 1:
                label = f"{label} · {GRANULARITY_LABELS[granularity]}"
            choices.append((key, granularity, label))
    return choices


def _overview_chart_data(usage: analytics.UsageOverview) -> dict[str, object]:
    """The charts' data, rendered with ``json_script`` and drawn by static/js/overview.js.

    Money stays in integer micro-USD here; the script divides only to draw.
    """
    hourly = usage.window.granularity == analytics.HOUR
    label_format = "%m-%d %H:00" if hourly else "%Y-%m-%d"
    series = usage.series
    return {
        "labels": [point["bucket"].strftime(label_format) for point in series],
        "requests": [point["requests"] for point in series],
        "errors": [point["errors"] for point in series],
        "error_percent": [round(point["error_percent"], 2) for point in series],
        "charged_micros": [point["charged_micros"] for point in series],
        "cost_micros": [point["cost_micros"] for point in series],
        "prompt_tokens": [point["prompt_tokens"] for point in series],
        "completion_tokens": [point["completion_tokens"] for point in series],
        "p50_ms": [point["p50_ms"] for point in series],
        "p95_ms": [point["p95_ms"] for point in series],
        "models": {
            "labels": [row["model"] for row in usage.models],
            "requests": [row["requests"] for row in usage.models],
            "cost_micros": [row["cost_micros"] for row in usage.models],
            "error_percent": [round(row["error_percent"], 2) for row in usage.models],
            "p50_ms": [row["p50_ms"] for row in usage.models],
            "p95_ms": [row["p95_ms"] for row in usage.models],
        },
    }


@require_POST
@org_page()
def invitation_join(request: OrgRequest, invitation_id: int) -> HttpResponse:
    membership = services.invitation_accept_addressed(
        invitation_id=invitation_id, user=request.user
    )
    request.session[SESSION_KEY] = membership.organization_id
    messages.success(request, f"Welcome to {membership.organization.name}.")
    return redirect("dashboard:overview")


# --- API keys ---------------------------------------------------------------------------------
@org_page()
def api_keys(request: OrgRequest) -> HttpResponse:
    org = request.org
    form = ApiKeyCreateForm(request.POST or None)
    if request.method == "POST":
        if not request.membership.has_role(Role.ADMIN):
            raise PermissionDenied("Only admins and owners manage API keys.")
        if form.is_valid():
            try:
                issued = services.api_key_create(
                    org=org,
                    created_by=request.user,
                    **form.service_kwargs(),
                )
            except (NotFound, NotPermitted):
                raise
            except ApplicationError as exc:
                # Shown on the form it is about (e.g. a reserved name), which stays filled in.
                form.add_error(exc.param if exc.param in form.fields else None, exc.message)
            else:
                # Rendered directly, never stored or redirected with: this is the only time.
                return render(
                    request,
                    "dashboard/api_key_created.html",
                    {"api_key": issued.api_key, "secret": issued.secret, "nav": "keys"},
                )
    return render(
        request,
        "dashboard/api_keys.html",
        {"form": form, "keys": selectors.api_keys_of(org=org), "nav": "keys"},
        status=400 if form.is_bound and not form.is_valid() else 200,
    )


@require_POST
@org_page(Role.ADMIN)
def api_key_revoke(request: OrgRequest, key_id: int) -> HttpResponse:
    key = services.api_key_revoke(
        org=request.org,
        actor=request.user,
        key_id=key_id,
    )
    messages.success(request, f"Key “{key.name}” is revoked; it stops working immediately.")
    return redirect("dashboard:api_keys")


# --- team -------------------------------------------------------------------------------------
@org_page()
def team(request: OrgRequest) -> HttpResponse:
    org = request.org
    form = InvitationForm(request.POST or None)
    if request.method == "POST":
        if not request.membership.has_role(Role.ADMIN):
            raise PermissionDenied("Only admins and owners invite members.")
        if form.is_valid():
            services.invitation_create(
                org=org,
                actor=request.user,
                email=form.cleaned_data["email"],
                role=form.cleaned_data["role"],
            )
            messages.success(request, f"Invitation sent to {form.cleaned_data['email']}.")
            return redirect("dashboard:team")
    return render(
        request,
        "dashboard/team.html",
        {
            "form": form,
            "members": selectors.members_of(org=org),
            "invitations": selectors.pending_invitations(org=org),
            "nav": "team",
        },
        status=400 if form.is_bound and not form.is_valid() else 200,
    )


def _team_action(request: OrgRequest, action: Callable[[], object], done: str) -> HttpResponse:
    try:
        action()
    except (NotFound, NotPermitted):
        raise
    except ApplicationError as exc:
        messages.error(request, exc.message)
    else:
        messages.success(request, done)
    return redirect("dashboard:team")


@require_POST
@org_page(Role.ADMIN)
def invitation_revoke(request: OrgRequest, invitation_id: int) -> HttpResponse:
    return _team_action(
        request,
        lambda: services.invitation_revoke(
            org=request.org,
            actor=request.user,
            invitation_id=invitation_id,
        ),
        "Invitation withdrawn.",
    )


@require_POST
@org_page(Role.ADMIN)
def member_remove(request: OrgRequest, membership_id: int) -> HttpResponse:
    return _team_action(
        request,
        lambda: services.membership_remove(
            org=request.org,
            actor=request.user,
            membership_id=membership_id,
        ),
        "Member removed.",
    )


@require_POST
@org_page(Role.ADMIN)
def member_role(request: OrgRequest, membership_id: int) -> HttpResponse:
    return _team_action(
        request,
        lambda: services.membership_change_role(
            org=request.org,
            actor=request.user,
            membership_id=membership_id,
            role=request.POST.get("role", ""),
        ),
        "Role updated.",
    )


@require_POST
@org_page(Role.OWNER)
def transfer_ownership(request: OrgRequest, membership_id: int) -> HttpResponse:
    return _team_action(
        request,
        lambda: services.organization_transfer_ownership(
            org=request.org,
            actor=request.user,
            membership_id=membership_id,
        ),
        "Ownership transferred. You are now an admin.",
    )


@require_POST
@org_page()
def leave(request: OrgRequest) -> HttpResponse:
    org = request.org
    try:
        services.membership_leave(org=org, user=request.user)
    except ApplicationError as exc:
        messages.error(request, exc.message)
        return redirect("dashboard:team")
    request.session.pop(SESSION_KEY, None)
    messages.success(request, f"You left {org.name}.")
    return redirect("dashboard:overview")


# --- organizations ----------------------------------------------------------------------------
@require_POST
@login_required
def switch_org(request: AuthedRequest) -> HttpResponse:
    membership = selectors.membership_in(
        user=request.user,
        org_id=request.POST.get("org"),
    )
    if membership is None:
        raise Http404("Organization not found.")
    request.session[SESSION_KEY] = membership.organization_id
    return redirect("dashboard:overview")


@login_required
def org_create(request: AuthedRequest) -> HttpResponse:
    form = OrganizationForm(request.POST or None)
    if request.method == "POST" and form.is_valid():
        org = services.organization_create(
            name=form.cleaned_data["name"],
            owner=request.user,
        )
        request.session[SESSION_KEY] = org.pk
        messages.success(request, f"Created {org.name}. You are its owner.")
        return redirect("dashboard:overview")
    return render(
        request,
        "dashboard/org_create.html",
        {"form": form},
        status=400 if form.is_bound and not form.is_valid() else 200,
    )


@org_page()
def org_settings(request: OrgRequest) -> HttpResponse:
    org = request.org
    gateway_settings = OrgGatewaySettings.objects.filter(organization=org).first()
    chain = gateway_settings.default_chain if gateway_settings is not None else []
    threshold = wallet_selectors.wallet_summary(org=org).low_balance_threshold_micros
    initial = {
        "name": org.name,
        "zero_retention": org.zero_retention,
        "default_chain": ", ".join(chain),
        # Exact (no rounding): what is saved again unchanged must compare equal below.
        "low_balance_alert_usd": (
            Decimal(threshold) / MICROS_PER_USD if threshold is not None else None
        ),
    }
    form = OrganizationSettingsForm(request.POST or None, initial=initial)
    if request.method == "POST":
        if not request.membership.has_role(Role.ADMIN):
            raise PermissionDenied("Only admins and owners change settings.")
        if form.is_valid():
            with transaction.atomic():
                services.organization_update(
                    org=org,
                    actor=request.user,
                    name=form.cleaned_data["name"],
                    zero_retention=form.cleaned_data["zero_retention"],
                )
                org_default_chain_set(
                    org=org,
                    actor=request.user,
                    model_ids=form.cleaned_data["default_chain"].split(","),
                )
                alert = form.low_balance_alert_micros()
                if alert != threshold:  # unchanged: no audit entry, no re-arming
                    wallet_services.wallet_set_low_balance_alert(
                        org=org, actor=request.user, threshold_micros=alert
                    )
            messages.success(request, "Settings saved.")
            return redirect("dashboard:settings")
    return render(
        request,
        "dashboard/settings.html",
        {
            "form": form,
            "nav": "settings",
            "provider_keys": provider_keys_of(org=org),
        },
        status=400 if form.is_bound and not form.is_valid() else 200,
    )


@org_page(Role.ADMIN)
def audit_log(request: OrgRequest) -> HttpResponse:
    events = selectors.audit_events_of(org=request.org)[:200]
    return render(request, "dashboard/audit.html", {"events": events, "nav": "audit"})
