"""The dashboard playground (Chat / Compare / Blend / Judge) and one run's page.

The page itself carries no data for scripts: models are server-rendered form controls, and
``static/js/playground.js`` talks to ``WS /ws/v1/orchestrate`` with the dashboard session (no API
key copy-paste), billed to the current organization through its dashboard key.
"""

from __future__ import annotations

from django.conf import settings
from django.http import HttpResponse
from django.shortcuts import render

from apps.accounts.decorators import org_page
from apps.accounts.middleware import OrgRequest
from apps.gateway.selectors import catalog_list

from . import selectors
from .prompts import DEFAULT_CRITERIA

# Pre-ticked on the Compare tab: cheap models from three providers.
DEFAULT_COMPARE = ("gpt-4o-mini", "claude-haiku-4.5", "gemini-2.5-flash-lite")


@org_page()
def playground(request: OrgRequest) -> HttpResponse:
    models = list(catalog_list())
    return render(
        request,
        "orchestration/playground.html",
        {
            "nav": "playground",
            "models": models,
            "default_compare": DEFAULT_COMPARE,
            "default_synthesizer": settings.ORCHESTRATION_DEFAULT_SYNTHESIZER,
            "default_judge": settings.ORCHESTRATION_DEFAULT_JUDGE,
            "max_models": settings.ORCHESTRATION_MAX_MODELS,
            "criteria": DEFAULT_CRITERIA,
            "runs": selectors.runs_of(org=request.org),
        },
    )


@org_page()
def run_detail(request: OrgRequest, request_id: str) -> HttpResponse:
    run = selectors.run_of(org=request.org, request_id=request_id)
    return render(
        request,
        "orchestration/run_detail.html",
        {
            "nav": "playground",
            "run": run,
            "children": selectors.run_children(org=request.org, run=run),
        },
    )
