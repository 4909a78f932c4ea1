"""WS /ws/v1/orchestrate through the whole ASGI application (Channels routing, origin check,
session auth); every provider call goes over real HTTP to the sandbox."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
from asgiref.sync import sync_to_async
from channels.testing import WebsocketCommunicator
from django.db import connection, transaction

from apps.gateway.models import RequestLog
from apps.orchestration.models import OrchestrationRun
from apps.wallet.models import Reservation
from tests.conftest import Personas, socket_to
from tests.gateway.conftest import FaultControl
from tests.gateway.test_ws_chat import BROWSER, _session_cookie

from .conftest import FUNDS, MODELS, audit_ok, fund, messages, wallet_of

pytestmark = [
    pytest.mark.anyio,
    pytest.mark.django_db(transaction=True),
    pytest.mark.usefixtures("catalog", "_close_clients", "_disconnect_sockets"),
]

PATH = "/ws/v1/orchestrate"
T = TypeVar("T")


async def db(fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    return await sync_to_async(fn)(*args, **kwargs)


async def _connect(cookie: bytes | None = None) -> WebsocketCommunicator:
    headers = BROWSER + ([(b"cookie", cookie)] if cookie else [])
    communicator = socket_to(PATH, headers)
    connected, _ = await communicator.connect()
    assert connected
    return communicator


async def _until_end(communicator: WebsocketCommunicator) -> list[dict[str, Any]]:
    frames: list[dict[str, Any]] = []
    while not frames or frames[-1]["type"] not in ("done", "error"):
        frames.append(await communicator.receive_json_from(timeout=10))
    return frames


async def test_session_user_compares_over_the_socket(personas: Personas) -> None:
    await db(fund, personas)
    communicator = await _connect(await db(_session_cookie, personas.member, personas.org))
    assert await communicator.receive_json_from(timeout=5) == {"type": "ready", "auth": "session"}
    await communicator.send_json_to(
        {"type": "compare", "id": "r1", "models": MODELS, "messages": messages(), "max_tokens": 40}
    )
    frames = await _until_end(communicator)
    await communicator.disconnect()
    assert all(frame["id"] == "r1" for frame in frames)
    assert frames[0]["type"] == "run"
    assert frames[-1]["type"] == "done"
    assert [f["type"] for f in frames].count("model_done") == 3
    done = frames[-1]
    assert {r["model"] for r in done["results"]} == set(MODELS)
    for result in done["results"]:
        deltas = [
            f["text"] for f in frames if f["type"] == "delta" and f["index"] == result["index"]
        ]
        assert "".join(deltas) == result["content"]
    run = await db(OrchestrationRun.objects.get, request_id=done["request_id"])
    assert (run.endpoint, run.status, run.organization_id) == ("ws.compare", "ok", personas.org.pk)
    balance = (await db(wallet_of, personas)).balance_micros
    assert balance == FUNDS - done["totals"]["cost"]["micros"]
    await db(audit_ok)


async def test_unauthenticated_run_is_refused_and_closed(personas: Personas) -> None:
    communicator = await _connect()
    await communicator.send_json_to(
        {"type": "compare", "id": "r1", "models": MODELS, "messages": messages()}
    )
    error = await communicator.receive_json_from(timeout=5)
    assert error["error"]["type"] == "authentication_error"
    assert await communicator.receive_output(timeout=5) == {"type": "websocket.close", "code": 4401}


async def test_bad_run_message_is_an_error_frame(personas: Personas) -> None:
    await db(fund, personas)
    communicator = await _connect(await db(_session_cookie, personas.owner, personas.org))
    await communicator.receive_json_from(timeout=5)
    await communicator.send_json_to(
        {"type": "blend", "id": "r1", "models": ["gpt-4o-mini"], "messages": messages()}
    )
    error = await communicator.receive_json_from(timeout=5)
    assert (error["type"], error["id"], error["error"]["param"]) == ("error", "r1", "models")
    await communicator.disconnect()


async def test_closing_the_socket_mid_run_cancels_and_settles_everything(
    personas: Personas, faults: FaultControl
) -> None:
    await db(fund, personas)
    await sync_to_async(faults.set)(provider="*", fault="none", chunk_delay_ms=400)
    communicator = await _connect(await db(_session_cookie, personas.owner, personas.org))
    await communicator.receive_json_from(timeout=5)
    await communicator.send_json_to(
        {"type": "compare", "id": "r1", "models": MODELS, "messages": messages(), "max_tokens": 400}
    )
    run_frame = await communicator.receive_json_from(timeout=5)
    while (await communicator.receive_json_from(timeout=5))["type"] != "delta":
        pass
    # Waits for the consumer, which waits for the settlements.
    await communicator.disconnect(timeout=10)
    run = await db(OrchestrationRun.objects.get, request_id=run_frame["request_id"])
    assert run.status == "cancelled"
    logs = await db(lambda: list(RequestLog.objects.filter(parent_request_id=run.request_id)))
    assert len(logs) == 3
    # The sandbox answer takes about 4 s to stream: all three were cut (on a very slow machine
    # one may have finished first; it is then settled in full).
    assert 499 in {log.http_status for log in logs} <= {200, 499}
    held = await db(Reservation.objects.filter(status=Reservation.Status.HELD).count)
    assert held == 0
    wallet = await db(wallet_of, personas)
    assert wallet.reserved_micros == 0
    assert wallet.balance_micros == FUNDS - sum(log.cost_micros for log in logs)
    await db(audit_ok)


async def test_the_end_of_a_run_is_sent_once_the_run_is_closed(personas: Personas) -> None:
    """A client that reads the run the moment it sees ``done`` finds it final and its hold
    settled: while the run's row is locked elsewhere its close waits, and so does ``done``."""
    if connection.vendor != "postgresql":
        pytest.skip("a row lock held from another connection needs PostgreSQL")
    await db(fund, personas)
    communicator = await _connect(await db(_session_cookie, personas.member, personas.org))
    assert (await communicator.receive_json_from(timeout=5))["type"] == "ready"
    await communicator.send_json_to(
        {"type": "compare", "id": "r1", "models": MODELS, "messages": messages(), "max_tokens": 40}
    )
    started = await communicator.receive_json_from(timeout=5)
    assert started["type"] == "run"
    locked, release = threading.Event(), threading.Event()

    def lock_the_run() -> None:
        try:
            with transaction.atomic():
                OrchestrationRun.objects.select_for_update().get(request_id=started["request_id"])
                locked.set()
                release.wait(30)
        finally:
            connection.close()

    locker = threading.Thread(target=lock_the_run, name="run-locker")
    locker.start()
    try:
        assert locked.wait(5)
        frames: list[dict[str, Any]] = []
        while [f["type"] for f in frames].count("model_done") < len(MODELS):
            frames.append(await communicator.receive_json_from(timeout=10))
        assert await communicator.receive_nothing(timeout=1.0)  # every call done, no end yet
    finally:
        release.set()
        locker.join(10)
    done = await communicator.receive_json_from(timeout=10)
    assert done["type"] == "done"
    run = await db(OrchestrationRun.objects.get, request_id=started["request_id"])
    assert run.status == "ok"
    assert run.cost_micros == done["totals"]["cost"]["micros"]
    assert (await db(wallet_of, personas)).reserved_micros == 0
    await communicator.disconnect()
    await db(audit_ok)
