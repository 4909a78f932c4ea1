"""POST /v1/chat/completions and GET /v1/models through HTTP, billed from the wallet.

Our views run in-process; every provider call goes over real HTTP to the sandbox upstream.
"""

from __future__ import annotations

from io import StringIO
from typing import Any

import pytest
from django.core.management import call_command
from django.db import connection
from django.test import Client

from apps.accounts import services as account_services
from apps.gateway.models import CatalogModel, RequestLog
from apps.gateway.pricing import cost_micros
from apps.gateway.providers.base import Usage
from apps.gateway.sandbox import SandboxServer
from apps.wallet import services as wallet_services
from apps.wallet.models import LedgerEntry, Reservation, Wallet
from tests.conftest import Personas

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("catalog")]

URL = "/v1/chat/completions"
MODEL = "gpt-4o-mini"


@pytest.fixture(autouse=True)
def _providers_on_sandbox(settings: Any, sandbox: SandboxServer) -> SandboxServer:
    settings.PROVIDER_SANDBOX = True
    settings.PROVIDER_SANDBOX_URL = sandbox.base_url
    return sandbox


def _key(personas: Personas, **kwargs: Any) -> str:
    return account_services.api_key_create(
        org=personas.org, name="k", created_by=personas.owner, **kwargs
    ).secret


def _fund(personas: Personas, micros: int) -> Wallet:
    wallet = wallet_services.wallet_for_org(org=personas.org)
    wallet_services.wallet_grant(wallet=wallet, amount_micros=micros, note="test funds")
    wallet.refresh_from_db()
    return wallet


def _post(secret: str, body: Any, **extra: Any):
    return Client().post(
        URL,
        body,
        content_type="application/json",
        HTTP_AUTHORIZATION=f"Bearer {secret}",
        **extra,
    )


def _chat(content: str = "What is the capital of France?", **fields: Any) -> dict[str, Any]:
    return {"model": MODEL, "messages": [{"role": "user", "content": content}], **fields}


def _audit_ok() -> None:
    call_command("wallet_audit", stdout=StringIO(), stderr=StringIO())


