"""Serve the sandbox over real HTTP on loopback, in a background thread.

Tests start one per session (per xdist worker); the embedded default starts one from the ASGI
lifespan and points ``PROVIDER_SANDBOX_URL`` at :attr:`SandboxServer.base_url`.
"""

from __future__ import annotations

import logging
import socket
import threading
import time

import uvicorn

from .app import DropConnection, SandboxApp

LOOPBACK = "127.0.0.1"
START_TIMEOUT_SECONDS = 10.0
STOP_TIMEOUT_SECONDS = 5.0
POLL_SECONDS = 0.01
GRACEFUL_SHUTDOWN_SECONDS = 1


class _HideDeliberateDrops(logging.Filter):
    """A ``midstream_drop`` fault is the sandbox doing its job, not an error worth a traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, DropConnection)


def install_log_filter() -> None:
    logging.getLogger("uvicorn.error").addFilter(_HideDeliberateDrops())


class SandboxServer:
    """``start()`` → serving at ``base_url``; ``stop()`` → gone. Usable as a context manager."""

    def __init__(
        self,
        *,
        app: SandboxApp | None = None,
        host: str = LOOPBACK,
        port: int = 0,
        log_level: str = "warning",
    ) -> None:
        self.app = app or SandboxApp()
        self.host = host
        self.port = port
        self.log_level = log_level
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    @property
    def base_url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> SandboxServer:
        if self._thread is not None:
            return self
        # Bind here, so port 0 yields a free port we know before the server runs.
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        config = uvicorn.Config(
            self.app,
            log_config=None,  # never reconfigure the host process's logging
            log_level=self.log_level,
            access_log=False,
            lifespan="off",
            timeout_graceful_shutdown=GRACEFUL_SHUTDOWN_SECONDS,
        )
        install_log_filter()
        server = uvicorn.Server(config)
        thread = threading.Thread(
            target=server.run, kwargs={"sockets": [sock]}, name="sandbox-upstream", daemon=True
        )
        thread.start()
        deadline = time.monotonic() + START_TIMEOUT_SECONDS
        while not server.started:
            if not thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the sandbox upstream did not start")
            time.sleep(POLL_SECONDS)
        self._server, self._thread = server, thread
        return self

    def stop(self) -> None:
        if self._server is None or self._thread is None:
            return
        self._server.should_exit = True
        self._thread.join(STOP_TIMEOUT_SECONDS)
        self._server, self._thread = None, None

    def __enter__(self) -> SandboxServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
