"""WebSocket URL routes (Channels). Apps add their consumers here."""

from django.urls import path

from apps.gateway.consumers import ChatConsumer
from apps.orchestration.consumers import OrchestrateConsumer
from llmwise.consumers import PingConsumer

websocket_urlpatterns = [
    path("ws/ping", PingConsumer.as_asgi()),
    path("ws/v1/chat", ChatConsumer.as_asgi()),
    path("ws/v1/orchestrate", OrchestrateConsumer.as_asgi()),
]
