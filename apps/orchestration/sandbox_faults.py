"""The playground's "Break provider" switch: the sandbox upstream's fault-control API.

Only in sandbox mode — every provider on the sandbox (``PROVIDER_SANDBOX``) or the embedded
default's keyless providers (``PROVIDER_SANDBOX_KEYLESS``) — and only for the providers that are
actually served by the sandbox right now (``provider_uses_sandbox``): a provider with a real
platform key is never "breakable", and outside sandbox mode there is nothing here at all
(the view answers 404). The sandbox is one process-wide fake upstream, so breaking a provider
breaks it for every organization using this server; that is what a demo or a test wants, and why
this never exists in production.

A broken provider answers every call with a 503 in its own wire format (a retryable failure):
the mesh fails over to the next model of the chain, and the provider's breaker counts it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

import httpx
from django.conf import settings

from apps.gateway.models import CatalogModel
from apps.gateway.providers.registry import provider_uses_sandbox
from apps.gateway.sandbox.faults import Fault
from llmwise.errors import ApplicationError, NotFound

# Retryable (5xx): the chain moves on and health records a provider failure.
BREAK_FAULT: Final = Fault.HTTP_503
# The sandbox is on loopback; anything slower than this means it is not running.
CONTROL_TIMEOUT_SECONDS: Final = 2.0
FAULTS_PATH: Final = "/_control/faults"


class SandboxUnreachable(ApplicationError):
    status_code: int = 502
    error_type = "upstream_error"
    code = "sandbox_unreachable"


@dataclass(frozen=True)
class SandboxProvider:
    provider: str
    broken: bool


def sandbox_providers() -> list[str]:
    """The catalog's providers served by the sandbox; empty outside sandbox mode."""
    if not settings.PROVIDER_SANDBOX_URL:
        return []
    providers = (
        CatalogModel.objects.filter(enabled=True)
        .order_by("provider")
        .values_list("provider", flat=True)
        .distinct()
    )
    return [provider for provider in providers if provider_uses_sandbox(provider)]


def _control_url() -> str:
    return str(settings.PROVIDER_SANDBOX_URL).rstrip("/") + FAULTS_PATH


def _broken(rules: object) -> set[str]:
    """Providers with a provider-wide rule that makes calls fail (latency-only rules do not)."""
    if not isinstance(rules, list):
        return set()
    return {
        str(rule["provider"])
        for rule in rules
        if isinstance(rule, dict) and rule.get("model") is None and rule.get("fault") != Fault.NONE
    }


def _states(providers: list[str], broken: set[str]) -> list[SandboxProvider]:
    return [SandboxProvider(provider=p, broken=p in broken) for p in providers]


def sandbox_provider_states() -> list[SandboxProvider]:
    """Each sandbox provider and whether it is broken (for the page; an unreachable sandbox
    shows every provider as working rather than failing the page)."""
    providers = sandbox_providers()
    if not providers:
        return []
    try:
        response = httpx.get(_control_url(), timeout=CONTROL_TIMEOUT_SECONDS)
        response.raise_for_status()
        broken = _broken(response.json().get("faults"))
    except (httpx.HTTPError, ValueError):
        broken = set()
    return _states(providers, broken)


def _require_sandboxed(provider: str) -> list[str]:
    providers = sandbox_providers()
    if provider not in providers:
        raise NotFound(f"{provider!r} is not a sandbox provider.", code="not_found")
    return providers


def _control(
    method: str, *, json: dict[str, str] | None = None, params: dict[str, str] | None = None
) -> set[str]:
    """One control call, then the providers left broken."""
    try:
        response = httpx.request(
            method, _control_url(), json=json, params=params, timeout=CONTROL_TIMEOUT_SECONDS
        )
        response.raise_for_status()
        if method == "DELETE":  # answers {"cleared": n}: read the rules that are left
            response = httpx.get(_control_url(), timeout=CONTROL_TIMEOUT_SECONDS)
            response.raise_for_status()
        return _broken(response.json().get("faults"))
    except (httpx.HTTPError, ValueError) as exc:
        raise SandboxUnreachable("The sandbox provider server did not answer.") from exc


def sandbox_provider_break(*, provider: str) -> list[SandboxProvider]:
    """Make every call to ``provider`` fail (503) until it is restored."""
    providers = _require_sandboxed(provider)
    broken = _control("POST", json={"provider": provider, "fault": BREAK_FAULT.value})
    return _states(providers, broken)


def sandbox_provider_restore(*, provider: str) -> list[SandboxProvider]:
    """Clear every fault rule of ``provider``."""
    providers = _require_sandboxed(provider)
    broken = _control("DELETE", params={"provider": provider})
    return _states(providers, broken)
