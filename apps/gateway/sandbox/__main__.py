"""``python -m apps.gateway.sandbox --port 9100``: the sandbox upstreams, in the foreground."""

from __future__ import annotations

import argparse

import uvicorn

from .app import SandboxApp
from .server import LOOPBACK, install_log_filter

DEFAULT_PORT = 9100


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--host", default=LOOPBACK)
    parser.add_argument("--port", type=int, default=DEFAULT_PORT)
    parser.add_argument("--latency-ms", type=int, default=0, help="delay before the first byte")
    parser.add_argument("--chunk-delay-ms", type=int, default=0, help="delay between chunks")
    args = parser.parse_args()
    install_log_filter()
    app = SandboxApp(latency_ms=args.latency_ms, chunk_delay_ms=args.chunk_delay_ms)
    uvicorn.run(app, host=args.host, port=args.port, access_log=False, lifespan="off")


if __name__ == "__main__":
    main()
