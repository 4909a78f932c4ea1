"""The counters' Redis client against the real Redis, on both event loops the product runs on
(asyncio's in tests and management code, uvloop's in the server)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Coroutine
from typing import Any

import pytest
import uvloop
from redis import exceptions

from apps.gateway.counters import counters_redis_url
from apps.gateway.resp import RespClient

pytestmark = pytest.mark.skipif(not counters_redis_url(), reason="needs REDIS_URL")

LOOPS = {"asyncio": asyncio.run, "uvloop": uvloop.run}
Run = Callable[[Coroutine[Any, Any, Any]], Any]


@pytest.fixture(params=list(LOOPS))
def run(request: pytest.FixtureRequest) -> Run:
    return LOOPS[request.param]


def _key() -> str:
    return "llmwise:test:resp:" + uuid.uuid4().hex


def _client() -> RespClient:
    return RespClient(counters_redis_url(), connect_timeout=1.0)


def test_commands_answer_in_redis_types(run: Run) -> None:
    key = _key()

    async def play() -> list[Any]:
        client = _client()
        try:
            return [
                await client.execute("SET", key, 7, "PX", 5000),
                await client.execute("SET", key, 8, "PX", 5000, "NX"),
                await client.execute("GET", key),
                await client.execute("DEL", key),
                await client.execute("GET", key),
            ]
        finally:
            await client.aclose()

    assert run(play()) == [b"OK", None, b"7", 1, None]


def test_concurrent_callers_each_get_their_own_reply(run: Run) -> None:
    key = _key()

    async def play() -> list[int]:
        client = _client()
        try:
            # Pipelined on one connection: the replies must come back to the right callers.
            replies = await asyncio.gather(*(client.execute("INCRBY", key, 1) for _ in range(200)))
            await client.execute("DEL", key)
            return list(replies)
        finally:
            await client.aclose()

    assert sorted(run(play())) == list(range(1, 201))


def test_scripts_by_sha_and_server_errors_as_redis_py_exceptions(run: Run) -> None:
    script = "return tonumber(ARGV[1]) + #KEYS  -- " + uuid.uuid4().hex  # never loaded before

    async def play() -> tuple[Any, Any, str]:
        client = _client()
        try:
            first = await client.eval(script, ["a", "b"], [40])  # NOSCRIPT, then EVAL
            again = await client.eval(script, ["a", "b"], [40])  # by SHA now
            with pytest.raises(exceptions.ResponseError) as caught:
                await client.execute("INCR")  # wrong number of arguments
            return first, again, str(caught.value)
        finally:
            await client.aclose()

    first, again, error = run(play())
    assert (first, again) == (42, 42)
    assert "wrong number of arguments" in error


def test_a_caller_that_gives_up_leaves_the_replies_in_step(run: Run) -> None:
    key = _key()

    async def play() -> tuple[Any, Any]:
        client = _client()
        try:
            await client.execute("SET", key, "before", "PX", 5000)
            # BLPOP on a missing list holds the connection's next reply for 0.3 s; the caller
            # stops waiting after 0.05 s, and its reply must not reach the next caller.
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.05):
                    await client.execute("BLPOP", _key(), 0.3)
            after = await client.execute("GET", key)
            await client.execute("DEL", key)
            return after, await client.execute("GET", key)
        finally:
            await client.aclose()

    assert run(play()) == (b"before", None)


def test_a_lost_connection_is_replaced_on_the_next_command(run: Run) -> None:
    async def play() -> Any:
        client = _client()
        try:
            await client.execute("CLIENT", "SETNAME", "resp-test-victim")
            victim = await client.execute("CLIENT", "ID")
            other = _client()
            try:
                await other.execute("CLIENT", "KILL", "ID", victim)
            finally:
                await other.aclose()
            await asyncio.sleep(0.05)
            return await client.execute("PING")
        finally:
            await client.aclose()

    assert run(play()) == b"PONG"


def test_nothing_listening_is_a_connection_error(run: Run) -> None:
    async def play() -> None:
        client = RespClient("redis://127.0.0.1:1/0", connect_timeout=1.0)
        await client.execute("PING")

    with pytest.raises(exceptions.ConnectionError):
        run(play())