def test_completion_is_answered_billed_and_logged(personas: Personas) -> None:
    wallet = _fund(personas, 1_000_000)
    response = _post(_key(personas), _chat(max_tokens=50))
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["object"] == "chat.completion"
    assert body["model"] == MODEL
    assert body["choices"][0]["message"]["content"]
    usage = body["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0

    model = CatalogModel.objects.get(pk=MODEL)
    expected = cost_micros(
        model=model, usage=Usage(usage["prompt_tokens"], usage["completion_tokens"])
    )
    assert expected > 0
    assert body["llmwise"]["cost_micros"] == expected
    assert response["x-llmwise-cost-micros"] == str(expected)
    assert response["x-llmwise-model"] == MODEL
    assert int(response["x-llmwise-overhead-ms"]) >= 0

    wallet.refresh_from_db()
    assert wallet.balance_micros == 1_000_000 - expected
    assert wallet.reserved_micros == 0
    charge = LedgerEntry.objects.get(wallet=wallet, kind=LedgerEntry.Kind.CHARGE)
    assert charge.amount_micros == -expected
    assert charge.request_id == response["x-request-id"]

    log = RequestLog.objects.get(request_id=response["x-request-id"])
    assert (log.status, log.http_status, log.cost_micros) == ("ok", 200, expected)
    assert log.organization == personas.org
    assert log.prompt == [{"role": "user", "content": "What is the capital of France?"}]
    assert log.completion == body["choices"][0]["message"]["content"]
    _audit_ok()


def test_alias_resolves_to_the_catalog_model(personas: Personas) -> None:
    _fund(personas, 1_000_000)
    response = _post(_key(personas), {**_chat(), "model": "claude-haiku-4-5"})
    assert response.status_code == 200, response.content
    assert response.json()["model"] == "claude-haiku-4.5"


def test_no_credit_is_402_and_nothing_goes_upstream(
    personas: Personas, sandbox: SandboxServer
) -> None:
    _fund(personas, 1)  # one micro-dollar cannot cover any hold
    before = sandbox.app.chat_calls
    response = _post(_key(personas), _chat())
    assert response.status_code == 402
    assert response.json()["error"]["type"] == "insufficient_credit"
    assert sandbox.app.chat_calls == before
    assert not Reservation.objects.exists()
    assert not RequestLog.objects.exists()


def test_upstream_error_is_translated_and_the_hold_released(personas: Personas) -> None:
    wallet = _fund(personas, 1_000_000)
    response = _post(_key(personas), _chat("hello [[sandbox:http_429]]"))
    assert response.status_code == 429
    error = response.json()["error"]
    assert error["provider"] == "openai"
    assert error["request_id"] == response["x-request-id"]
    assert int(response["Retry-After"]) >= 1
    wallet.refresh_from_db()
    assert (wallet.balance_micros, wallet.reserved_micros) == (1_000_000, 0)
    assert Reservation.objects.get().status == Reservation.Status.RELEASED
    log = RequestLog.objects.get()
    assert (log.status, log.http_status, log.cost_micros) == ("error", 429, 0)
    _audit_ok()


def test_zero_retention_stores_no_text(personas: Personas) -> None:
    personas.org.zero_retention = True
    personas.org.save()
    _fund(personas, 1_000_000)
    secret_prompt = "zr-canary-4f1b9 tell me a secret"
    response = _post(_key(personas), _chat(secret_prompt))
    assert response.status_code == 200
    log = RequestLog.objects.get()
    assert log.prompt is None
    assert log.completion == ""
    assert log.prompt_tokens > 0
    # Not in any column of any table.
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names(cursor):
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")  # noqa: S608
            for row in cursor.fetchall():
                assert "zr-canary-4f1b9" not in repr(row), table


@pytest.mark.parametrize(
    ("body", "status", "param"),
    [
        ("not json", 400, None),
        ([1, 2], 400, None),
        ({"messages": [{"role": "user", "content": "x"}]}, 400, "model"),
        ({"model": MODEL, "messages": []}, 400, "messages"),
        (
            {"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]},
            400,
            "messages.0.role",
        ),
        ({"model": MODEL, "messages": [{"role": "user", "content": 5}]}, 400, "messages.0.content"),
        ({**_chat(), "max_tokens": 0}, 400, "max_tokens"),
        ({**_chat(), "max_tokens": "ten"}, 400, "max_tokens"),
        ({**_chat(), "max_tokens": 10_000_000}, 400, "max_tokens"),
        ({**_chat(), "temperature": 3}, 400, "temperature"),
        ({**_chat(), "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
        ({**_chat(), "model": "no-such-model"}, 404, "model"),
    ],
)
def test_bad_input_is_refused_and_nothing_is_charged(
    personas: Personas, body: Any, status: int, param: str | None
) -> None:
    wallet = _fund(personas, 1_000_000)
    if isinstance(body, str):
        response = Client().post(
            URL,
            body,
            content_type="application/json",
            HTTP_AUTHORIZATION=f"Bearer {_key(personas)}",
        )
    else:
        response = _post(_key(personas), body)
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert error["param"] == param
    assert error["message"]
    wallet.refresh_from_db()
    assert (wallet.balance_micros, wallet.reserved_micros) == (1_000_000, 0)
    assert not Reservation.objects.exists()


def test_model_not_allowed_for_the_key(personas: Personas) -> None:
    _fund(personas, 1_000_000)
    response = _post(_key(personas, allowed_models=["gpt-4.1"]), _chat())
    assert response.status_code == 403
    assert response.json()["error"]["code"] == "model_not_allowed"


@pytest.mark.parametrize("header", ["", "Bearer ", "Bearer lw-garbage", "Basic abc"])
def test_bad_keys_are_401(personas: Personas, header: str) -> None:
    response = Client().post(
        URL, _chat(), content_type="application/json", HTTP_AUTHORIZATION=header
    )
    assert response.status_code == 401
    assert response.json()["error"]["type"] == "authentication_error"


def test_revoked_key_is_401(personas: Personas) -> None:
    issued = account_services.api_key_create(org=personas.org, name="k", created_by=personas.owner)
    account_services.api_key_revoke(org=personas.org, actor=None, key_id=issued.api_key.pk)
    assert _post(issued.secret, _chat()).status_code == 401


def test_other_tenant_is_billed_nothing(personas: Personas) -> None:
    ours = _fund(personas, 1_000_000)
    theirs = wallet_services.wallet_for_org(org=personas.other_org)
    wallet_services.wallet_grant(wallet=theirs, amount_micros=1_000_000, note="t")
    their_key = account_services.api_key_create(
        org=personas.other_org, name="k", created_by=personas.outsider
    ).secret
    response = _post(their_key, _chat())
    assert response.status_code == 200
    ours.refresh_from_db()
    theirs.refresh_from_db()
    assert ours.balance_micros == 1_000_000
    assert theirs.balance_micros < 1_000_000
    assert RequestLog.objects.get().organization == personas.other_org


def test_models_lists_the_catalog_for_the_key(personas: Personas) -> None:
    client = Client()
    response = client.get("/v1/models", HTTP_AUTHORIZATION=f"Bearer {_key(personas)}")
    assert response.status_code == 200
    ids = {m["id"] for m in response.json()["data"]}
    assert {"gpt-4o-mini", "claude-sonnet-4.5"} <= ids
    limited = client.get(
        "/v1/models",
        HTTP_AUTHORIZATION=f"Bearer {_key(personas, allowed_models=['gpt-4.1'])}",
    )
    assert [m["id"] for m in limited.json()["data"]] == ["gpt-4.1"]
    assert client.get("/v1/models").status_code == 401


def test_upstream_garbage_is_a_502_and_nothing_is_charged(personas: Personas) -> None:
    wallet = _fund(personas, 1_000_000)
    response = _post(_key(personas), _chat("hi [[sandbox:invalid_json]]"))
    assert response.status_code == 502
    assert response.json()["error"]["provider"] == "openai"
    wallet.refresh_from_db()
    assert (wallet.balance_micros, wallet.reserved_micros) == (1_000_000, 0)
    assert Reservation.objects.get().status == Reservation.Status.RELEASED
    _audit_ok()


def test_unsupported_parameter_for_the_provider_is_refused_before_sending(
    personas: Personas, sandbox: SandboxServer
) -> None:
    wallet = _fund(personas, 1_000_000)
    before = sandbox.app.chat_calls
    response = _post(_key(personas), {**_chat(), "model": "claude-haiku-4.5", "temperature": 1.5})
    assert response.status_code == 400
    assert response.json()["error"]["param"] == "temperature"
    assert sandbox.app.chat_calls == before
    wallet.refresh_from_db()
    assert (wallet.balance_micros, wallet.reserved_micros) == (1_000_000, 0)


def test_oversized_body_is_413(personas: Personas, settings: Any) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 2_000
    _fund(personas, 1_000_000)
    response = _post(_key(personas), _chat("x" * 5_000))
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "request_too_large"
    assert not Reservation.objects.exists()


def test_a_reused_client_request_id_cannot_collide_in_billing(personas: Personas) -> None:
    _fund(personas, 1_000_000)
    secret = _key(personas)
    first = _post(secret, _chat(), HTTP_X_REQUEST_ID="same-client-id-123")
    second = _post(secret, _chat(), HTTP_X_REQUEST_ID="same-client-id-123")
    assert (first.status_code, second.status_code) == (200, 200)
    assert first["x-request-id"] != second["x-request-id"]
    assert RequestLog.objects.count() == 2
    _audit_ok()


def test_a_zero_retention_key_stores_no_text_in_a_retaining_org(personas: Personas) -> None:
    _fund(personas, 1_000_000)
    response = _post(_key(personas, zero_retention=True), _chat("zr-key-canary-77 hello"))
    assert response.status_code == 200
    log = RequestLog.objects.get()
    assert (log.prompt, log.completion) == (None, "")
    other = _post(_key(personas), _chat("kept text"))
    assert RequestLog.objects.get(request_id=other["x-request-id"]).prompt is not None
