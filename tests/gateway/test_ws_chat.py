"""WS /ws/v1/chat through the whole ASGI application (Channels routing, origin check, session
auth) with Channels' WebsocketCommunicator; every provider call goes over real HTTP to the sandbox.
"""

from __future__ import annotations

from collections.abc import Callable
from io import StringIO
from typing import Any, TypeVar

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.conf import settings as django_settings
from django.core.management import call_command
from django.test import Client

from apps.accounts import services as account_services
from apps.accounts.middleware import SESSION_KEY
from apps.accounts.models import PLAYGROUND_KEY_NAME, ApiKey, Organization, User
from apps.gateway.models import RequestLog
from apps.gateway.principals import DASHBOARD_KEY_NAME
from apps.gateway.sandbox import SandboxServer
from apps.wallet import services as wallet_services
from apps.wallet.models import Reservation, Wallet
from tests.conftest import Personas, socket_to
from tests.gateway.conftest import FaultControl

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("catalog", "_close_clients", "_disconnect_sockets"),
]

PATH = "/ws/v1/chat"
BROWSER = [(b"origin", b"http://127.0.0.1:8000"), (b"host", b"127.0.0.1:8000")]
MODEL = "gpt-4o-mini"
FUNDS = 1_000_000
T = TypeVar("T")


@pytest.fixture(autouse=True)
def _providers_on_sandbox(settings: Any, sandbox: SandboxServer) -> SandboxServer:
    settings.PROVIDER_SANDBOX = True
    settings.PROVIDER_SANDBOX_URL = sandbox.base_url
    return sandbox


