"""An ASGI application served by uvicorn on a loopback port, in a thread of the test process: the
real HTTP (and WebSocket) server in front of the code under test, sharing its test database."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any

import uvicorn

START_SECONDS = 10
STOP_SECONDS = 10


def _listening(port: int) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", port))
    return sock


class ThreadServer:
    """``app`` under uvicorn on a free loopback port (``url``, known before it starts: an app
    may need it). ``stop()`` and ``start()`` again restart it on the same port, as a deploy
    restarts a server under open browser tabs."""

    def __init__(self, app: Any = None, *, name: str, lifespan: str = "off") -> None:
        self.app = app
        self.name = name
        self.lifespan = lifespan
        self._socket: socket.socket | None = _listening(0)
        self.port: int = self._socket.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> ThreadServer:
        assert self.app is not None, "no app to serve"
        sock = self._socket or _listening(self.port)
        self._socket = None  # the server closes it when it stops
        config = uvicorn.Config(self.app, lifespan=self.lifespan, log_level="warning")
        server = uvicorn.Server(config)
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name=self.name, daemon=True
        )
        thread.start()
        deadline = time.monotonic() + START_SECONDS
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.02)
        assert server.started, f"the test server {self.name} did not start"
        self._server, self._thread = server, thread
        return self

    def stop(self) -> bool:
        """Shut down as uvicorn does on SIGTERM (open sockets are closed); whether it ended."""
        if self._server is None or self._thread is None:
            return True
        self._server.should_exit = True
        self._thread.join(STOP_SECONDS)
        return not self._thread.is_alive()


def close_shared_thread_connections() -> None:
    """Close the database connection of asgiref's shared sync thread, where a served app's views
    and consumers ran their ORM calls; PostgreSQL refuses to drop a test database still in use."""
    from asgiref.sync import SyncToAsync
    from django.db import connections

    SyncToAsync.single_thread_executor.submit(connections.close_all).result(timeout=5)
