"""Project middleware. Every class here works in both sync and async stacks, so an async view
(the gateway's hot path) never pays a thread hop for middleware that does no I/O."""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.http import HttpRequest, HttpResponse
from whitenoise.middleware import WhiteNoiseMiddleware

from llmwise import metrics, observability
from llmwise.errors import new_request_id
from llmwise.logging import log_context_bind, log_context_pop, log_context_push

_CLIENT_ID = re.compile(r"^[A-Za-z0-9._:-]{8,128}$")

GetResponse = Callable[[HttpRequest], Any]


class DualModeMiddleware:
    """Base for middleware that is cheap and I/O-free before and after the view.

    Subclasses implement :meth:`before` (may return a response to short-circuit) and
    :meth:`after`; this class runs them in whichever mode Django calls it in.
    """

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: GetResponse) -> None:
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if iscoroutinefunction(self):
            return self._acall(request)
        response = self.before(request) or self.get_response(request)
        return self.after(request, response)

    async def _acall(self, request: HttpRequest) -> HttpResponse:
        response = self.before(request) or await self.get_response(request)
        return self.after(request, response)

    def before(self, request: HttpRequest) -> HttpResponse | None:
        return None

    def after(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        return response


class RequestIdMiddleware(DualModeMiddleware):
    """Every response carries our ``x-request-id``, always generated here: it keys billing and
    the request log, so a client must not be able to choose (or collide with) one. A client's own
    id, when sane, is echoed back as ``x-client-request-id`` for its correlation.

    Being first in the stack, it also puts the id on every log line of the request (the log
    context, llmwise/logging.py) and on its trace span, and counts the response for /metrics.
    """

    def __call__(self, request: HttpRequest) -> Any:
        if iscoroutinefunction(self):
            return self._acall(request)  # under ASGI each request is a task of its own context
        # Served synchronously (tests, management code), the thread's context outlives the
        # request: give the log context back when the response is out.
        token = log_context_push()
        try:
            return super().__call__(request)
        finally:
            log_context_pop(token)

    def before(self, request: HttpRequest) -> None:
        request_id = new_request_id()
        request.request_id = request_id  # type: ignore[attr-defined]
        log_context_bind(reset=True, request_id=request_id)
        if observability.tracing_active():
            observability.span_tag(request_id=request_id)

    def after(self, request: HttpRequest, response: HttpResponse) -> HttpResponse:
        response["x-request-id"] = request.request_id  # type: ignore[attr-defined]
        metrics.http_response(request, response.status_code)
        client_id = request.META.get("HTTP_X_REQUEST_ID", "")  # no HttpHeaders built
        if _CLIENT_ID.match(client_id):
            response["x-client-request-id"] = client_id
        return response


class StaticFilesMiddleware(WhiteNoiseMiddleware):
    """WhiteNoise, usable in an async stack: a request that is not for a static file passes
    straight through on the event loop; serving a file (disk I/O) runs in a worker thread."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: GetResponse, **kwargs: Any) -> None:
        super().__init__(get_response, **kwargs)
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> Any:
        if iscoroutinefunction(self):
            return self._acall(request)
        return super().__call__(request)

    async def _acall(self, request: HttpRequest) -> HttpResponse:
        path = request.path_info
        if self.autorefresh:
            if not path.startswith(self.static_prefix):
                response: Awaitable[HttpResponse] = self.get_response(request)
                return await response
            static_file = await sync_to_async(self.find_file)(path)
        else:
            static_file = self.files.get(path)
        if static_file is not None:
            return await sync_to_async(self.serve)(static_file, request)
        return await self.get_response(request)