async def db(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return await sync_to_async(fn)(*args, **kwargs)


def _fund(org: Organization, micros: int = FUNDS) -> None:
    wallet = wallet_services.wallet_for_org(org=org)
    wallet_services.wallet_grant(wallet=wallet, amount_micros=micros, note="ws tests")


def _balance(org: Organization) -> int:
    return Wallet.objects.get(organization=org).balance_micros


def _audit_ok() -> None:
    call_command("wallet_audit", stdout=StringIO(), stderr=StringIO())


@pytest.fixture
def secret(personas: Personas) -> str:
    _fund(personas.org)
    return account_services.api_key_create(
        org=personas.org, name="ws", created_by=personas.owner
    ).secret


def _session_cookie(user: User, org: Organization | None = None) -> bytes:
    client = Client()
    client.force_login(user)
    if org is not None:
        session = client.session
        session[SESSION_KEY] = org.pk
        session.save()
    value = client.cookies[django_settings.SESSION_COOKIE_NAME].value
    return f"{django_settings.SESSION_COOKIE_NAME}={value}".encode()


async def _connect(cookie: bytes | None = None) -> WebsocketCommunicator:
    headers = BROWSER + ([(b"cookie", cookie)] if cookie else [])
    communicator = socket_to(PATH, headers)
    connected, _ = await communicator.connect()
    assert connected
    return communicator


async def _authed(secret: str) -> WebsocketCommunicator:
    communicator = await _connect()
    await communicator.send_json_to({"type": "auth", "api_key": secret})
    assert await communicator.receive_json_from(timeout=5) == {"type": "ready", "auth": "api_key"}
    return communicator


def _chat(chat_id: str = "c1", content: str = "Stream a short answer.", **fields: Any) -> Any:
    return {
        "type": "chat",
        "id": chat_id,
        "model": MODEL,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 40,
        **fields,
    }


async def _until_end(communicator: WebsocketCommunicator) -> list[dict[str, Any]]:
    """Messages up to and including the first done or error."""
    messages: list[dict[str, Any]] = []
    while not messages or messages[-1]["type"] not in ("done", "error"):
        messages.append(await communicator.receive_json_from(timeout=10))
    return messages


# --- happy paths ---------------------------------------------------------------------------
async def test_api_key_chat_streams_deltas_then_done_and_bills_it(
    secret: str, personas: Personas
) -> None:
    communicator = await _authed(secret)
    await communicator.send_json_to(_chat())
    messages = await _until_end(communicator)
    await communicator.disconnect()

    assert {m["type"] for m in messages[:-1]} == {"delta"}
    assert all(m["id"] == "c1" for m in messages)
    text = "".join(m["text"] for m in messages[:-1])
    assert text
    done = messages[-1]
    assert (done["type"], done["model"], done["finish_reason"]) == ("done", MODEL, "stop")
    assert done["usage"]["completion_tokens"] > 0
    assert done["route"]["chosen"] == MODEL
    log = await db(RequestLog.objects.get, request_id=done["request_id"])
    assert (log.endpoint, log.stream, log.completion) == ("ws.chat", True, text)
    assert done["cost"]["micros"] == log.cost_micros > 0
    assert await db(_balance, personas.org) == FUNDS - log.cost_micros
    await db(_audit_ok)


async def test_session_user_chats_billed_to_the_current_org_through_one_dashboard_key(
    personas: Personas,
) -> None:
    await db(_fund, personas.org)
    await db(_fund, personas.other_org)
    # The member works in Acme; two chats, one internal key.
    communicator = await _connect(await db(_session_cookie, personas.member, personas.org))
    assert await communicator.receive_json_from(timeout=5) == {"type": "ready", "auth": "session"}
    await communicator.send_json_to(_chat("a"))
    first = (await _until_end(communicator))[-1]
    await communicator.send_json_to(_chat("b"))
    second = (await _until_end(communicator))[-1]
    await communicator.disconnect()
    assert (first["type"], second["type"]) == ("done", "done")

    keys = await db(lambda: list(ApiKey.objects.filter(organization=personas.org)))
    assert [(k.name, k.created_by_id) for k in keys] == [(DASHBOARD_KEY_NAME, None)]
    logs = await db(lambda: list(RequestLog.objects.order_by("created_at")))
    assert {log.api_key_id for log in logs} == {keys[0].pk}
    assert {log.organization_id for log in logs} == {personas.org.pk}
    spent = first["cost"]["micros"] + second["cost"]["micros"]
    assert await db(_balance, personas.org) == FUNDS - spent
    assert await db(_balance, personas.other_org) == FUNDS
    await db(_audit_ok)


def _dashboard_after_playground_chat(personas: Personas, key: ApiKey, request_id: str) -> None:
    """What the org's owner sees in the dashboard once the playground has been used."""
    owner = personas.client(personas.owner)
    # Not among the keys the customer manages, nor counted as "an API key was created".
    keys_page = owner.get("/dashboard/keys/")
    assert keys_page.status_code == 200
    assert list(keys_page.context["keys"]) == []
    assert key.prefix not in keys_page.content.decode()
    checklist = dict(owner.get("/dashboard/").context["checklist"])
    assert checklist["Create an API key"] is False
    assert checklist["Make your first API call"] is False
    # Nor offered as the key to paste into the Quickstart (its secret was never shown).
    assert key.prefix not in owner.get("/docs/").content.decode()
    # Revoking it is not the customer's to do: not found, and the key keeps working.
    assert owner.post(f"/dashboard/keys/{key.pk}/revoke/").status_code == 404
    key.refresh_from_db()
    assert key.revoked_at is None
    # Its calls are in the usage log, attributed to the playground, and filterable.
    usage = owner.get("/dashboard/usage/", {"api_key": key.prefix})
    assert usage.status_code == 200
    page = usage.content.decode()
    assert f'<option value="{key.prefix}" selected>{PLAYGROUND_KEY_NAME} ({key.prefix}…)' in page
    assert [log.request_id for log in usage.context["page"].rows] == [request_id]
    assert f"<td>{PLAYGROUND_KEY_NAME}</td>" in page
    detail = owner.get(f"/dashboard/usage/requests/{request_id}/").content.decode()
    assert f"{PLAYGROUND_KEY_NAME} <code>{key.prefix}…</code>" in detail


async def test_playground_key_is_hidden_from_key_management_but_named_in_usage(
    personas: Personas,
) -> None:
    await db(_fund, personas.org)
    communicator = await _connect(await db(_session_cookie, personas.owner, personas.org))
    assert await communicator.receive_json_from(timeout=5) == {"type": "ready", "auth": "session"}
    await communicator.send_json_to(_chat())
    done = (await _until_end(communicator))[-1]
    await communicator.disconnect()
    assert done["type"] == "done"
    key = await db(ApiKey.objects.get, organization=personas.org)
    assert (key.internal, key.name) == (True, PLAYGROUND_KEY_NAME)
    await db(_dashboard_after_playground_chat, personas, key, done["request_id"])


async def test_outsider_session_bills_only_their_own_org(personas: Personas) -> None:
    await db(_fund, personas.org)
    await db(_fund, personas.other_org)
    # Even naming Acme as the session's current org cannot make Acme pay: not a member.
    communicator = await _connect(await db(_session_cookie, personas.outsider, personas.org))
    assert (await communicator.receive_json_from(timeout=5))["auth"] == "session"
    await communicator.send_json_to(_chat())
    done = (await _until_end(communicator))[-1]
    await communicator.disconnect()
    assert done["type"] == "done"
    log = await db(RequestLog.objects.get)
    assert log.organization_id == personas.other_org.pk
    assert await db(_balance, personas.org) == FUNDS
    assert await db(_balance, personas.other_org) == FUNDS - done["cost"]["micros"]


# --- authentication and bad input ------------------------------------------------------------
@pytest.mark.parametrize(
    "first_message",
    [
        {"type": "auth", "api_key": "lw-garbage-key-that-does-not-exist"},
        {"type": "auth"},
        _chat(),  # chatting before authenticating
    ],
)
async def test_unauthenticated_socket_gets_a_401_error_and_is_closed(
    personas: Personas, sandbox: SandboxServer, first_message: dict[str, Any]
) -> None:
    before = sandbox.app.chat_calls
    communicator = await _connect()
    await communicator.send_json_to(first_message)
    error = await communicator.receive_json_from(timeout=5)
    assert error["type"] == "error"
    assert error["error"]["type"] == "authentication_error"
    closed = await communicator.receive_output(timeout=5)
    assert closed == {"type": "websocket.close", "code": 4401}
    assert sandbox.app.chat_calls == before


async def test_api_key_in_the_query_string_is_ignored(secret: str, personas: Personas) -> None:
    communicator = socket_to(f"{PATH}?api_key={secret}", BROWSER)
    assert (await communicator.connect())[0]
    await communicator.send_json_to(_chat())
    error = await communicator.receive_json_from(timeout=5)
    assert error["error"]["type"] == "authentication_error"
    await communicator.disconnect()


BAD_FRAMES: list[tuple[Any, str, str | None]] = [
    ("not json", "invalid_request", None),
    ("[1]", "invalid_request", None),
    ('{"type": "shout"}', "invalid_request", "type"),
    ('{"type": "chat", "model": "gpt-4o-mini"}', "invalid_request", "id"),
    ('{"type": "cancel", "id": "nope"}', "invalid_request", "id"),
    (_chat(model="auto", fallbacks=["gpt-4o-mini"]), "invalid_request", "fallbacks"),
    (_chat(messages=[]), "invalid_request", "messages"),
    (_chat(messages=[{"role": "tool", "content": "x"}]), "invalid_request", "messages.0.role"),
    (_chat(max_tokens=0), "invalid_request", "max_tokens"),
    (_chat(temperature=9), "invalid_request", "temperature"),
    (_chat(shout=True), "unknown_parameter", "shout"),
    (_chat(model="no-such-model"), "model_not_found", "model"),
]


async def test_bad_messages_get_an_error_each_and_the_socket_stays_usable(
    secret: str, personas: Personas, sandbox: SandboxServer
) -> None:
    # One socket for the whole table: each case is cheap, a transactional test is not.
    before = sandbox.app.chat_calls
    communicator = await _authed(secret)
    for frame, code, param in BAD_FRAMES:
        if isinstance(frame, str):
            await communicator.send_to(text_data=frame)
        else:
            await communicator.send_json_to(frame)
        error = await communicator.receive_json_from(timeout=5)
        assert error["type"] == "error", frame
        assert (error["error"]["code"], error["error"]["param"]) == (code, param), frame
    assert sandbox.app.chat_calls == before
    assert not await db(Reservation.objects.exists)
    await communicator.send_json_to(_chat("after"))
    assert (await _until_end(communicator))[-1]["type"] == "done"
    await communicator.disconnect()
    assert sandbox.app.chat_calls == before + 1
    await db(_audit_ok)


async def test_revoked_key_stops_at_the_next_chat(secret: str, personas: Personas) -> None:
    communicator = await _authed(secret)
    key = await db(ApiKey.objects.get, name="ws")
    await db(account_services.api_key_revoke, org=personas.org, actor=None, key_id=key.pk)
    await communicator.send_json_to(_chat())
    error = await communicator.receive_json_from(timeout=5)
    assert error["error"]["type"] == "authentication_error"
    await communicator.disconnect()
    assert not await db(Reservation.objects.exists)


# --- credit and upstream trouble -------------------------------------------------------------
async def test_no_credit_is_an_insufficient_credit_error_and_nothing_goes_upstream(
    personas: Personas, sandbox: SandboxServer
) -> None:
    await db(_fund, personas.org, 1)
    issued = await db(
        account_services.api_key_create, org=personas.org, name="poor", created_by=personas.owner
    )
    secret = issued.secret
    before = sandbox.app.chat_calls
    communicator = await _authed(secret)
    await communicator.send_json_to(_chat())
    error = await communicator.receive_json_from(timeout=5)
    await communicator.disconnect()
    assert (error["type"], error["id"]) == ("error", "c1")
    assert error["error"]["type"] == "insufficient_credit"
    assert sandbox.app.chat_calls == before
    assert not await db(Reservation.objects.exists)


@pytest.mark.parametrize(
    ("model", "marker", "code"),
    [(MODEL, "http_429", "upstream_rate_limited"), ("claude-haiku-4.5", "overloaded_529", None)],
)
async def test_upstream_error_before_text_is_an_error_and_the_hold_released(
    secret: str, personas: Personas, model: str, marker: str, code: str | None
) -> None:
    communicator = await _authed(secret)
    await communicator.send_json_to(_chat(content=f"hi [[sandbox:{marker}]]", model=model))
    messages = await _until_end(communicator)
    await communicator.disconnect()
    assert [m["type"] for m in messages] == ["error"]
    error = messages[0]["error"]
    assert error["code"] == (code or "upstream_overloaded")
    assert error["request_id"].startswith("req_")
    reservation = await db(Reservation.objects.get)
    assert reservation.status == Reservation.Status.RELEASED
    assert await db(_balance, personas.org) == FUNDS
    await db(_audit_ok)


async def test_midstream_drop_sends_deltas_then_an_error_and_bills_what_was_streamed(
    secret: str, personas: Personas
) -> None:
    communicator = await _authed(secret)
    await communicator.send_json_to(
        _chat(content="tell a story [[sandbox:midstream_drop]]", max_tokens=60)
    )
    messages = await _until_end(communicator)
    await communicator.disconnect()
    assert messages[0]["type"] == "delta"
    assert messages[-1]["type"] == "error"
    log = await db(RequestLog.objects.get, request_id=messages[-1]["error"]["request_id"])
    assert (log.status, log.usage_estimated) == ("error", True)
    assert log.cost_micros > 0
    assert await db(_balance, personas.org) == FUNDS - log.cost_micros
    await db(_audit_ok)


# --- ending early ------------------------------------------------------------------------------
async def _slow_stream_started(secret: str, faults: FaultControl) -> WebsocketCommunicator:
    faults.set(provider="openai", fault="none", chunk_delay_ms=100)
    communicator = await _authed(secret)
    await communicator.send_json_to(_chat(content="a long answer please", max_tokens=400))
    assert (await communicator.receive_json_from(timeout=5))["type"] == "delta"
    return communicator


async def _settled_as_abandoned(personas: Personas) -> None:
    log = await db(RequestLog.objects.get)
    assert log.http_status == 499
    assert log.usage_estimated
    assert 0 < log.completion_tokens < 400
    reservation = await db(Reservation.objects.get)
    assert reservation.status == Reservation.Status.SETTLED
    wallet = await db(Wallet.objects.get, organization=personas.org)
    assert wallet.reserved_micros == 0
    assert wallet.balance_micros == FUNDS - log.cost_micros
    await db(_audit_ok)


async def test_client_disconnect_mid_stream_settles_what_was_sent(
    secret: str, personas: Personas, faults: FaultControl
) -> None:
    communicator = await _slow_stream_started(secret, faults)
    await communicator.disconnect()  # returns once the consumer has finished, settlement included
    await _settled_as_abandoned(personas)


async def test_cancel_message_stops_the_stream_and_settles(
    secret: str, personas: Personas, faults: FaultControl
) -> None:
    communicator = await _slow_stream_started(secret, faults)
    await communicator.send_json_to({"type": "cancel", "id": "c1"})
    while (message := await communicator.receive_json_from(timeout=5))["type"] == "delta":
        pass
    assert message == {"type": "cancelled", "id": "c1"}
    await _settled_as_abandoned(personas)
    await communicator.disconnect()


async def test_log_lines_of_a_socket_chat_name_its_request(
    secret: str, sandbox: SandboxServer
) -> None:
    import json
    import logging

    from llmwise.logging import JsonFormatter

    stream = StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        communicator = await _authed(secret)
        await communicator.send_json_to(_chat())
        messages = await _until_end(communicator)
        await communicator.disconnect()
    finally:
        root.removeHandler(handler)
    request_id = messages[-1]["request_id"]
    lines = [json.loads(line) for line in stream.getvalue().splitlines() if line]
    upstream = [
        line
        for line in lines
        if line["logger"] == "apps.gateway.providers"
        and f"POST {sandbox.base_url}/openai/" in line["message"]
    ]
    assert upstream, lines
    assert {line["request_id"] for line in upstream} == {request_id}
