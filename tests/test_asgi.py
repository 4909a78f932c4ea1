"""The ASGI stack: Channels WebSocket routing, lifespan, the embedded scheduler, Celery wiring."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from channels.testing.websocket import WebsocketCommunicator
from django.conf import settings
from django.core.cache import cache

from apps.gateway.providers.base import ChatMessage, ChatRequest
from apps.gateway.providers.registry import platform_key, provider_adapter
from llmwise.asgi import LifespanApp, application
from llmwise.celery import HEARTBEAT_CACHE_KEY, heartbeat
from llmwise.celery import app as celery_app
from llmwise.embedded import EmbeddedScheduler


def _wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.mark.django_db(transaction=True)
def test_websocket_ping_roundtrip() -> None:
    async def run() -> dict:
        communicator = WebsocketCommunicator(
            application,
            "/ws/ping",
            headers=[(b"origin", b"http://127.0.0.1:8000"), (b"host", b"127.0.0.1:8000")],
        )
        connected, _ = await communicator.connect()
        assert connected
        await communicator.send_json_to({"hello": "world"})
        reply = await communicator.receive_json_from(timeout=5)
        await communicator.disconnect()
        return reply

    reply = asyncio.run(run())
    assert reply == {"type": "pong", "echo": {"hello": "world"}, "authenticated": False}


def test_websocket_from_foreign_origin_is_refused() -> None:
    async def run() -> bool:
        communicator = WebsocketCommunicator(
            application, "/ws/ping", headers=[(b"origin", b"http://evil.example")]
        )
        connected, _ = await communicator.connect()
        return connected

    assert asyncio.run(run()) is False


def test_lifespan_starts_and_stops_the_scheduler_and_sandbox_providers(settings) -> None:
    settings.EMBEDDED = True
    settings.PROVIDER_SANDBOX_KEYLESS = True
    settings.PROVIDER_SANDBOX_URL = ""
    settings.PROVIDER_KEYS = {}
    app = LifespanApp(application)
    sent: list[dict] = []
    messages = [{"type": "lifespan.startup"}, {"type": "lifespan.shutdown"}]
    answers: list[str] = []

    async def receive() -> dict:
        return messages.pop(0)

    async def send(message: dict) -> None:
        sent.append(message)
        if message["type"] == "lifespan.startup.complete":
            assert app.scheduler is not None
            assert app.scheduler._thread is not None
            assert app.sandbox is not None
            assert app.sandbox.base_url == settings.PROVIDER_SANDBOX_URL
            # A real adapter call over HTTP to the sandbox the lifespan started.
            request = ChatRequest(
                upstream_model="gpt-4o-mini",
                messages=(ChatMessage(role="user", content="Say hi"),),
                max_tokens=16,
            )
            result = await provider_adapter("openai").complete(
                request, api_key=platform_key("openai")
            )
            answers.append(result.text)

    asyncio.run(app({"type": "lifespan"}, receive, send))
    assert [m["type"] for m in sent] == ["lifespan.startup.complete", "lifespan.shutdown.complete"]
    assert app.scheduler is not None
    assert app.scheduler._thread is None
    assert answers
    assert answers[0]
    assert app.sandbox is not None
    assert app.sandbox._thread is None


def test_embedded_scheduler_runs_periodic_celery_tasks() -> None:
    scheduler = EmbeddedScheduler({"hb": {"task": "llmwise.heartbeat", "schedule": 0.2}})
    cache.delete(HEARTBEAT_CACHE_KEY)
    scheduler.start()
    try:
        assert _wait_for(lambda: scheduler.runs["hb"] >= 2, timeout=5)
    finally:
        scheduler.stop()
    assert cache.get(HEARTBEAT_CACHE_KEY)


def test_beat_schedule_names_registered_tasks() -> None:
    celery_app.loader.import_default_modules()  # what a worker (and the embedded beat) does
    for name, entry in settings.CELERY_BEAT_SCHEDULE.items():
        assert entry["task"] in celery_app.tasks, name


@pytest.mark.skipif(not settings.REDIS_URL, reason="needs REDIS_URL (a real broker)")
def test_real_celery_worker_consumes_from_redis() -> None:
    from celery.contrib.testing.worker import start_worker

    assert celery_app.conf.broker_url == settings.REDIS_URL
    stamp = uuid.uuid4().hex
    celery_app.conf.task_always_eager = False
    try:
        with start_worker(celery_app, pool="solo", perform_ping_check=False, shutdown_timeout=10):
            heartbeat.delay(stamp)
            assert _wait_for(lambda: cache.get(HEARTBEAT_CACHE_KEY) == stamp, timeout=20)
    finally:
        celery_app.conf.task_always_eager = True


def test_every_middleware_runs_natively_in_async_stacks() -> None:
    """A sync-only middleware would cost every async gateway request a thread hop."""
    from django.utils.module_loading import import_string

    sync_only = [
        path
        for path in settings.MIDDLEWARE
        if not getattr(import_string(path), "async_capable", False)
    ]
    assert sync_only == []


@pytest.mark.django_db(transaction=True)
def test_static_files_and_request_ids_through_the_async_stack() -> None:
    from django.test import AsyncClient

    async def run() -> tuple[int, bytes, str, int]:
        client = AsyncClient()
        static = await client.get("/static/css/app.css")
        body = b"".join(static.streaming_content)  # type: ignore[arg-type]
        missing = await client.get("/static/does-not-exist.css")
        return static.status_code, body, static["x-request-id"], missing.status_code

    status, body, request_id, missing = asyncio.run(run())
    assert status == 200
    assert b".brand" in body
    assert request_id.startswith("req_")
    assert missing == 404


def test_an_idle_websocket_consumer_outlives_the_channel_layers_blocking_pop() -> None:
    """channels_redis waits for a consumer's next message with a 5 s blocking pop; its Redis
    connections must read longer than that (redis-py 8 reads with a 5 s timeout by default, and
    the race killed idle consumers with "Timeout reading from Redis")."""
    import asyncio

    from channels.layers import get_channel_layer
    from django.conf import settings

    if "channels_redis" not in settings.CHANNEL_LAYERS["default"]["BACKEND"]:
        pytest.skip("the in-memory channel layer has no socket to time out")
    layer = get_channel_layer()
    pool = layer.create_pool(0)
    assert pool.connection_kwargs["socket_timeout"] > layer.brpop_timeout

    async def wait_past_one_pop() -> None:
        channel = await layer.new_channel()
        with pytest.raises(TimeoutError):  # ours, not the connection's
            await asyncio.wait_for(layer.receive(channel), timeout=layer.brpop_timeout + 1.5)
        await layer.flush()

    asyncio.run(wait_past_one_pop())
