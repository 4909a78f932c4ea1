"""A real HTTP server for the Stripe tests: our Django app plus the fake Stripe, on loopback.

Both are served by uvicorn in a background thread, the way ``make run`` serves them: the fake
Stripe is mounted under ``/_sandbox/stripe`` by the same :class:`PathMount` the ASGI entry point
uses, and sends its signed webhooks to ``/webhooks/stripe/`` of the same server over HTTP.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from django.conf import settings
from django.core.asgi import get_asgi_application

from apps.wallet.stripe_sandbox import PathMount, StripeSandbox
from tests.servers import ThreadServer

WEBHOOK_SECRET = "whsec_wallet_tests"
SECRET_KEY = "sk_test_wallet_tests"


@dataclass
class StripeServer:
    url: str
    sandbox: StripeSandbox

    @property
    def api_base(self) -> str:
        return self.url + settings.STRIPE_SANDBOX_PREFIX

    def control(self, method: str, path: str, **kwargs: Any) -> httpx.Response:
        response = httpx.request(method, f"{self.api_base}/_control/{path}", timeout=30, **kwargs)
        response.raise_for_status()
        return response


@pytest.fixture(scope="session")
def stripe_server() -> Iterator[StripeServer]:
    server = ThreadServer(name="stripe-test-server")
    sandbox = StripeSandbox(
        webhook_url=f"{server.url}/webhooks/stripe/", webhook_secret=WEBHOOK_SECRET
    )
    server.app = PathMount(
        get_asgi_application(), prefix=settings.STRIPE_SANDBOX_PREFIX, mounted=sandbox
    )
    server.start()
    yield StripeServer(url=server.url, sandbox=sandbox)
    server.stop()


@pytest.fixture
def stripe_env(stripe_server: StripeServer, settings: Any, transactional_db: None) -> StripeServer:
    """Point the stripe-python client at the fake; the server's threads see committed data."""
    settings.STRIPE_API_BASE = stripe_server.api_base
    settings.STRIPE_SECRET_KEY = SECRET_KEY
    settings.STRIPE_WEBHOOK_SECRET = WEBHOOK_SECRET
    stripe_server.sandbox.auto_deliver = True
    stripe_server.sandbox.pending.clear()
    return stripe_server
