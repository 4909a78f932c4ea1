"""A lean Redis client for the gateway's counters: one pipelined connection per event loop.

Every chat call sends one or two commands to Redis (the limits' Lua scripts). Through redis-py's
asyncio client each cost ~0.3 ms of Python (pool checkout, retry wrapper, a task per socket
timeout, command packing, reply parsing), which made Redis a fifth of the gateway's CPU. The
counters need four commands and nothing else, so this client does only that:

* one connection per event loop, shared by every caller on it: a command is written at once
  and its reply future queued; replies arrive in order (RESP), so the n-th reply answers the
  n-th queued future. Concurrent callers are pipelined on the wire for free;
* hiredis (C) splits and decodes replies; a server error comes back as the matching redis-py
  exception (``ResponseError``, ``NoScriptError``, ``ReadOnlyError``, ``OutOfMemoryError``) and a
  lost or refused connection as redis-py's ``ConnectionError``, so callers handle the same
  exceptions as before;
* no timeouts of its own: the caller bounds each operation (``RedisCounters`` does, as a whole).
  A caller that gives up (a timeout, or its client went away) leaves its queued future
  cancelled; the reply, when it comes, is read and dropped, so the queue stays in step. A
  connection that was lost is replaced on the next command.

URLs as redis-py reads them (``redis://`` and ``rediss://``, user, password, database, TLS
options), parsed by redis-py itself.
"""

from __future__ import annotations

import asyncio
import hashlib
import ssl
from collections import deque
from typing import Any, cast

import hiredis
from redis import exceptions
from redis.asyncio.connection import SSLConnection, parse_url

_ERRORS: dict[str, type[exceptions.ResponseError]] = {
    "NOSCRIPT": exceptions.NoScriptError,
    "READONLY": exceptions.ReadOnlyError,
    "OOM": exceptions.OutOfMemoryError,
}


def _server_error(message: str) -> exceptions.ResponseError:
    kind = _ERRORS.get(message.split(" ", 1)[0], exceptions.ResponseError)
    return kind(message)


class _Connection(asyncio.Protocol):
    """One socket: commands out as they come, replies matched to callers in order."""

    def __init__(self) -> None:
        self.reader = hiredis.Reader(replyError=_ReplyError)
        self.waiting: deque[asyncio.Future[Any]] = deque()
        self.transport: asyncio.Transport | None = None
        self.lost: Exception | None = None

    # --- asyncio.Protocol --------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport (uvloop's are not asyncio.Transport subclasses: no isinstance).
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.reader.feed(data)
        while (reply := self.reader.gets()) is not False:
            if not self.waiting:  # a reply nobody asked for: the stream is out of step
                self._fail(exceptions.ConnectionError("Redis sent an unexpected reply"))
                return
            waiter = self.waiting.popleft()
            if waiter.done():  # its caller gave up: drop the reply
                continue
            if isinstance(reply, _ReplyError):
                waiter.set_exception(_server_error(str(reply)))
            else:
                waiter.set_result(reply)

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(exceptions.ConnectionError(f"Redis connection lost: {exc or 'closed'}"))

    # --- ours --------------------------------------------------------------------------------
    def send(self, args: tuple[Any, ...]) -> asyncio.Future[Any]:
        if self.lost is not None or self.transport is None:
            raise exceptions.ConnectionError(str(self.lost or "Redis connection not open"))
        waiter = asyncio.get_running_loop().create_future()
        self.waiting.append(waiter)
        self.transport.write(hiredis.pack_command(args))
        return waiter

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
        self._fail(exceptions.ConnectionError("Redis connection closed"))

    def _fail(self, error: Exception) -> None:
        if self.lost is None:
            self.lost = error
        if self.transport is not None:
            self.transport.close()
        while self.waiting:
            waiter = self.waiting.popleft()
            if not waiter.done():
                waiter.set_exception(error)


