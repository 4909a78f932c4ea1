"""Django's ASGI handler, with the gateway's chat calls on a lean path.

Two costs of Django's request cycle are large next to what a chat call itself does, so the chat
endpoints (:data:`HOT_PATHS`) are served by a second handler that avoids them:

* **A thread per request.** Django runs each ASGI request in an asgiref ``ThreadSensitiveContext``:
  the first ``sync_to_async`` of the request starts an OS thread that lives as long as the
  request. For a page that is what we want (its sync view and ORM work stay on one thread). A chat
  call's sync work is two or three short statements (reserve, settle + log): the call service
  hands it to :func:`run_db`, which on this path uses a fixed pool of long-lived database threads
  (``GATEWAY_DB_THREADS``), so the statements of concurrent calls run side by side.
* **Middleware made for pages.** Django's own middleware runs its hooks through ``sync_to_async``
  in an async stack: a dozen thread hops per request for sessions, CSRF, authentication, messages
  and allauth, none of which an API-key call uses. The chat endpoints get :data:`API_MIDDLEWARE`:
  the request id, the security headers (the same hooks as Django's, run inline: they do no I/O),
  the CSP header and the rate-limit status.

* **Two thread hops per request for the request signals.** ``request_started`` and
  ``request_finished`` have only sync receivers (close the thread's database connection if it is
  broken or too old, close caches), which an async handler must run through ``sync_to_async``.
  On this path every statement of a call runs on a database thread that does that itself after
  each job (:func:`run_db`); the async ORM's shared thread (cache misses: a key, a policy) gets the
  same hygiene at most once per ``CONNECTION_HYGIENE_SECONDS`` instead of twice per request.

* **Waiting for the books.** A chat call's settle + request-log write and its counter updates
  change nothing in the answer. On this path the call service hands them to
  :func:`after_answer`: they run as soon as the response has gone out, still inside the request's
  ASGI call (so a graceful shutdown waits for them), never cancelled by the client going away.
  Anywhere else :func:`after_answer` runs them at once, before the response.

Everything else is Django's handler as is (request and response objects, middleware hooks, the
disconnect listener that cancels a call whose client went away). Tests serve this same handler
(``live_gateway``) and check that a hot-path answer carries the same security headers, errors and
billing as the full stack's.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import django
from asgiref.sync import sync_to_async
from django.conf import settings
from django.core.exceptions import RequestAborted
from django.core.handlers.asgi import ASGIHandler
from django.db import close_old_connections, connection
from django.http import HttpRequest, HttpResponse
from django.middleware.clickjacking import XFrameOptionsMiddleware
from django.middleware.security import SecurityMiddleware
from django.urls import ResolverMatch

from llmwise.middleware import DualModeMiddleware, GetResponse

# The POST endpoints of every chat call (OpenAI, Anthropic and native formats).
HOT_PATHS = frozenset({"/v1/chat/completions", "/v1/messages", "/api/v1/chat"})
CONNECTION_HYGIENE_SECONDS = 1.0

API_MIDDLEWARE = [
    "llmwise.middleware.RequestIdMiddleware",
    "llmwise.http.InlineSecurityMiddleware",
    "llmwise.csp.ApiContentSecurityPolicyMiddleware",
    "llmwise.http.InlineXFrameOptionsMiddleware",
    "apps.accounts.middleware.RateLimitStatusMiddleware",
    # Last, as in settings.MIDDLEWARE: a database outage answers 503 in the envelope, not 500.
    "llmwise.outage.DatabaseUnavailableMiddleware",
]


class InlineSecurityMiddleware(DualModeMiddleware):
    """Django's ``SecurityMiddleware`` (HTTPS redirect, HSTS, nosniff, referrer and
    cross-origin-opener policies), its hooks called inline."""

    def __init__(self, get_response: GetResponse) -> None:
        super().__init__(get_response)
        self.django = SecurityMiddleware(get_response)

    def before(self, request: HttpRequest) -> HttpResponse | None:
        return self.django.process_request(request)

    def after(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        return self.django.process_response(request, response)


class InlineXFrameOptionsMiddleware(DualModeMiddleware):
    """Django's ``XFrameOptionsMiddleware``, its hook called inline."""

    def __init__(self, get_response: GetResponse) -> None:
        super().__init__(get_response)
        self.django = XFrameOptionsMiddleware(get_response)

    def after(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        return self.django.process_response(request, response)


T = TypeVar("T")
logger = logging.getLogger(__name__)
AfterAnswer = Callable[[], Awaitable[None]]
_after_answer: contextvars.ContextVar[list[tuple[contextvars.Context, AfterAnswer]] | None] = (
    contextvars.ContextVar("after_answer", default=None)
)
_on_hot_path: contextvars.ContextVar[bool] = contextvars.ContextVar("on_hot_path", default=False)
_db_threads: ThreadPoolExecutor | None = None
_db_threads_lock = threading.Lock()


def _db_executor() -> ThreadPoolExecutor:
    global _db_threads
    with _db_threads_lock:
        if _db_threads is None:
            # SQLite (the embedded default) takes one writer at a time anyway: one thread.
            threads = 1 if connection.vendor == "sqlite" else settings.GATEWAY_DB_THREADS
            _db_threads = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="gateway-db")
        return _db_threads


