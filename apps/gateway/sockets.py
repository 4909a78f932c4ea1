"""The common ground of our API WebSockets (``/ws/v1/chat``, ``/ws/v1/orchestrate``).

:class:`ApiSocketConsumer` owns what every such socket does the same way, so a socket only adds
its message types:

- authentication: the dashboard session (billed to the user's current organization through its
  internal playground key) or a first ``{"type": "auth", "api_key": "lw-..."}`` message — never a
  query parameter, which would leak the key into access logs. Both answer
  ``{"type": "ready", "auth": "session" | "api_key"}``; a refused key closes the socket with
  :data:`CLOSE_UNAUTHENTICATED`. :meth:`~ApiSocketConsumer.principal` resolves the key again for
  every stream, so a revoked key or a removed member stops at the next one.
- frames: JSON text, sent with :meth:`~ApiSocketConsumer.send_frame`; errors in the API's envelope
  tagged with the client's id (:meth:`~ApiSocketConsumer.send_error`).
- streams: each started message runs as its own task under the client's ``id`` (at most
  :data:`MAX_STREAMS_PER_SOCKET` at once), so a ``cancel`` or a second message is heard while one
  streams. ``{"type": "cancel", "id"}`` and closing the socket cancel them; the consumer waits for
  the cancelled tasks, whose cleanup settles what was streamed, before it stops.

A subclass lists its handlers in :meth:`~ApiSocketConsumer.message_handlers`; a handler parses its
message (raising :class:`~llmwise.errors.ApplicationError` for bad input, answered as an error
frame) and calls :meth:`~ApiSocketConsumer.stream_start` with the coroutine that streams.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from typing import Any, Final

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from apps.accounts.middleware import SESSION_KEY
from apps.accounts.models import ApiKey
from apps.accounts.services import api_key_authenticate
from llmwise.errors import ApplicationError, NotPermitted, Unauthenticated, new_request_id

from .native_api import error_payload
from .principals import session_api_key

MAX_STREAMS_PER_SOCKET: Final = 4  # concurrent streams; the playground needs one or a few
MAX_CLIENT_ID_LENGTH: Final = 64
# Close codes in the application range (4000-4999), mirroring the HTTP status.
CLOSE_UNAUTHENTICATED: Final = 4401

MessageHandler = Callable[[dict[str, Any]], Awaitable[None]]


def invalid_message(message: str, param: str | None = None) -> ApplicationError:
    """A 400 ``invalid_request`` about a socket message."""
    return ApplicationError(message, code="invalid_request", param=param)


class ApiSocketConsumer(AsyncWebsocketConsumer):
    """Authentication, framing, errors and stream bookkeeping shared by the API sockets."""

    async def connect(self) -> None:
        self.api_secret: str | None = None
        self.streams: dict[str, asyncio.Task[None]] = {}
        await self.accept()
        if self.session_user() is not None:
            await self.send_frame({"type": "ready", "auth": "session"})

    async def disconnect(self, code: int) -> None:
        running = list(self.streams.values())
        for task in running:
            task.cancel()
        # Wait for the settlements: the consumer must not stop before the money is right.
        await asyncio.gather(*running, return_exceptions=True)

    # --- what a subclass provides -------------------------------------------------------------
    def message_handlers(self) -> Mapping[str, MessageHandler]:
        """The socket's message types beyond ``auth`` and ``cancel``, type → handler."""
        return {}

    # --- frames -------------------------------------------------------------------------------
    async def send_frame(self, content: dict[str, Any]) -> None:
        await self.send(text_data=json.dumps(content, separators=(",", ":")))

    async def send_error(
        self, exc: ApplicationError, *, client_id: str | None, request_id: str | None = None
    ) -> None:
        """``{"type": "error", "id": <client id>, "error": {...}}``, the API's envelope."""
        body = error_payload(exc, request_id=request_id or new_request_id())
        await self.send_frame({"type": "error", "id": client_id, **body})

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        client_id = None
        try:
            try:
                message = json.loads(text_data) if text_data is not None else None
            except ValueError as exc:
                raise invalid_message("Send JSON text messages.") from exc
            if not isinstance(message, dict):
                raise invalid_message("A message must be a JSON object with a 'type'.")
            raw_id = message.get("id")
            client_id = raw_id if isinstance(raw_id, str) else None
            handlers: dict[str, MessageHandler] = {
                "auth": self._authenticate,
                **self.message_handlers(),
                "cancel": self._cancel,
            }
            handler = handlers.get(message.get("type"))  # type: ignore[arg-type]
            if handler is None:
                raise invalid_message(f"type must be one of {', '.join(handlers)}.", "type")
            await handler(message)
        except ApplicationError as exc:
            await self.send_error(exc, client_id=client_id)
            if isinstance(exc, Unauthenticated) and self.api_secret is None:
                await self.close(code=CLOSE_UNAUTHENTICATED)

    # --- authentication -----------------------------------------------------------------------
    def session_user(self) -> Any:
        """The logged-in dashboard user of the socket, or None."""
        user = self.scope.get("user")
        return user if user is not None and user.is_authenticated else None

    async def _authenticate(self, message: dict[str, Any]) -> None:
        secret = message.get("api_key")
        if not isinstance(secret, str) or not secret.strip():
            raise Unauthenticated("Send {'type': 'auth', 'api_key': '<your LLMWise API key>'}.")
        key = await database_sync_to_async(api_key_authenticate)(secret=secret.strip())
        if key is None:
            raise Unauthenticated("Invalid, expired or revoked API key.")
        self.api_secret = secret.strip()
        await self.send_frame({"type": "ready", "auth": "api_key"})

    async def principal(self) -> ApiKey:
        """The key a new stream is billed to; resolved for every stream, so a revoked key or a
        removed member stops at the next one."""
        if self.api_secret is not None:
            key = await database_sync_to_async(api_key_authenticate)(secret=self.api_secret)
            if key is None:
                raise Unauthenticated("Invalid, expired or revoked API key.")
            return key
        user = self.session_user()
        if user is None:
            raise Unauthenticated(
                "Authenticate first: {'type': 'auth', 'api_key': '<your LLMWise API key>'}."
            )
        session = self.scope["session"]
        org_id = await database_sync_to_async(session.get)(SESSION_KEY)
        return await database_sync_to_async(session_api_key)(user=user, session_org_id=org_id)

    # --- streams ------------------------------------------------------------------------------
    def stream_id(self, message: dict[str, Any], *, noun: str) -> str:
        """The client's id for a new stream: valid, not in use, and a free slot for it."""
        client_id = message.get("id")
        if not isinstance(client_id, str) or not 0 < len(client_id) <= MAX_CLIENT_ID_LENGTH:
            raise invalid_message(
                f"id: a string of 1 to {MAX_CLIENT_ID_LENGTH} characters is required.", "id"
            )
        if client_id in self.streams:
            raise invalid_message(f"A {noun} with id {client_id!r} is already running.", "id")
        if len(self.streams) >= MAX_STREAMS_PER_SOCKET:
            raise NotPermitted(
                f"At most {MAX_STREAMS_PER_SOCKET} streams may run at once on one socket.",
                code="too_many_streams",
            )
        return client_id

    def stream_start(self, client_id: str, stream: Coroutine[Any, Any, None]) -> None:
        """Run ``stream`` as the task of ``client_id`` until it ends or is cancelled."""

        async def tracked() -> None:
            try:
                await stream
            finally:
                # Free the id as soon as the last frame is out, not a loop turn later.
                self.streams.pop(client_id, None)

        def forget(task: asyncio.Task[None]) -> None:
            # A task cancelled before its first step never ran ``tracked``'s finally.
            if self.streams.get(client_id) is task:
                del self.streams[client_id]
            stream.close()  # no-op once awaited; else no "never awaited" warning

        task = asyncio.create_task(tracked())
        task.add_done_callback(forget)
        self.streams[client_id] = task

    async def _cancel(self, message: dict[str, Any]) -> None:
        client_id = message.get("id")
        task = self.streams.get(client_id) if isinstance(client_id, str) else None
        if task is None:
            raise invalid_message("No running stream has this id.", "id")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await self.send_frame({"type": "cancelled", "id": client_id})
