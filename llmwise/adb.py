"""PostgreSQL straight from the event loop, for the chat calls' two money statements.

A chat call writes twice: the hold before the upstream call and the settle + request log
after it, one statement each (``apps/wallet/hotpath.py``). Run through a database thread
(:func:`llmwise.http.run_db`) each costs two thread switches and Django's cursor and
transaction machinery around a statement the database answers in a fraction of a millisecond.
On the server's loop, on PostgreSQL, they run on a psycopg ``AsyncConnectionPool`` instead:
autocommit connections, each statement its own transaction.

The pool belongs to the loop that opened it, so it exists only on the server's loop: switched
on by :func:`start` (ASGI lifespan start-up, and the test server), opened with the first
statement and closed by :func:`stop`. Code
elsewhere (sync views, Celery, management commands, tests through Django's client) sees
:func:`active` False and keeps using the ORM services.
"""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from django.conf import settings
from django.db import connection
from psycopg import AsyncConnection, InterfaceError, OperationalError
from psycopg_pool import AsyncConnectionPool

T = TypeVar("T")

_enabled: weakref.WeakSet[asyncio.AbstractEventLoop] = weakref.WeakSet()
_pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncConnectionPool] = (
    weakref.WeakKeyDictionary()
)


def _connect_kwargs() -> dict[str, Any]:
    """Django's own connection parameters (database, credentials, adapters), autocommit, with
    statements prepared on the server from their second run (Django itself never prepares):
    the same few statements run on every call, and planning them each time cost about as much
    as running them (``GATEWAY_DB_PREPARED_STATEMENTS``)."""
    params = connection.get_connection_params()
    params.pop("cursor_factory", None)  # Django's sync cursor class
    prepare = 1 if settings.GATEWAY_DB_PREPARED_STATEMENTS else None
    return {**params, "autocommit": True, "prepare_threshold": prepare}


async def start() -> None:
    """Use a pool on the running loop from now on (PostgreSQL only; a no-op elsewhere). The
    pool itself opens with the first statement, with the database settings of that moment."""
    if connection.vendor == "postgresql":
        _enabled.add(asyncio.get_running_loop())


async def stop() -> None:
    """Close the running loop's pool, if it has one, and stop using one."""
    loop = asyncio.get_running_loop()
    _enabled.discard(loop)
    pool = _pools.pop(loop, None)
    if pool is not None:
        await pool.close()


def active() -> bool:
    """Whether the running loop uses a pool (then the hot path's statements go through it)."""
    try:
        return asyncio.get_running_loop() in _enabled
    except RuntimeError:
        return False


def _pool(loop: asyncio.AbstractEventLoop) -> AsyncConnectionPool:
    pool = _pools.get(loop)
    if pool is None:
        options = settings.DATABASES["default"].get("OPTIONS", {}).get("pool", {})
        pool = _pools[loop] = AsyncConnectionPool(
            kwargs=_connect_kwargs(),
            min_size=1,
            max_size=settings.GATEWAY_DB_CONNECTIONS,
            # How long a call waits for a connection before it fails with a 503.
            timeout=float(options.get("timeout", 10.0)),
            open=False,
            name="gateway-hot-path",
        )
    return pool


async def run(statement: Callable[[AsyncConnection[Any]], Awaitable[T]]) -> T:
    """``await statement(conn)`` on a pooled autocommit connection of the running loop
    (:func:`active` must be True).

    A pooled connection the database dropped (a restart, a failover) fails on first use; the
    pool discards it and the statement is sent again on another, without waiting: there are
    at most as many such connections as the pool holds. The callers' statements are safe to
    repeat (each is one transaction, and keyed by the call's request id). Any other failure,
    or a failure to connect at all, is the caller's.
    """
    pool = _pool(asyncio.get_running_loop())
    if pool.closed:
        await pool.open(wait=False)
    for _ in range(settings.GATEWAY_DB_CONNECTIONS):
        async with pool.connection() as conn:
            try:
                return await statement(conn)
            except (OperationalError, InterfaceError):
                if not conn.broken:
                    raise
    async with pool.connection() as conn:  # every pooled one was stale: this one is new
        return await statement(conn)