def _db_job(fn: Callable[..., T], kwargs: dict[str, Any]) -> T:
    try:
        return fn(**kwargs)
    finally:
        # What Django's request signals do for a request's thread: give the connection back
        # (to the pool in production), or drop it when it broke (a database restart).
        close_old_connections()


async def run_db(fn: Callable[..., T], /, **kwargs: Any) -> T:
    """Run the sync (ORM) function ``fn(**kwargs)`` off the event loop and return its result.

    On the lean chat path: on one of the gateway's database threads, with this call's context
    (request id, log fields). Anywhere else (pages, WebSockets, tests through Django's test
    client): ``sync_to_async``, which keeps the work on the request's own thread.
    """
    if not _on_hot_path.get():
        return await sync_to_async(fn)(**kwargs)
    context = contextvars.copy_context()
    loop = asyncio.get_running_loop()
    return await loop.run_in_executor(_db_executor(), context.run, _db_job, fn, kwargs)


async def after_answer(work: AfterAnswer) -> None:
    """Run ``await work()`` once the response has been sent, on the lean chat path; elsewhere
    (pages, fan-out children, Django's test client) right now, its errors the caller's.

    After the response, ``work`` runs in the context it was handed over in (request id and log
    fields) and its errors are logged, as nobody is left to answer: it must record its own
    failures (the settle does: ``money_operation_failed``)."""
    pending = _after_answer.get()
    if pending is None:
        await work()
    else:
        pending.append((contextvars.copy_context(), work))


async def _run_after_answer(pending: list[tuple[contextvars.Context, AfterAnswer]]) -> None:
    for context, work in pending:
        try:
            await asyncio.create_task(work(), context=context)  # type: ignore[arg-type]
        except Exception:
            context.run(logger.exception, "work after the answer failed")


