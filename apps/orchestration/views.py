"""The dashboard playground (Chat / Compare / Blend / Judge / Failover) and one run's page.

The page itself carries no data for scripts: models are server-rendered form controls, and
``static/js/playground.js`` talks to ``WS /ws/v1/orchestrate`` with the dashboard session (no API
key copy-paste), billed to the current organization through its dashboard key. The Failover tab
sends the socket's plain ``chat`` message with ``fallbacks`` (the native body), so it is billed
and logged exactly like an API call with a chain, and its ``done`` frame carries the route.

In sandbox mode only, admins get "Break provider" / "Restore" buttons, which post to
:func:`sandbox_provider` (CSRF-protected); outside sandbox mode that URL is a 404 for everyone.
"""

from __future__ import annotations

from dataclasses import asdict
from typing import Final

from django.conf import settings
from django.http import Http404, HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.http import require_POST

from apps.accounts.decorators import org_page
from apps.accounts.middleware import OrgRequest
from apps.accounts.models import Role
from apps.gateway.selectors import catalog_list
from llmwise.errors import ApplicationError, NotFound, application_error_response

from . import sandbox_faults, selectors
from .prompts import DEFAULT_CRITERIA

# Pre-ticked on the Compare tab: cheap models from three providers. The Failover tab's default
# chain is the same three, in this order (a primary and two fallbacks on other providers).
DEFAULT_COMPARE = ("gpt-4o-mini", "claude-haiku-4.5", "gemini-2.5-flash-lite")
TABS: Final = (
    ("chat", "Chat"),
    ("compare", "Compare"),
    ("blend", "Blend"),
    ("judge", "Judge"),
    ("failover", "Failover"),
)
MODES: Final = tuple(value for value, _label in TABS)
DEFAULT_MODE: Final = "compare"
FALLBACK_SLOTS: Final = 2  # the Failover tab's chain: a primary and up to this many fallbacks
SANDBOX_ACTIONS: Final = ("break", "restore")


@org_page()
def playground(request: OrgRequest) -> HttpResponse:
    if request.GET.get("part") == "runs":  # the Recent runs section, refreshed after a run
        return render(
            request, "orchestration/_recent_runs.html", {"runs": selectors.runs_of(org=request.org)}
        )
    models = list(catalog_list())
    # ?tab=failover opens that tab (links from docs and the routing page); anything else: default.
    mode = request.GET.get("tab", DEFAULT_MODE)
    chain = list(DEFAULT_COMPARE[: FALLBACK_SLOTS + 1])
    return render(
        request,
        "orchestration/playground.html",
        {
            "nav": "playground",
            "models": models,
            "tabs": TABS,
            "mode": mode if mode in MODES else DEFAULT_MODE,
            "default_compare": DEFAULT_COMPARE,
            "default_synthesizer": settings.ORCHESTRATION_DEFAULT_SYNTHESIZER,
            "default_judge": settings.ORCHESTRATION_DEFAULT_JUDGE,
            "max_models": settings.ORCHESTRATION_MAX_MODELS,
            "criteria": DEFAULT_CRITERIA,
            "failover_primary": chain[0],
            "failover_fallbacks": [
                (index + 1, chain[index + 1] if index + 1 < len(chain) else "")
                for index in range(FALLBACK_SLOTS)
            ],
            "sandbox_providers": sandbox_faults.sandbox_provider_states(),
            "can_break": request.membership.has_role(Role.ADMIN),
            "runs": selectors.runs_of(org=request.org),
        },
    )


@require_POST
@org_page(Role.ADMIN)
def _sandbox_provider(request: OrgRequest, provider: str) -> HttpResponse:
    action = request.POST.get("action", "")
    try:
        if action == "break":
            states = sandbox_faults.sandbox_provider_break(provider=provider)
        elif action == "restore":
            states = sandbox_faults.sandbox_provider_restore(provider=provider)
        else:
            raise ApplicationError(
                f"action must be one of {', '.join(SANDBOX_ACTIONS)}.", param="action"
            )
    except NotFound:
        raise
    except ApplicationError as exc:
        # A JSON envelope, not org_page's flash-and-redirect: the playground's script asks.
        return application_error_response(exc, request_id=request.request_id)  # type: ignore[attr-defined]
    return JsonResponse({"providers": [asdict(state) for state in states]})


def sandbox_provider(request: HttpRequest, provider: str) -> HttpResponse:
    """Break or restore one sandbox provider (admins and owners; POST ``action``).

    The sandbox-mode check comes before anything else (login, role, method), so outside sandbox
    mode nobody can even learn that this URL exists: it is a plain 404.
    """
    if not sandbox_faults.sandbox_providers():
        raise Http404("Not found.")
    return _sandbox_provider(request, provider)


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
