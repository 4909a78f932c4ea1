"""Property-based fuzzing of every public API operation in our OpenAPI schema (schemathesis).

The schema is our own ``/api/schema`` (generated DRF views plus the hand-written gateway paths of
apps/gateway/openapi.py), loaded through the app itself. Cases — valid ones and deliberately
invalid ones — are sent in-process (schemathesis's WSGI mode over Django's handler, so the test's
database transaction is the app's) with a funded organization's real API key, providers on the
sandbox upstream over real HTTP. For every response:

* no 5xx that is not an honest upstream error in our envelope (the sandbox never fails unless a
  prompt asks it to, which generated text can: ``[[sandbox:...]]`` markers are not generated);
* every error is in our envelope (Anthropic's on ``/v1/messages``);
* the response conforms to the schema (status code documented, content type, body);
* a rejected request (4xx) charged nothing: wallet balance, holds and ledger unchanged.

The number of examples is bounded (``EXAMPLES_PER_OPERATION``) so the whole run stays well under a
minute on a small CI machine; raise it locally with ``LLMWISE_FUZZ_EXAMPLES``.
"""

from __future__ import annotations

import json
import os
from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from django.core import signals
from django.core.handlers.wsgi import WSGIHandler
from django.db import close_old_connections
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.specs.openapi import checks as openapi_checks

from apps.accounts import services as account_services
from apps.gateway.sandbox import SandboxServer
from apps.wallet import services as wallet_services
from apps.wallet.models import LedgerEntry, Wallet
from tests.conftest import Personas

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("catalog")]

EXAMPLES_PER_OPERATION = int(os.environ.get("LLMWISE_FUZZ_EXAMPLES", "25"))
# Random model names are almost always unknown (404): half the cases get a real one instead, so
# the fuzz also reaches routing, the hold, the upstream call and settlement.
REAL_MODELS = (
    "gpt-4o-mini",
    "claude-haiku-4.5",
    "gemini-2.0-flash",
    "mistral-small-latest",
    "auto",
)
FUNDS_MICROS = 50_000_000
ANTHROPIC_PATH = "/v1/messages"
# Documented responses are checked against the schema; these checks are schemathesis's own.
CHECKS = [
    openapi_checks.status_code_conformance,
    openapi_checks.content_type_conformance,
    openapi_checks.response_schema_conformance,
]


def _wallet_state(wallet: Wallet) -> tuple[int, int, int]:
    wallet.refresh_from_db()
    return (
        wallet.balance_micros,
        wallet.reserved_micros,
        LedgerEntry.objects.filter(wallet=wallet).count(),
    )


def _assert_error_envelope(path: str, status: int, body: Any) -> None:
    assert isinstance(body, dict), (path, status, body)
    if path == ANTHROPIC_PATH:
        assert body.get("type") == "error", (path, status, body)
        assert set(body["error"]) >= {"type", "message"}, (path, status, body)
        return
    error = body.get("error")
    assert isinstance(error, dict), (path, status, body)
    assert set(error) >= {"message", "type", "code", "param", "request_id"}, (path, status, body)
    assert error["message"], (path, status, body)


def _json(response: Any) -> Any:
    try:
        return json.loads(response.text)
    except ValueError:
        return None


@pytest.fixture
def fuzz_env(
    personas: Personas, sandbox: SandboxServer, settings: Any
) -> Iterator[tuple[str, Wallet]]:
    settings.PROVIDER_SANDBOX = True
    settings.PROVIDER_SANDBOX_URL = sandbox.base_url
    # Brute-force limits are tested on their own (test_rate_limits.py); here wrong keys must keep
    # reaching the endpoints' own validation.
    settings.API_KEY_AUTH_FAILURES_PER_IP = 0
    wallet = wallet_services.wallet_for_org(org=personas.org)
    wallet_services.wallet_grant(wallet=wallet, amount_micros=FUNDS_MICROS, note="fuzz funds")
    secret = account_services.api_key_create(
        org=personas.org, name="fuzz", created_by=personas.owner
    ).secret
    # Like Django's test client: a request must not close the test's database connection (the
    # handler's request_started/finished would, in the middle of the test's transaction).
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    yield secret, wallet
    signals.request_started.connect(close_old_connections)
    signals.request_finished.connect(close_old_connections)