class _ApiHandler(ASGIHandler):
    """Django's handler with :data:`API_MIDDLEWARE` in place of ``settings.MIDDLEWARE`` and
    without the request signals (see the module docstring)."""

    def __init__(self) -> None:
        super().__init__()
        self._hygiene_due = 0.0
        self._matches: dict[tuple[str, str], ResolverMatch] = {}

    def resolve_request(self, request: HttpRequest) -> ResolverMatch:
        """The three hot paths resolve to the same views every time: remember their matches
        (per URL configuration) instead of walking the whole URL tree on every call."""
        key = (settings.ROOT_URLCONF, request.path_info)
        match = self._matches.get(key)
        if match is None or hasattr(request, "urlconf"):
            match = super().resolve_request(request)
            if not hasattr(request, "urlconf"):
                self._matches[key] = match
        request.resolver_match = match
        return match

    def load_middleware(self, is_async: bool = False) -> None:
        full = settings.MIDDLEWARE
        settings.MIDDLEWARE = API_MIDDLEWARE  # read by the base class, once, at start-up
        try:
            super().load_middleware(is_async=is_async)
        finally:
            settings.MIDDLEWARE = full

    async def handle(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """``ASGIHandler.handle`` minus the signals: read the body, answer while listening for
        the client going away (which cancels the call: its hold is released, or its stream
        settled on what was delivered), free the request's resources, then run the work the
        call handed to :func:`after_answer`."""
        try:
            body_file = await self.read_body(receive)
        except RequestAborted:
            return
        try:
            await self._connection_hygiene()
            request, error_response = self.create_request(scope, body_file)
            if request is None:  # a request Django refuses to build (bad encoding): its 400
                assert error_response is not None  # noqa: S101 - create_request returns one
                await self.send_response(error_response, send)
                return
            pending: list[tuple[contextvars.Context, AfterAnswer]] = []
            token = _after_answer.set(pending)
            try:
                await self._answer(request, receive, send)
            finally:
                _after_answer.reset(token)
                request.close()
                # Also when the client went away: the work handed over was due either way.
                await _run_after_answer(pending)
        finally:
            body_file.close()

    async def _answer(self, request: Any, receive: Any, send: Any) -> None:
        async def process_request() -> None:
            response = await self.get_response_async(request)
            with contextlib.suppress(asyncio.CancelledError):  # the client went away meanwhile
                await self.send_response(response, send)

        listener = asyncio.create_task(self.listen_for_disconnect(receive))
        answer = asyncio.create_task(process_request())
        await asyncio.wait((listener, answer), return_when=asyncio.FIRST_COMPLETED)
        for task in (listener, answer):  # the listener first: it never raises unexpectedly
            if not task.done():
                task.cancel()  # the call sees CancelledError and cleans up after itself
                with contextlib.suppress(asyncio.CancelledError):
                    await task
            elif not task.cancelled():
                with contextlib.suppress(RequestAborted):
                    task.result()

    async def _connection_hygiene(self) -> None:
        """What ``request_started`` does for the async ORM's shared thread (close its database
        connection if broken or past its age), at most once per CONNECTION_HYGIENE_SECONDS."""
        now = time.monotonic()
        if now < self._hygiene_due:
            return
        self._hygiene_due = now + CONNECTION_HYGIENE_SECONDS
        await sync_to_async(close_old_connections)()


class LLMWiseASGIHandler(ASGIHandler):
    def __init__(self) -> None:
        super().__init__()
        self.api = _ApiHandler()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope.get("path") in HOT_PATHS:
            token = _on_hot_path.set(True)
            try:
                await self.api.handle(scope, receive, send)  # no per-request thread
            finally:
                _on_hot_path.reset(token)
            return
        await super().__call__(scope, receive, send)


async def serving_start() -> None:
    """Set up the running loop as the server's: pooled upstream connections and, on PostgreSQL,
    the hot path's async database pool (ASGI lifespan start-up; the test server too)."""
    from apps.gateway.providers.transport import pool_clients_on_this_loop
    from llmwise import adb

    pool_clients_on_this_loop()
    await adb.start()


async def serving_stop() -> None:
    """Close what :func:`serving_start` opened (ASGI lifespan shutdown)."""
    from apps.gateway.providers.transport import http_clients_aclose
    from llmwise import adb

    await http_clients_aclose()
    await adb.stop()


def get_asgi_application() -> LLMWiseASGIHandler:
    """:func:`django.core.asgi.get_asgi_application` with :class:`LLMWiseASGIHandler`."""
    django.setup(set_prefix=False)
    return LLMWiseASGIHandler()
