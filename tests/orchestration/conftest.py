"""Orchestration fixtures: a funded organization with an API key, providers on the sandbox, and
helpers to call the API over real HTTP (the ``live_gateway`` uvicorn server)."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from io import StringIO
from typing import Any

import httpx
import pytest
from django.core.management import call_command

from apps.accounts import services as account_services
from apps.gateway.sandbox import SandboxServer
from apps.wallet import services as wallet_services
from apps.wallet.models import Wallet
from tests.conftest import Personas
from tests.gateway.conftest import (  # noqa: F401 - fixtures shared with the gateway tests
    FaultControl,
    LiveGateway,
    _close_clients,
    anyio_backend,
    faults,
    live_gateway,
    sandbox,
)

FUNDS = 1_000_000
MODELS = ["gpt-4o-mini", "claude-haiku-4.5", "mistral-small"]


@pytest.fixture(autouse=True)
def _providers_on_sandbox(settings: Any, sandbox: SandboxServer) -> SandboxServer:  # noqa: F811
    settings.PROVIDER_SANDBOX = True
    settings.PROVIDER_SANDBOX_URL = sandbox.base_url
    return sandbox


@pytest.fixture
def secret(personas: Personas) -> str:
    fund(personas)
    return account_services.api_key_create(
        org=personas.org, name="orchestration", created_by=personas.owner
    ).secret


@pytest.fixture
def outsider_secret(personas: Personas) -> str:
    fund(personas, org=personas.other_org)
    return account_services.api_key_create(
        org=personas.other_org, name="globex", created_by=personas.outsider
    ).secret


def fund(personas: Personas, micros: int = FUNDS, org: Any = None) -> None:
    wallet = wallet_services.wallet_for_org(org=org or personas.org)
    wallet_services.wallet_grant(wallet=wallet, amount_micros=micros, note="orchestration tests")


def wallet_of(personas: Personas, org: Any = None) -> Wallet:
    return Wallet.objects.get(organization=org or personas.org)


def audit_ok() -> None:
    call_command("wallet_audit", stdout=StringIO(), stderr=StringIO())


def reply_marker(text: str) -> str:
    """The sandbox's scripted-reply marker: the model answers exactly ``text``."""
    return f"[[sandbox:reply:{base64.urlsafe_b64encode(text.encode()).decode()}]]"


def post(gateway: LiveGateway, path: str, secret: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(
        f"{gateway.url}/api/v1/{path}",
        headers={"Authorization": f"Bearer {secret}"},
        json=body,
        timeout=20,
    )


def sse_events(response: httpx.Response) -> Iterator[tuple[str, dict[str, Any]]]:
    name = ""
    for line in response.iter_lines():
        if line.startswith("event: "):
            name = line.removeprefix("event: ")
        elif line.startswith("data: "):
            yield name, json.loads(line.removeprefix("data: "))


def wait_for(predicate: Any, timeout: float = 10) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("condition not met in time")


def messages(text: str = "Name three uses of copper.") -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]
