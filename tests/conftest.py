from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
from channels.testing import WebsocketCommunicator
from django.core.cache import cache
from django.test import Client

from apps.accounts.models import Organization, Role, User
from apps.accounts.services import api_key_caches_clear
from apps.gateway.limits import limits_allowances_clear
from apps.gateway.routing import health
from apps.gateway.selectors import catalog_cache_clear
from tests.factories import UserFactory, add_member, org_with_owner
from tests.servers import close_shared_thread_connections


@pytest.fixture
def catalog(db: None) -> None:
    """The seeded model catalog. Transactional tests flush migration data, so re-seed."""
    from apps.gateway.services import catalog_seed

    catalog_seed()


@pytest.fixture(autouse=True)
def _clear_cache() -> None:
    """Each test starts with an empty cache (its own Redis database under xdist) and nothing
    remembered in-process from an earlier test: API keys, catalog, and provider health (the
    breaker states copied from the shared store, which was just emptied, and unsent tallies:
    without this a test right after one that opened a breaker saw it still open)."""
    cache.clear()
    api_key_caches_clear()
    catalog_cache_clear()
    health.health_local_clear()
    limits_allowances_clear()


@dataclass
class Personas:
    """One organization with an owner, an admin and a member, and an outsider who owns another."""

    org: Organization
    owner: User
    admin: User
    member: User
    outsider: User
    other_org: Organization

    def client(self, user: User) -> Client:
        client = Client()
        client.force_login(user)
        return client


@pytest.fixture
def personas(db: None) -> Personas:
    owner = UserFactory(email="owner@acme.test")
    org = org_with_owner("Acme", owner)
    admin = add_member(org, Role.ADMIN, UserFactory(email="admin@acme.test"))
    member = add_member(org, Role.MEMBER, UserFactory(email="member@acme.test"))
    outsider = UserFactory(email="outsider@globex.test")
    other_org = org_with_owner("Globex", outsider)
    return Personas(org, owner, admin, member, outsider, other_org)


# --- WebSockets through the ASGI application ----------------------------------------------
_open_sockets: list[WebsocketCommunicator] = []


def socket_to(path: str, headers: list[tuple[bytes, bytes]]) -> WebsocketCommunicator:
    """A communicator on the whole ASGI application, disconnected at the end of the test by
    `_disconnect_sockets` when the test did not (a failed assertion, or a socket the server
    closed: a real server answers a close with a disconnect, the communicator does not). A
    consumer left running would hold its channel layer's blocking read past the event loop."""
    from llmwise.asgi import application

    communicator = WebsocketCommunicator(application, path, headers=headers)
    _open_sockets.append(communicator)
    return communicator


@pytest.fixture
async def _disconnect_sockets() -> AsyncIterator[None]:
    """After a socket test: every socket disconnected, then the database connection of asgiref's
    shared thread (where the consumers ran their ORM calls) closed, or PostgreSQL refuses to
    drop the test database."""
    yield
    while _open_sockets:
        communicator = _open_sockets.pop()
        with contextlib.suppress(Exception):  # already ended, possibly with the test's error
            await communicator.disconnect()
    close_shared_thread_connections()
