"""``WS /ws/v1/chat``: the native chat stream over a WebSocket, for browsers (the playground).

Protocol (JSON text frames; ``docs/api.md`` has the reference). Authentication, ``cancel``,
error frames and the per-socket stream limit are the API sockets' common ground
(:mod:`apps.gateway.sockets`); this socket adds one message:

- ``{"type": "chat", "id": "<client id>", "model", "messages", "max_tokens", ...}`` (the native
  body, always streamed) → ``{"type": "delta", "id", "text"}``… then one
  ``{"type": "done", "id", "request_id", ...}`` or ``{"type": "error", "id", "error": {...}}``.

Closing the socket or cancelling cancels the chat's task; the cancellation closes the call's
event generator, which settles what was streamed (status 499) before the consumer stops.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import AsyncGenerator, Mapping
from typing import Any, Final, cast

from apps.accounts.models import ApiKey
from llmwise.errors import ApplicationError, new_request_id
from llmwise.logging import log_context_bind

from . import calls
from .native_api import parse_native_chat, stream_payloads
from .sockets import ApiSocketConsumer, MessageHandler

ENDPOINT: Final = "ws.chat"
# Fields of a socket message that are the socket's, not the native body's.
FRAME_FIELDS: Final = frozenset({"type", "id", "stream"})


def message_body(message: dict[str, Any]) -> dict[str, Any]:
    """The request body carried by a socket message (its frame fields removed)."""
    return {k: v for k, v in message.items() if k not in FRAME_FIELDS}


class ChatConsumer(ApiSocketConsumer):
    def message_handlers(self) -> Mapping[str, MessageHandler]:
        return {"chat": self.chat_start}

    async def chat_start(self, message: dict[str, Any]) -> None:
        """Validate a ``chat`` message and stream it under the client's id."""
        chat_id = self.stream_id(message, noun="chat")
        chat = dataclasses.replace(parse_native_chat(message_body(message)), stream=True)
        api_key = await self.principal()
        self.stream_start(chat_id, self._chat(chat_id, chat, api_key))

    async def _chat(self, chat_id: str, chat: calls.ChatInput, api_key: ApiKey) -> None:
        started = time.perf_counter()
        request_id = new_request_id()
        log_context_bind(request_id=request_id)  # this task's log lines name its request
        try:
            stream = await calls.chat_stream(
                api_key=api_key, chat=chat, request_id=request_id, endpoint=ENDPOINT
            )
            first = await anext(stream.events, None)
        except ApplicationError as exc:
            await self.send_error(exc, client_id=chat_id, request_id=request_id)
            return
        payloads = cast(
            AsyncGenerator[tuple[str, dict[str, Any]], None],
            stream_payloads(stream, first, started=started),
        )
        try:
            async for name, data in payloads:
                if name == "delta":
                    await self.send_frame({"type": "delta", "id": chat_id, "text": data["text"]})
                elif name == "done":
                    done = {**data, "request_id": data["id"], "id": chat_id}
                    await self.send_frame({"type": "done", **done})
                else:
                    await self.send_frame({"type": "error", "id": chat_id, **data})
        finally:
            # On cancel (client gone, or a cancel message) this closes the call's events,
            # which settles what was streamed.
            await payloads.aclose()
