"""WebSocket URL routes (Channels). Apps add their consumers here."""

from django.urls import path

from llmwise.consumers import PingConsumer

websocket_urlpatterns = [
    path("ws/ping", PingConsumer.as_asgi()),
]
