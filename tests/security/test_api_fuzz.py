"""Property-based fuzzing of every public API operation in our OpenAPI schema (schemathesis).

The schema is our own ``/api/schema`` (generated DRF views plus the hand-written paths of
apps/gateway/openapi.py and apps/orchestration/openapi.py), loaded through the app itself. Cases —
valid ones and deliberately invalid ones — are sent in-process (schemathesis's WSGI mode over
Django's handler) with a funded organization's real API key, providers on the sandbox upstream over
real HTTP. The fuzz runs on committed data, as the server would: a streamed call settles after its
response and then closes its thread's database connection, which would end a test transaction.
For every response:

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
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.specs.openapi import checks as openapi_checks

from apps.accounts import services as account_services
from apps.gateway.sandbox import SandboxServer
from apps.wallet import services as wallet_services
from apps.wallet.models import LedgerEntry, Wallet
from llmwise.asgi import application
from tests.conftest import Personas
from tests.servers import close_shared_thread_connections

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("catalog")]

EXAMPLES_PER_OPERATION = int(os.environ.get("LLMWISE_FUZZ_EXAMPLES", "25"))
# Random model names are almost always unknown (404): half the cases get a real one instead, so
# the fuzz also reaches routing, the hold, the upstream call and settlement.
REAL_MODELS = (
    "gpt-4o-mini",
    "claude-haiku-4.5",
    "gemini-2.5-flash",
    "mistral-small-latest",
    "auto",
)
# Orchestration takes lists of concrete models (no "auto") and names a judge or synthesizer.
CATALOG_MODELS = tuple(m for m in REAL_MODELS if m != "auto")
MODEL_FIELDS = ("judge_model", "synthesizer")
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


def _with_real_models(body: Any, model: str | None) -> None:
    """Put real model ids where the generated body names models (unless ``model`` is None)."""
    if model is None or not isinstance(body, dict):
        return
    if "model" in body:
        body["model"] = model
    concrete = model if model in CATALOG_MODELS else CATALOG_MODELS[0]
    for field in MODEL_FIELDS:
        if field in body:
            body[field] = concrete
    models = body.get("models")
    if isinstance(models, list) and models:
        # Distinct, as many as were generated (the list's length is the interesting part).
        start = CATALOG_MODELS.index(concrete)
        rotated = CATALOG_MODELS[start:] + CATALOG_MODELS[:start]
        body["models"] = list(rotated[: len(models)])


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
    yield secret, wallet
    # Work the app left to asgiref's shared sync thread (after a response) opened a connection
    # there; close it, or PostgreSQL refuses to drop the test database.
    close_shared_thread_connections()


@pytest.mark.django_db(transaction=True)
def test_every_operation_survives_fuzzing(fuzz_env: tuple[str, Wallet]) -> None:
    secret, wallet = fuzz_env
    schema = schemathesis.openapi.from_asgi("/api/schema?format=json", application)
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
        "GET /api/v1/recommendations",
        "POST /api/v1/compare",
        "POST /api/v1/blend",
        "POST /api/v1/judge",
        "GET /api/v1/orchestrations/{request_id}",
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
            _with_real_models(case.body, model)
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


def test_every_api_endpoint_is_in_the_schema(db: None) -> None:
    """A new API endpoint that the schema does not describe (and so the fuzz above does not
    reach) fails here; async views need a hand-written entry (apps/*/openapi.py)."""
    import re

    from django.test import Client

    from tests.security.test_tenancy_sweep import all_routes

    documented = set(Client().get("/api/schema?format=json").json()["paths"])
    served = {
        "/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", route.route)
        for route in all_routes()
        if route.route.startswith(("api/v1/", "v1/"))
    }
    assert served - documented == set()


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
