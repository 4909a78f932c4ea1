"""The dashboard's routing area: live provider health (the status table).

Health is about the providers, from every organization's traffic, so each member of any
organization sees the same table; no tenant's data is in it. The routing policy editor joins
this area as a section of its own.
"""

from __future__ import annotations

import logging

from django.conf import settings
from django.http import HttpResponse
from django.shortcuts import render

from apps.accounts.decorators import org_page
from apps.accounts.middleware import OrgRequest

from .routing import health

logger = logging.getLogger(__name__)

# The status table refreshes itself this often (htmx "every"), in seconds.
STATUS_REFRESH_SECONDS = 5


@org_page()
def routing_status(request: OrgRequest) -> HttpResponse:
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
    }
    partial = request.headers.get("HX-Request") and request.GET.get("part") == "health"
    template = "gateway/_provider_health.html" if partial else "gateway/routing.html"
    return render(request, template, context)