class _ReplyError(Exception):
    """What hiredis returns (not raises) for a ``-ERR …`` reply; turned into redis-py's."""


class RespClient:
    """The commands the counters use, over one lazily (re)opened connection.

    Belongs to the event loop it is first used on (as any asyncio connection does)."""

    def __init__(self, url: str, *, connect_timeout: float) -> None:
        options = parse_url(url)
        self.host: str = options.get("host", "localhost")
        self.port: int = int(options.get("port", 6379))
        self.db = int(options.get("db", 0))
        self.username: str | None = options.get("username")
        self.password: str | None = options.get("password")
        self.tls = options.get("connection_class") is SSLConnection
        self.tls_options: dict[str, Any] = {
            k: v for k, v in options.items() if k.startswith("ssl_")
        }
        self.connect_timeout = connect_timeout
        self._connection: _Connection | None = None
        self._opening: asyncio.Future[_Connection] | None = None
        self._scripts: dict[str, str] = {}  # script → its SHA1

    async def execute(self, *args: Any) -> Any:
        """Send one command and return its reply (redis-py's exceptions on failure).

        A connection found dead on use (a Redis restart closed it) is replaced and the command
        sent again, once, as redis-py does."""
        connection = self._connection
        if connection is None or connection.lost is not None:
            return await (await self._open()).send(args)
        try:
            return await connection.send(args)
        except exceptions.ConnectionError:
            if self._connection is connection:
                self._connection = None
            return await (await self._open()).send(args)

    async def eval(self, script: str, keys: list[str], args: list[Any]) -> Any:
        """Run a Lua script by its SHA1; sent in full once per Redis server (on NOSCRIPT)."""
        sha = self._scripts.get(script)
        if sha is None:
            sha = self._scripts[script] = hashlib.sha1(script.encode()).hexdigest()  # noqa: S324 - Redis names scripts by SHA1
        try:
            return await self.execute("EVALSHA", sha, len(keys), *keys, *args)
        except exceptions.NoScriptError:
            return await self.execute("EVAL", script, len(keys), *keys, *args)

    async def aclose(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None

    async def _open(self) -> _Connection:
        # Callers arriving while a connection is being opened wait for that one.
        if self._opening is not None:
            return await asyncio.shield(self._opening)
        loop = asyncio.get_running_loop()
        self._opening = loop.create_future()
        try:
            connection = await self._connect()
        except BaseException as exc:
            error: BaseException = exc
            if isinstance(exc, OSError) and not isinstance(exc, exceptions.RedisError):
                error = exceptions.ConnectionError(f"Redis unreachable: {exc!r}")  # a timeout too
            self._opening.set_exception(
                error if isinstance(error, Exception) else exceptions.ConnectionError(repr(exc))
            )
            self._opening.exception()  # retrieved: no "never retrieved" warning when alone
            self._opening = None
            if error is exc:
                raise
            raise error from exc
        self._connection = connection
        self._opening.set_result(connection)
        self._opening = None
        return connection

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        context = self._tls_context() if self.tls else None
        async with asyncio.timeout(self.connect_timeout):
            _, connection = await loop.create_connection(
                _Connection,
                self.host,
                self.port,
                ssl=context,
                server_hostname=self.host if context is not None else None,
            )
            try:
                if self.password is not None:
                    credentials = (
                        (self.username, self.password) if self.username else (self.password,)
                    )
                    await connection.send(("AUTH", *credentials))
                if self.db:
                    await connection.send(("SELECT", self.db))
            except BaseException:
                connection.close()
                raise
        return connection

    def _tls_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(cafile=self.tls_options.get("ssl_ca_certs"))
        if self.tls_options.get("ssl_cert_reqs") in ("none", ssl.CERT_NONE):
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        certfile = self.tls_options.get("ssl_certfile")
        if certfile:
            context.load_cert_chain(certfile, self.tls_options.get("ssl_keyfile"))
        return context
