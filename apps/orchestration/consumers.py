"""``WS /ws/v1/orchestrate``: Compare, Blend and Judge over a WebSocket (the playground's socket).

The gateway's chat socket (``apps/gateway/consumers.py``) extended with three message types; its
authentication is reused as is — the dashboard session (billed to the user's current
organization through its internal dashboard key) or a first ``{"type": "auth", "api_key"}`` —
and so are ``chat`` and ``cancel``. Protocol (``docs/orchestration.md``):

- ``{"type": "compare" | "blend" | "judge", "id": "<client id>", ...the HTTP body}`` (always
  streamed) → ``{"type": "run", "id", "request_id", ...}``, then the run's events, each as
  ``{"type": <event>, "id", ...data}`` (``delta``, ``model_done``, ``synthesis_delta``,
  ``synthesis_done``, ``verdict``), ending with one ``done`` or ``error``.
- ``{"type": "cancel", "id"}`` stops a run: its calls are cancelled and settle what they streamed.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator
from typing import Any, Final, cast

from apps.gateway.consumers import (
    CLOSE_UNAUTHENTICATED,
    MAX_CHATS_PER_SOCKET,
    MAX_CLIENT_ID_LENGTH,
    ChatConsumer,
)
from llmwise.errors import ApplicationError, NotPermitted, Unauthenticated, new_request_id

from . import runner
from .apis import parse_run
from .models import OrchestrationRun

ENDPOINT_PREFIX: Final = "ws."
MODES: Final = tuple(OrchestrationRun.Mode.values)


def _bad(message: str, param: str | None = None) -> ApplicationError:
    return ApplicationError(message, code="invalid_request", param=param)


class OrchestrateConsumer(ChatConsumer):
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
            elif kind in MODES:
                await self._start_run(message, mode=kind)
            elif kind == "cancel":
                await self._cancel(message)
            else:
                raise _bad(f"type must be one of auth, chat, {', '.join(MODES)} or cancel.", "type")
        except ApplicationError as exc:
            await self._send_error(exc, chat_id=chat_id)
            if isinstance(exc, Unauthenticated) and self.api_secret is None:
                await self.close(code=CLOSE_UNAUTHENTICATED)

    async def _start_run(self, message: dict[str, Any], *, mode: str) -> None:
        run_id = message.get("id")
        if not isinstance(run_id, str) or not 0 < len(run_id) <= MAX_CLIENT_ID_LENGTH:
            raise _bad(f"id: a string of 1 to {MAX_CLIENT_ID_LENGTH} characters is required.", "id")
        if run_id in self.chats:
            raise _bad(f"A run with id {run_id!r} is already running.", "id")
        if len(self.chats) >= MAX_CHATS_PER_SOCKET:
            raise NotPermitted(
                f"At most {MAX_CHATS_PER_SOCKET} chats or runs may stream at once on one socket.",
                code="too_many_streams",
            )
        body = {k: v for k, v in message.items() if k not in ("type", "id", "stream")}
        spec, _ = parse_run(body, mode=mode)
        api_key = await self._principal()
        self.chats[run_id] = asyncio.create_task(self._run(run_id, spec, api_key))

    async def _run(self, run_id: str, spec: runner.RunSpec, api_key: Any) -> None:
        request_id = new_request_id()
        try:
            try:
                run = await runner.run_start(
                    api_key=api_key,
                    spec=spec,
                    request_id=request_id,
                    endpoint=ENDPOINT_PREFIX + spec.mode,
                    stream=True,
                )
            except ApplicationError as exc:
                await self._send_error(exc, chat_id=run_id, request_id=request_id)
                return
            events = cast(AsyncGenerator[tuple[str, dict[str, Any]], None], run.events())
            try:
                async for name, data in events:
                    frame = {"type": name, **data, "id": run_id}
                    if "id" in data:
                        frame["request_id"] = data["id"]
                    await self._send(frame)
            finally:
                # On cancel (socket closed, or a cancel message) this cancels the run's calls,
                # which settle what they streamed, and releases the rest of the hold.
                await events.aclose()
        finally:
            self.chats.pop(run_id, None)
