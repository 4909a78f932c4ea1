"""ASGI entry point: HTTP through Django, WebSockets through Channels, plus a lifespan handler.

Serving this module any way (``make run``, ``uvicorn llmwise.asgi:application``, the Docker
image) gives a working product. In the embedded default the lifespan also starts the in-process
scheduler that stands in for Celery beat, and the sandbox provider upstreams on a loopback port.
"""

from __future__ import annotations

import asyncio
import os
from typing import Any

from llmwise.http import get_asgi_application, serving_start, serving_stop

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "llmwise.settings.dev")
django_http = get_asgi_application()

# Imported after Django is set up: routing pulls in models and consumers.
from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.conf import settings  # noqa: E402

from apps.gateway.sandbox.server import SandboxServer  # noqa: E402
from llmwise.embedded import EmbeddedScheduler  # noqa: E402
from llmwise.observability import asgi_wrap, observability_init  # noqa: E402
from llmwise.routing import websocket_urlpatterns  # noqa: E402

Scope = dict[str, Any]
# Sentry and tracing, when their environment variables ask for them (docs/operations.md).
observability_init()

router = ProtocolTypeRouter(
    {
        "http": django_http,
        "websocket": AllowedHostsOriginValidator(
            AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
        ),
    }
)


def sandbox_wanted() -> bool:
    """The sandbox providers are in use and nobody has pointed us at a running sandbox."""
    in_use = settings.PROVIDER_SANDBOX or settings.PROVIDER_SANDBOX_KEYLESS
    return bool(in_use) and not settings.PROVIDER_SANDBOX_URL


class LifespanApp:
    """Handles ASGI ``lifespan`` (start/stop of in-process services) and delegates the rest."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.scheduler: EmbeddedScheduler | None = None
        self.sandbox: SandboxServer | None = None

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                await serving_start()  # pooled upstream and database connections
                if settings.EMBEDDED:
                    self.scheduler = EmbeddedScheduler()
                    self.scheduler.start()
                if sandbox_wanted():
                    # Fake upstreams on a loopback port of their own, so a provider call from
                    # this server never waits on this server's own request handling.
                    self.sandbox = await asyncio.to_thread(SandboxServer().start)
                    settings.PROVIDER_SANDBOX_URL = self.sandbox.base_url
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                if self.scheduler is not None:
                    self.scheduler.stop()
                if self.sandbox is not None:
                    await asyncio.to_thread(self.sandbox.stop)
                await serving_stop()
                await send({"type": "lifespan.shutdown.complete"})
                return


def _with_stripe_sandbox(app: Any) -> Any:
    """In test mode without Stripe keys, serve the fake Stripe at STRIPE_SANDBOX_PREFIX."""
    if not settings.STRIPE_SANDBOX:
        return app
    from django.urls import reverse

    from apps.wallet.stripe_sandbox import PathMount, StripeSandbox

    sandbox = StripeSandbox(
        webhook_url=settings.SITE_URL + reverse("stripe_webhook"),
        webhook_secret=settings.STRIPE_WEBHOOK_SECRET,
    )
    return PathMount(app, prefix=settings.STRIPE_SANDBOX_PREFIX, mounted=sandbox)


application = LifespanApp(asgi_wrap(_with_stripe_sandbox(router)))