def test_every_operation_survives_fuzzing(fuzz_env: tuple[str, Wallet]) -> None:
    secret, wallet = fuzz_env
    app = WSGIHandler()
    schema = schemathesis.openapi.from_wsgi("/api/schema?format=json", app)
    operations = [result.ok() for result in schema.get_all_operations()]
    labels = {op.label for op in operations}
    # The endpoints the issue names must be in the schema (and so in this fuzz).
    for expected in (
        "POST /api/v1/chat",
        "POST /v1/chat/completions",
        "POST /v1/messages",
        "GET /v1/models",
        "GET /api/v1/wallet",
        "GET /api/v1/requests",
        "GET /api/v1/requests/{request_id}",
        "GET /api/v1/health/providers",
        "POST /api/v1/routing/dry-run",
    ):
        assert expected in labels, sorted(labels)

    statuses: Counter[tuple[str, int]] = Counter()
    auth = {"Authorization": f"Bearer {secret}", "x-api-key": secret}
    for operation in operations:
        strategy = st.one_of(
            operation.as_strategy(GenerationMode.POSITIVE),
            operation.as_strategy(GenerationMode.NEGATIVE),
        )

        @given(case=strategy, model=st.sampled_from((None, *REAL_MODELS)))
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            derandomize=True,
            suppress_health_check=list(HealthCheck),
        )
        def run(case: schemathesis.Case, model: str | None) -> None:
            if model is not None and isinstance(case.body, dict) and "model" in case.body:
                case.body["model"] = model
            before = _wallet_state(wallet)
            response = case.call(headers=auth)
            status = response.status_code
            statuses[(case.operation.label, status)] += 1
            path = case.operation.path
            body = _json(response)
            assert status < 500 or status in (502, 503, 504), (
                f"{case.as_curl_command()} → {status} {response.text[:500]}"
            )
            if status >= 400:
                _assert_error_envelope(path, status, body)
            after = _wallet_state(wallet)
            assert after[1] == 0, f"a hold was left behind: {case.as_curl_command()}"
            if 400 <= status < 500:
                assert after == before, f"a rejected request moved money: {case.as_curl_command()}"
            case.validate_response(response, checks=CHECKS)

        run()

    print("fuzz statuses:", dict(sorted(statuses.items())))
    assert sum(statuses.values()) >= len(operations)
    # The fuzz reached past validation: some calls succeeded, some were rejected.
    assert any(200 <= status < 300 for _label, status in statuses)
    assert any(400 <= status < 500 for _label, status in statuses)


# API endpoints missing from /api/schema, and so from the fuzz above. Owned by the orchestration
# work in progress (apps/orchestration/apis.py are async views, so they need hand-written entries
# like apps/gateway/openapi.py's). Shrink this set as they are documented; the test fails both
# when a new undocumented endpoint appears and when one listed here gets documented.
KNOWN_UNDOCUMENTED = {
    "/api/v1/compare",
    "/api/v1/blend",
    "/api/v1/judge",
    "/api/v1/orchestrations/{request_id}",
}


def test_every_api_endpoint_is_in_the_schema(db: None) -> None:
    import re

    from django.test import Client

    from tests.security.test_tenancy_sweep import all_routes

    documented = set(Client().get("/api/schema?format=json").json()["paths"])
    served = {
        "/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", route.route)
        for route in all_routes()
        if route.route.startswith(("api/v1/", "v1/"))
    }
    assert served - documented == KNOWN_UNDOCUMENTED


@pytest.mark.parametrize(
    ("path", "body"),
    [
        (
            "/v1/chat/completions",
            {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "a\x00b"}]},
        ),
        (
            "/v1/messages",
            {
                "model": "claude-haiku-4.5",
                "max_tokens": 20,
                "messages": [{"role": "user", "content": "a\x00b"}],
            },
        ),
        (
            "/api/v1/chat",
            {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "a\x00b"}]},
        ),
    ],
)
def test_a_nul_character_in_a_prompt_is_refused_cleanly(
    fuzz_env: tuple[str, Wallet], path: str, body: dict[str, Any]
) -> None:
    """Refused with a 400 before anything is held or sent (PostgreSQL cannot store NUL)."""
    from django.test import Client

    secret, wallet = fuzz_env
    before = _wallet_state(wallet)
    response = Client().post(
        path, body, content_type="application/json", HTTP_AUTHORIZATION=f"Bearer {secret}"
    )
    assert response.status_code == 400, response.content
    assert _wallet_state(wallet) == before
