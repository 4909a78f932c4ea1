"""A liveness WebSocket: proves the Channels stack (routing, auth scope, layer) is wired."""

from __future__ import annotations

from typing import Any

from channels.generic.websocket import AsyncJsonWebsocketConsumer


class PingConsumer(AsyncJsonWebsocketConsumer):
    async def connect(self) -> None:
        await self.accept()

    async def receive_json(self, content: Any, **kwargs: Any) -> None:
        user = self.scope.get("user")
        await self.send_json(
            {
                "type": "pong",
                "echo": content,
                "authenticated": bool(user and user.is_authenticated),
            }
        )
