"""README command 1's serving path, end to end: uvicorn + the ASGI app + SQLite, nothing else.

Starts a real server process on a free loopback port with the embedded (dev) settings, then signs
up over HTTP, follows the verification link printed to the console, creates an API key in the
dashboard and calls the API with it.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Server:
    def __init__(self, tmp_path: Path) -> None:
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            k: v
            for k, v in os.environ.items()
            if k not in {"DATABASE_URL", "REDIS_URL", "DJANGO_SETTINGS_MODULE"}
        }
        self.env.update(
            DJANGO_SETTINGS_MODULE="llmwise.settings.dev",
            DATABASE_URL=f"sqlite:///{tmp_path / 'smoke.db'}",
            SITE_URL=self.url,
            PYTHONUNBUFFERED="1",
        )
        self.output: list[str] = []

    def manage(self, *args: str) -> None:
        subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=ROOT,
            env=self.env,
            check=True,
            capture_output=True,
            timeout=120,
        )

    def start(self) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "llmwise.asgi:application",
                "--host",
                "127.0.0.1",
                "--port",
                str(self.port),
                "--lifespan",
                "on",
            ],
            cwd=ROOT,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        assert process.stdout is not None
        stream = process.stdout
        threading.Thread(target=lambda: self.output.extend(stream), daemon=True).start()
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                if httpx.get(self.url + "/healthz", timeout=1).status_code == 200:
                    return process
            except httpx.TransportError:
                time.sleep(0.2)
        process.kill()
        raise AssertionError("server did not start:\n" + "".join(self.output))

    def wait_for_output(self, pattern: str, timeout: float = 10) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = re.search(pattern, "".join(self.output))
            if match:
                return match
            time.sleep(0.1)
        raise AssertionError(f"{pattern!r} never printed:\n" + "".join(self.output))


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    srv = Server(tmp_path)
    srv.manage("migrate", "--noinput")
    srv.manage("seed")
    process = srv.start()
    try:
        yield srv
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def _csrf(client: httpx.Client, path: str) -> str:
    page = client.get(path)
    assert page.status_code == 200, path
    match = re.search(r'name="csrfmiddlewaretoken" value="([^"]+)"', page.text)
    assert match, path
    return match.group(1)


def test_signup_verify_create_key_call_api(server: Server) -> None:
    with httpx.Client(base_url=server.url, follow_redirects=False, timeout=10) as client:
        assert client.get("/").status_code == 200
        ready = client.get("/readyz").json()
        assert ready["checks"] == {"database": "ok", "redis": "not configured (embedded)"}

        token = _csrf(client, "/accounts/signup/")
        response = client.post(
            "/accounts/signup/",
            data={
                "csrfmiddlewaretoken": token,
                "email": "newcomer@example.com",
                "password1": "a-long-pass-phrase-42",
                "password2": "a-long-pass-phrase-42",
            },
        )
        assert response.status_code == 302, response.text

        # The console email backend prints the verification email in the server's output.
        link = server.wait_for_output(r"https?://\S+(/accounts/confirm-email/\S+/)")
        confirm_path = link.group(1)
        token = _csrf(client, confirm_path)
        response = client.post(confirm_path, data={"csrfmiddlewaretoken": token})
        assert response.status_code == 302

        dashboard = client.get("/dashboard/")
        assert dashboard.status_code == 200
        assert "newcomer&#x27;s workspace" in dashboard.text

        token = _csrf(client, "/dashboard/keys/")
        created = client.post(
            "/dashboard/keys/", data={"csrfmiddlewaretoken": token, "name": "laptop"}
        )
        assert created.status_code == 200
        secret = re.search(r'value="(lw-[A-Za-z0-9_-]+)"', created.text)
        assert secret, created.text

    response = httpx.get(
        server.url + "/api/v1/key", headers={"Authorization": f"Bearer {secret.group(1)}"}
    )
    assert response.status_code == 200
    assert response.json()["key_name"] == "laptop"
