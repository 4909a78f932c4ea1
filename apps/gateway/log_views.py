"""The dashboard's "Usage & logs" pages: the request log, one request, and its CSV export.

Every member of the organization sees its log (the texts included, unless they were never stored
under zero retention); another organization's request is simply not found (404).
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any, cast

from django import forms
from django.http import HttpResponse
from django.shortcuts import redirect, render
from django.urls import reverse

from apps.accounts.decorators import org_page
from apps.accounts.middleware import OrgRequest
from apps.accounts.models import Organization
from apps.accounts.selectors import api_keys_of
from llmwise.csv_export import csv_streaming_response

from . import selectors
from .exports import request_log_csv_rows
from .models import RequestLog, Tier

LOG_PAGE_SIZE = 50
# The polled refresh of the newest rows; seconds, as htmx's "every" trigger wants them.
LIVE_REFRESH_SECONDS = 5
FIRST_CALL_MODEL = "gpt-4o-mini"
YES, NO = "yes", "no"


class RequestLogFilterForm(forms.Form):
    """The log's filters as a GET form; choices come from the org's keys and the catalog."""

    model = forms.ChoiceField(required=False, label="Model")
    api_key = forms.ChoiceField(required=False, label="API key")
    status = forms.ChoiceField(
        required=False, label="Status", choices=[("", "Any status"), *RequestLog.Status.choices]
    )
    byok = forms.ChoiceField(
        required=False,
        label="Billing",
        choices=[("", "Any"), (NO, "Wallet"), (YES, "BYOK (own provider key)")],
    )
    date_from = forms.DateField(
        required=False, label="From", widget=forms.DateInput(attrs={"type": "date"})
    )
    date_to = forms.DateField(
        required=False, label="To", widget=forms.DateInput(attrs={"type": "date"})
    )

    def __init__(self, *args: Any, org: Organization, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        model = self.fields["model"]
        api_key = self.fields["api_key"]
        assert isinstance(model, forms.ChoiceField)  # noqa: S101 - declared above
        assert isinstance(api_key, forms.ChoiceField)  # noqa: S101 - declared above
        # Disabled models stay filterable: old rows still name them.
        model.choices = [
            ("", "Any model"),
            *((m.id, m.id) for m in selectors.catalog_list(include_disabled=True)),
        ]
        api_key.choices = [
            ("", "Any key"),
            # The playground's internal key too: its calls are in the log.
            *(
                (k.prefix, f"{k.name} ({k.prefix}…)")
                for k in api_keys_of(org=org, include_internal=True)
            ),
        ]

    def clean(self) -> dict[str, Any]:
        data = super().clean() or {}
        start: dt.date | None = data.get("date_from")
        end: dt.date | None = data.get("date_to")
        if start and end and start > end:
            self.add_error("date_to", "The end date is before the start date.")
        return data

    def filters(self) -> selectors.RequestLogFilters:
        """The selector's filters; call only after ``is_valid()`` said yes."""
        data = self.cleaned_data
        byok = data.get("byok")
        return selectors.RequestLogFilters(
            model=data.get("model") or None,
            api_key_prefix=data.get("api_key") or None,
            status=data.get("status") or None,
            byok={YES: True, NO: False}.get(byok) if byok else None,
            date_from=data.get("date_from"),
            date_to=data.get("date_to"),
        )


def _filter_query(request: OrgRequest) -> str:
    """The current filters as a query string, without the page cursor."""
    query = request.GET.copy()
    query.pop("before", None)
    return query.urlencode()


def _first_call_example(request: OrgRequest) -> str:
    model = selectors.catalog_list().filter(tier=Tier.BUDGET).first()
    url = request.build_absolute_uri("/v1/chat/completions")
    body = json.dumps(
        {
            "model": model.id if model else FIRST_CALL_MODEL,
            "messages": [{"role": "user", "content": "Hello!"}],
        }
    )
    return (
        f"curl {url} \\\n"
        '  -H "Authorization: Bearer $LLMWISE_API_KEY" \\\n'
        '  -H "Content-Type: application/json" \\\n'
        f"  -d '{body}'"
    )


@org_page()
def request_list(request: OrgRequest) -> HttpResponse:
    form = RequestLogFilterForm(request.GET or None, org=request.org)
    valid = form.is_valid() if form.is_bound else True
    filters = form.filters() if form.is_bound and valid else selectors.RequestLogFilters()
    cursor = selectors.RequestLogCursor.decode(request.GET.get("before", ""))
    page = (
        selectors.request_log_page(
            org=request.org, filters=filters, limit=LOG_PAGE_SIZE, cursor=cursor
        )
        if valid
        else selectors.RequestLogPage(rows=[], next_cursor=None)
    )
    query = _filter_query(request)
    context: dict[str, Any] = {
        "nav": "usage",
        "form": form,
        "page": page,
        "query": query,
        "filtered": filters.active or not valid,
        "cursor": cursor,
        # Only the first page follows the newest rows: older pages are stable by design.
        "live": cursor is None and valid,
        "live_every": LIVE_REFRESH_SECONDS,
        "zero_retention": request.org.zero_retention,
    }
    if not page.rows and cursor is None and not context["filtered"]:
        context["first_call"] = _first_call_example(request)
    template = "gateway/_request_table.html" if request.headers.get("HX-Request") else None
    return render(
        request, template or "gateway/request_list.html", context, status=200 if valid else 400
    )


@org_page()
def request_detail(request: OrgRequest, request_id: str) -> HttpResponse:
    log = selectors.request_log_of(org=request.org, request_id=request_id)
    context = {
        "nav": "usage",
        "log": log,
        "zero_retention": log.prompt is None,
        "charged_micros": 0 if log.byok else log.cost_micros,
        "total_tokens": log.prompt_tokens + log.completion_tokens,
        "overhead_ms": max(log.latency_ms - log.upstream_ms, 0),
        "route_json": json.dumps(log.route, indent=2, sort_keys=True),
    }
    return render(request, "gateway/request_detail.html", context)


@org_page()
def request_csv(request: OrgRequest) -> HttpResponse:
    form = RequestLogFilterForm(request.GET or None, org=request.org)
    if form.is_bound and not form.is_valid():
        # The list page shows what is wrong with the filters.
        return redirect(f"{reverse('dashboard:usage')}?{request.GET.urlencode()}")
    filters = form.filters() if form.is_bound else selectors.RequestLogFilters()
    logs = selectors.request_logs_of(org=request.org, filters=filters)
    response = csv_streaming_response(
        rows=request_log_csv_rows(logs.iterator(chunk_size=500)),
        filename=f"requests-{request.org.slug}.csv",
    )
    # Streamed so a long log never sits in memory; org_page's type only knows HttpResponse.
    return cast(HttpResponse, response)
