"""The dashboard's routing area: live provider health (the status table).

Health is about the providers, from every organization's traffic, so each member of any
organization sees the same table; no tenant's data is in it. The routing policy editor joins
this area as a section of its own. The response-cache settings of the organization are a form
on the same page (owners and admins change them; members see them).
"""

from __future__ import annotations

import logging

from django import forms
from django.conf import settings
from django.contrib import messages
from django.core.exceptions import PermissionDenied
from django.http import HttpResponse
from django.shortcuts import redirect, render

from apps.accounts.decorators import org_page
from apps.accounts.middleware import OrgRequest
from apps.accounts.models import Role

from .models import CACHE_FEE_MAX_MICROS, CACHE_TTL_MAX_SECONDS, OrgGatewaySettings
from .routing import health
from .services import org_gateway_settings_update

logger = logging.getLogger(__name__)

# The status table refreshes itself this often (htmx "every"), in seconds.
STATUS_REFRESH_SECONDS = 5


class ResponseCacheForm(forms.Form):
    cache_enabled = forms.BooleanField(label="Cache identical requests", required=False)
    cache_ttl_seconds = forms.IntegerField(
        label="Keep answers for (seconds)", min_value=1, max_value=CACHE_TTL_MAX_SECONDS
    )
    cache_fee_micros = forms.IntegerField(
        label="Fee per cache hit (micro-USD)",
        min_value=0,
        max_value=CACHE_FEE_MAX_MICROS,
        help_text="0: hits are free. 1,000,000 micro-USD = $1.",
    )


def _cache_form(request: OrgRequest) -> tuple[ResponseCacheForm, bool]:
    """The response-cache form, bound on POST; saved when valid (True: redirect)."""
    if request.method != "POST":
        current = OrgGatewaySettings.objects.filter(organization=request.org).first()
        row = current or OrgGatewaySettings()
        initial = {
            "cache_enabled": row.cache_enabled,
            "cache_ttl_seconds": row.cache_ttl_seconds,
            "cache_fee_micros": row.cache_fee_micros,
        }
        return ResponseCacheForm(initial=initial), False
    if not request.membership.has_role(Role.ADMIN):
        raise PermissionDenied("Only owners and admins change the response cache.")
    form = ResponseCacheForm(request.POST)
    if not form.is_valid():
        return form, False
    org_gateway_settings_update(org=request.org, actor=request.user, **form.cleaned_data)
    messages.success(request, "Response cache settings saved.")
    return form, True


@org_page()
def routing_status(request: OrgRequest) -> HttpResponse:
    cache_form, saved = _cache_form(request)
    if saved:
        return redirect("dashboard:routing")
    try:
        rows = health.catalog_health()
        unavailable = False
    except health.COUNTER_ERRORS:
        logger.exception("routing status: provider health unavailable")
        rows, unavailable = [], True
    context = {
        "nav": "routing",
        "rows": rows,
        "unavailable": unavailable,
        "window_seconds": settings.GATEWAY_MESH_WINDOW_SECONDS,
        "refresh_seconds": STATUS_REFRESH_SECONDS,
        "open_count": sum(1 for row in rows if row.state != health.BreakerState.CLOSED),
        "cache_form": cache_form,
        "can_change": request.membership.has_role(Role.ADMIN),
    }
    partial = request.headers.get("HX-Request") and request.GET.get("part") == "health"
    template = "gateway/_provider_health.html" if partial else "gateway/routing.html"
    return render(request, template, context, status=400 if cache_form.errors else 200)
