"""``WS /ws/v1/orchestrate``: Compare, Blend and Judge over a WebSocket (the playground's socket).

The gateway's chat socket (``apps/gateway/consumers.py``) with three more message types. What
every API socket shares — authentication by the dashboard session (billed to the user's current
organization through its internal playground key) or a first ``{"type": "auth", "api_key"}``,
``cancel``, error frames, the per-socket stream limit — comes from
:class:`apps.gateway.sockets.ApiSocketConsumer`. Protocol (``docs/orchestration.md``):

- ``{"type": "compare" | "blend" | "judge", "id": "<client id>", ...the HTTP body}`` (always
  streamed) → ``{"type": "run", "id", "request_id", ...}``, then the run's events, each as
  ``{"type": <event>, "id", ...data}`` (``delta``, ``model_done``, ``synthesis_delta``,
  ``synthesis_done``, ``verdict``), ending with one ``done`` or ``error``.
- ``{"type": "cancel", "id"}`` stops a run: its calls are cancelled and settle what they streamed.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncGenerator, Mapping
from typing import Any, Final, cast

from apps.accounts.models import ApiKey
from apps.gateway.consumers import ChatConsumer, message_body
from apps.gateway.sockets import MessageHandler
from llmwise.errors import ApplicationError, new_request_id
from llmwise.logging import log_context_bind

from . import runner
from .apis import parse_run
from .models import OrchestrationRun

ENDPOINT_PREFIX: Final = "ws."
MODES: Final = tuple(OrchestrationRun.Mode.values)


class OrchestrateConsumer(ChatConsumer):
    def message_handlers(self) -> Mapping[str, MessageHandler]:
        return {
            **super().message_handlers(),
            **{mode: functools.partial(self.run_start, mode=mode) for mode in MODES},
        }

    async def run_start(self, message: dict[str, Any], *, mode: str) -> None:
        """Validate a Compare / Blend / Judge message and stream the run under the client's id."""
        run_id = self.stream_id(message, noun="run")
        spec, _ = parse_run(message_body(message), mode=mode)
        api_key = await self.principal()
        self.stream_start(run_id, self._run(run_id, spec, api_key))

    async def _run(self, run_id: str, spec: runner.RunSpec, api_key: ApiKey) -> None:
        request_id = new_request_id()
        log_context_bind(request_id=request_id)  # this task's log lines name its request
        try:
            run = await runner.run_start(
                api_key=api_key,
                spec=spec,
                request_id=request_id,
                endpoint=ENDPOINT_PREFIX + spec.mode,
                stream=True,
            )
        except ApplicationError as exc:
            await self.send_error(exc, client_id=run_id, request_id=request_id)
            return
        events = cast(AsyncGenerator[tuple[str, dict[str, Any]], None], run.events())
        try:
            async for name, data in events:
                frame = {"type": name, **data, "id": run_id}
                if "id" in data:
                    frame["request_id"] = data["id"]
                await self.send_frame(frame)
        finally:
            # On cancel (socket closed, or a cancel message) this cancels the run's calls,
            # which settle what they streamed, and releases the rest of the hold.
            await events.aclose()
