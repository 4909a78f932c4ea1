"""``WS /ws/v1/chat``: the native chat stream over a WebSocket, for browsers (the playground).

Protocol (JSON text frames; ``docs/api.md`` has the reference):

- authentication, either the dashboard session (the socket's logged-in user; billed to the user's
  current organization through its internal dashboard key) or a first message
  ``{"type": "auth", "api_key": "lw-..."}`` — never a query parameter, which would leak the key
  into access logs. Both answer ``{"type": "ready", "auth": "session" | "api_key"}``.
- ``{"type": "chat", "id": "<client id>", "model", "messages", "max_tokens", ...}`` (the native
  body, always streamed) → ``{"type": "delta", "id", "text"}``… then one
  ``{"type": "done", "id", "request_id", ...}`` or ``{"type": "error", "id", "error": {...}}``.
- ``{"type": "cancel", "id"}`` stops a running chat (→ ``{"type": "cancelled", "id"}``).

Each chat runs as its own task, so a cancel or a second chat is heard while one streams. Closing
the socket cancels the running chats; the cancellation closes the call's event generator, which
settles what was streamed (status 499) before the consumer stops.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections.abc import AsyncGenerator
from typing import Any, Final, cast

from channels.db import database_sync_to_async
from channels.generic.websocket import AsyncWebsocketConsumer

from apps.accounts.middleware import SESSION_KEY
from apps.accounts.models import ApiKey
from apps.accounts.services import api_key_authenticate
from llmwise.errors import ApplicationError, NotPermitted, Unauthenticated, new_request_id

from . import calls
from .native_api import error_payload, parse_native_chat, stream_payloads
from .principals import session_api_key

ENDPOINT: Final = "ws.chat"
MAX_CHATS_PER_SOCKET: Final = 4  # concurrent streams; the playground needs one or a few
MAX_CLIENT_ID_LENGTH: Final = 64
# Close codes in the application range (4000-4999), mirroring the HTTP status.
CLOSE_UNAUTHENTICATED: Final = 4401


def _bad(message: str, param: str | None = None) -> ApplicationError:
    return ApplicationError(message, code="invalid_request", param=param)


class ChatConsumer(AsyncWebsocketConsumer):
    async def connect(self) -> None:
        self.api_secret: str | None = None
        self.chats: dict[str, asyncio.Task[None]] = {}
        await self.accept()
        if self._session_user() is not None:
            await self._send({"type": "ready", "auth": "session"})

    def _session_user(self) -> Any:
        user = self.scope.get("user")
        return user if user is not None and user.is_authenticated else None

    async def disconnect(self, code: int) -> None:
        running = list(self.chats.values())
        for task in running:
            task.cancel()
        # Wait for the settlements: the consumer must not stop before the money is right.
        await asyncio.gather(*running, return_exceptions=True)

    async def _send(self, content: dict[str, Any]) -> None:
        await self.send(text_data=json.dumps(content, separators=(",", ":")))

    async def _send_error(
        self, exc: ApplicationError, *, chat_id: str | None, request_id: str | None = None
    ) -> None:
        body = error_payload(exc, request_id=request_id or new_request_id())
        await self._send({"type": "error", "id": chat_id, **body})

    async def receive(self, text_data: str | None = None, bytes_data: bytes | None = None) -> None:
        chat_id = None
        try:
            try:
                message = json.loads(text_data) if text_data is not None else None
            except ValueError as exc:
                raise _bad("Send JSON text messages.") from exc
            if not isinstance(message, dict):
                raise _bad("A message must be a JSON object with a 'type'.")
            raw_id = message.get("id")
            chat_id = raw_id if isinstance(raw_id, str) else None
            kind = message.get("type")
            if kind == "auth":
                await self._auth(message)
            elif kind == "chat":
                await self._start_chat(message)
            elif kind == "cancel":
                await self._cancel(message)
            else:
                raise _bad("type must be 'auth', 'chat' or 'cancel'.", "type")
        except ApplicationError as exc:
            await self._send_error(exc, chat_id=chat_id)
            if isinstance(exc, Unauthenticated) and self.api_secret is None:
                await self.close(code=CLOSE_UNAUTHENTICATED)

    async def _auth(self, message: dict[str, Any]) -> None:
        secret = message.get("api_key")
        if not isinstance(secret, str) or not secret.strip():
            raise Unauthenticated("Send {'type': 'auth', 'api_key': '<your LLMWise API key>'}.")
        key = await database_sync_to_async(api_key_authenticate)(secret=secret.strip())
        if key is None:
            raise Unauthenticated("Invalid, expired or revoked API key.")
        self.api_secret = secret.strip()
        await self._send({"type": "ready", "auth": "api_key"})

    async def _principal(self) -> ApiKey:
        """Resolved for every chat, so a revoked key or a removed member stops at the next one."""
        if self.api_secret is not None:
            key = await database_sync_to_async(api_key_authenticate)(secret=self.api_secret)
            if key is None:
                raise Unauthenticated("Invalid, expired or revoked API key.")
            return key
        user = self._session_user()
        if user is None:
            raise Unauthenticated(
                "Authenticate first: {'type': 'auth', 'api_key': '<your LLMWise API key>'}."
            )
        session = self.scope["session"]
        org_id = await database_sync_to_async(session.get)(SESSION_KEY)
        return await database_sync_to_async(session_api_key)(user=user, session_org_id=org_id)

    async def _start_chat(self, message: dict[str, Any]) -> None:
        chat_id = message.get("id")
        if not isinstance(chat_id, str) or not 0 < len(chat_id) <= MAX_CLIENT_ID_LENGTH:
            raise _bad(f"id: a string of 1 to {MAX_CLIENT_ID_LENGTH} characters is required.", "id")
        if chat_id in self.chats:
            raise _bad(f"A chat with id {chat_id!r} is already running.", "id")
        if len(self.chats) >= MAX_CHATS_PER_SOCKET:
            raise NotPermitted(
                f"At most {MAX_CHATS_PER_SOCKET} chats may stream at once on one socket.",
                code="too_many_streams",
            )
        body = {k: v for k, v in message.items() if k not in ("type", "id", "stream")}
        chat = dataclasses.replace(parse_native_chat(body), stream=True)
        api_key = await self._principal()
        self.chats[chat_id] = asyncio.create_task(self._run_chat(chat_id, chat, api_key))

    async def _run_chat(self, chat_id: str, chat: calls.ChatInput, api_key: ApiKey) -> None:
        started = time.perf_counter()
        request_id = new_request_id()
        try:
            try:
                stream = await calls.chat_stream(
                    api_key=api_key, chat=chat, request_id=request_id, endpoint=ENDPOINT
                )
                first = await anext(stream.events, None)
            except ApplicationError as exc:
                await self._send_error(exc, chat_id=chat_id, request_id=request_id)
                return
            payloads = cast(
                AsyncGenerator[tuple[str, dict[str, Any]], None],
                stream_payloads(stream, first, started=started),
            )
            try:
                async for name, data in payloads:
                    if name == "delta":
                        await self._send({"type": "delta", "id": chat_id, "text": data["text"]})
                    elif name == "done":
                        done = {**data, "request_id": data["id"], "id": chat_id}
                        await self._send({"type": "done", **done})
                    else:
                        await self._send({"type": "error", "id": chat_id, **data})
            finally:
                # On cancel (client gone, or a cancel message) this closes the call's events,
                # which settles what was streamed.
                await payloads.aclose()
        finally:
            self.chats.pop(chat_id, None)

    async def _cancel(self, message: dict[str, Any]) -> None:
        chat_id = message.get("id")
        task = self.chats.get(chat_id) if isinstance(chat_id, str) else None
        if task is None:
            raise _bad("No running chat has this id.", "id")
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await self._send({"type": "cancelled", "id": chat_id})
