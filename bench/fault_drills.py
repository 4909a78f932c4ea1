#!/usr/bin/env python3
"""Fault drills: the gateway under load while a worker, Redis or PostgreSQL fails, and a soak.

Everything runs on 127.0.0.1 and is bounded in requests and seconds. Each drill builds its own
stage, so nothing shared is ever stopped:

* a **private PostgreSQL cluster** (``initdb`` in a temporary directory, its own port and socket
  directory) and a **private Redis** (``redis-server`` on its own port, no persistence);
* the **sandbox upstreams** (``python -m apps.gateway.sandbox``) with a first-byte latency and a
  delay between stream chunks, so streams are in flight long enough to be hit by the fault;
* **our gateway** in its production shape: ``llmwise.settings.prod`` on that PostgreSQL + Redis,
  ``uvicorn llmwise.asgi:application --workers N`` (uvicorn's supervisor restarts a dead worker),
  every provider routed to the sandbox, an organization with credit and an API key made with
  the operator commands (``create_org``, ``grant_credits``, ``create_api_key``);
* a closed-loop **load** of async httpx clients on ``POST /v1/chat/completions``: streams
  (``stream_options.include_usage``) and non-streams across three providers; sandbox faults
  (``[[sandbox:<fault>]]`` in the prompt) on a share of them in the soak.

Drills (subcommands)::

    kill9      SIGKILL a uvicorn worker in the middle of streams (twice, one per worker)
    redis      stop Redis during load and start it again (``--freeze``: SIGSTOP/SIGCONT it)
    postgres   restart PostgreSQL during load (``pg_ctl restart -m fast``; ``--mode immediate``)
    soak       steady mixed load for ``--minutes`` (≥ 5 for the record) with sandbox errors
    all        kill9, redis, redis --freeze, postgres, then a soak of ``--minutes``

Afterwards every drill checks the books on the private database: ``manage.py wallet_audit``
exits 0; no reservation is left held (a killed worker's holds are swept: see ``--real-ttl``);
no request id carries two charges or two log rows; every charge has its log row; every answer
the client saw complete was charged exactly what it reported, and no request the client saw
refused before its stream was charged at all. It also counts outcomes (complete, error in our
envelope, error *not* in our envelope, broken connection) and status classes, per phase.

The hold of a request whose worker was killed expires after the call service's reservation TTL
(``GATEWAY_RESERVATION_TTL_SECONDS``, 15 minutes by default). By
default the drill moves the deadline of the holds still held to "now" in the database, as if the
TTL had passed, and then runs the sweeper as is (``manage.py release_expired_reservations``, what
the every-minute beat task runs); this happens after the load has ended, so no live request is
touched. ``--real-ttl`` instead waits for the holds to expire on their own.

Run (each drill ~1-2 minutes on 2 cores, the soak ``--minutes`` more)::

    .venv/bin/python bench/fault_drills.py kill9
    .venv/bin/python bench/fault_drills.py redis            # and: redis --freeze
    .venv/bin/python bench/fault_drills.py postgres         # and: postgres --mode immediate
    .venv/bin/python bench/fault_drills.py soak --minutes 5
    .venv/bin/python bench/fault_drills.py all --minutes 5

Output: Markdown on stdout, and ``var/bench/drills-<timestamp>/`` with ``results.json``,
``summary.md`` and the logs of every process. Exit status 1 when a check failed.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
HOST = "127.0.0.1"
ORG_SLUG = "drill"
ORG_OWNER = "drill@example.com"
DATABASE = "llmwise_drill"
MODELS = ("gpt-4o-mini", "claude-haiku-4.5", "gemini-2.5-flash-lite")
GRANT_USD = "100000"
# Sandbox faults the soak injects (in the prompt), with their weights.
SOAK_FAULTS = {
    "http_500": 3,
    "http_503": 2,
    "http_429": 2,
    "midstream_drop": 2,
    "midstream_error": 1,
    "truncated_sse": 1,
    "invalid_json": 1,
    "timeout": 1,
}
ENVELOPE_KEYS = ("message", "type", "code", "request_id")
SOAK_MAX_RSS_SLOPE_MIB_PER_MIN = 2.0
MIB = 1024 * 1024


# ------------------------------------------------------------------------------- processes
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def pg_bin(name: str) -> str:
    """A PostgreSQL server binary: on PATH, else Debian's versioned directory (newest)."""
    found = shutil.which(name)
    if found:
        return found
    versions = sorted(
        Path("/usr/lib/postgresql").glob("*/bin"), key=lambda p: int(p.parent.name), reverse=True
    )
    for directory in versions:
        if (directory / name).exists():
            return str(directory / name)
    raise SystemExit(f"{name} not found (install PostgreSQL's server package)")


def run(
    cmd: list[str], *, env: dict[str, str] | None = None, check: bool = True, cwd: Path = REPO
) -> str:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{done.stdout}\n{done.stderr}")
    return done.stdout


def children(pid: int) -> list[int]:
    out: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*/children"):
        with contextlib.suppress(OSError, ValueError):
            out.extend(int(c) for c in task.read_text().split())
    return out


def cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def rss_mib(pid: int) -> float | None:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


SNAPSHOT_PARTS = ("apps", "llmwise", "templates", "static", "manage.py", "pyproject.toml")


def snapshot(into: Path) -> Path:
    """A copy of the code as it is now, so a drill runs one version of it from start to end
    (the working tree may change under a long run). The venv's packages are used as they are."""
    target = into / "code"
    target.mkdir(parents=True)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "node_modules")
    for part in SNAPSHOT_PARTS:
        source = REPO / part
        if source.is_dir():
            shutil.copytree(source, target / part, ignore=ignore)
        elif source.exists():
            shutil.copy2(source, target / part)
    return target


class Stage:
    """Private PostgreSQL + Redis, the sandbox and the gateway; torn down by :meth:`stop`."""

    def __init__(self, args: argparse.Namespace, out: Path, *, name: str) -> None:
        self.args = args
        self.out = out
        self.name = name
        self.code: Path = args.code
        self.tmp = Path(tempfile.mkdtemp(prefix=f"llmwise-drill-{name}-"))
        self.pg_data = self.tmp / "pg"
        self.pg_port = free_port()
        self.redis_port = free_port()
        self.sandbox_port = free_port()
        self.gateway_port = free_port()
        self.procs: list[subprocess.Popen[bytes]] = []
        self.gateway: subprocess.Popen[bytes] | None = None
        self.secret = ""
        self.limited_secret = ""
        self.env: dict[str, str] = {}

    # --- lifecycle ---------------------------------------------------------------------------
    def start(self) -> Stage:
        self.pg_init()
        self.pg_start()
        self.redis_start()
        self.sandbox_start()
        self.env = self.gateway_env()
        (self.tmp / "static").mkdir()
        self.setup()
        self.gateway_start()
        return self

    def stop(self) -> None:
        for proc in reversed(self.procs):
            if proc.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGTERM)
        for proc in reversed(self.procs):
            try:
                proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                proc.wait(timeout=5)
        self.procs.clear()
        self.redis_thaw()
        self.redis_stop()
        if (self.pg_data / "postmaster.pid").exists():
            run(
                [pg_bin("pg_ctl"), "-D", str(self.pg_data), "-m", "fast", "-w", "stop"], check=False
            )
        if self.args.keep:
            print(f"(kept {self.tmp})", file=sys.stderr)
        else:
            shutil.rmtree(self.tmp, ignore_errors=True)

    def _start(self, cmd: list[str], *, log: str, env: dict[str, str] | None = None) -> Any:
        with (self.out / f"{self.name}-{log}.log").open("ab") as sink:
            proc = subprocess.Popen(
                cmd,
                cwd=self.code,
                env=env,
                stdout=sink,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.procs.append(proc)
        return proc

    # --- PostgreSQL ----------------------------------------------------------------------------
    def _as_pg(self, cmd: list[str]) -> list[str]:
        """PostgreSQL refuses to run as root: run its binaries as the postgres user then."""
        if os.geteuid() != 0:
            return cmd
        return ["runuser", "-u", "postgres", "--", *cmd]

    def pg_init(self) -> None:
        self.pg_data.mkdir()
        if os.geteuid() == 0:
            self.tmp.chmod(0o755)
            shutil.chown(self.pg_data, "postgres", "postgres")
        run(
            self._as_pg(
                [
                    pg_bin("initdb"),
                    "-D",
                    str(self.pg_data),
                    "-U",
                    "postgres",
                    "--auth=trust",
                    "-E",
                    "UTF8",
                    "--no-instructions",
                ]
            )
        )

    def pg_start(self) -> None:
        options = (
            f"-p {self.pg_port} -k {self.pg_data} -c listen_addresses={HOST} -c max_connections=200"
        )
        run(
            self._as_pg(
                [
                    pg_bin("pg_ctl"),
                    "-D",
                    str(self.pg_data),
                    "-o",
                    options,
                    "-l",
                    str(self.pg_data / "server.log"),
                    "-w",
                    "start",
                ]
            )
        )

    def pg_stop(self, mode: str = "fast") -> None:
        run(self._as_pg([pg_bin("pg_ctl"), "-D", str(self.pg_data), "-m", mode, "-w", "stop"]))

    @property
    def database_url(self) -> str:
        return f"postgres://postgres@{HOST}:{self.pg_port}/{DATABASE}"

    def sql(self, query: str) -> list[tuple[Any, ...]]:
        import psycopg  # the gateway's own driver

        dsn = f"host={HOST} port={self.pg_port} user=postgres dbname={DATABASE}"
        with psycopg.connect(dsn, connect_timeout=10) as conn:
            return list(conn.execute(query).fetchall())  # type: ignore[arg-type]

    # --- Redis ---------------------------------------------------------------------------------
    def redis_start(self) -> None:
        run(
            [
                "redis-server",
                "--port",
                str(self.redis_port),
                "--bind",
                HOST,
                "--save",
                "",
                "--appendonly",
                "no",
                "--daemonize",
                "yes",
                "--dir",
                str(self.tmp),
                "--pidfile",
                str(self.tmp / "redis.pid"),
                "--logfile",
                str(self.out / f"{self.name}-redis.log"),
            ]
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self._redis_pid() is not None and self.redis_ping():
                return
            time.sleep(0.05)
        raise SystemExit("the private Redis did not start")

    def _redis_pid(self) -> int | None:
        try:
            return int((self.tmp / "redis.pid").read_text().strip())
        except (OSError, ValueError):
            return None

    def redis_ping(self) -> bool:
        with (
            contextlib.suppress(OSError),
            socket.create_connection((HOST, self.redis_port), 1) as s,
        ):
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
        return False

    def redis_stop(self) -> None:
        pid = self._redis_pid()
        if pid is None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and Path(f"/proc/{pid}").exists():
            time.sleep(0.05)
        with contextlib.suppress(FileNotFoundError):
            (self.tmp / "redis.pid").unlink()

    def redis_freeze(self) -> None:
        pid = self._redis_pid()
        if pid is not None:
            os.kill(pid, signal.SIGSTOP)

    def redis_thaw(self) -> None:
        pid = self._redis_pid()
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)

    # --- sandbox and gateway -------------------------------------------------------------------
    @property
    def sandbox_url(self) -> str:
        return f"http://{HOST}:{self.sandbox_port}"

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.gateway_port}"

    def sandbox_start(self) -> None:
        self._start(
            [
                PYTHON,
                "-m",
                "apps.gateway.sandbox",
                "--port",
                str(self.sandbox_port),
                "--latency-ms",
                str(self.args.upstream_ms),
                "--chunk-delay-ms",
                str(self.args.chunk_ms),
            ],
            log="sandbox",
            env=dict(os.environ),
        )
        wait_http(self.sandbox_url + "/_control/health")

    def gateway_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.endswith("_BASE_URL")}
        env.update(
            DJANGO_SETTINGS_MODULE="llmwise.settings.prod",
            # Throwaway values made at run time (loopback drill, private database).
            SECRET_KEY=secrets.token_urlsafe(48),
            FIELD_ENCRYPTION_KEYS=secrets.token_urlsafe(48),
            ALLOWED_HOSTS=HOST,
            SECURE_SSL_REDIRECT="false",
            DATABASE_URL=self.database_url,
            REDIS_URL=f"redis://{HOST}:{self.redis_port}/0",
            PROVIDER_SANDBOX="true",
            PROVIDER_SANDBOX_URL=self.sandbox_url,
            PROVIDER_FIRST_BYTE_TIMEOUT=str(self.args.first_byte_timeout),
            PROVIDER_TOTAL_TIMEOUT=str(self.args.total_timeout),
            GATEWAY_ORG_RPM="0",
            GATEWAY_ORG_TPM="0",
            STATIC_ROOT=str(self.tmp / "static"),  # empty: the API serves no static files
            LOG_LEVEL="WARNING",
            PYTHONUNBUFFERED="1",
        )
        return env

    def manage(self, *args: str, check: bool = True) -> str:
        return run([PYTHON, "manage.py", *args], env=self.env, check=check, cwd=self.code)

    def setup(self) -> None:
        run(["createdb", "-h", HOST, "-p", str(self.pg_port), "-U", "postgres", DATABASE])
        self.manage("migrate", "--noinput", "-v", "0")
        self.manage("create_org", "--slug", ORG_SLUG, "--owner", ORG_OWNER)
        self.manage("grant_credits", "--org", ORG_SLUG, "--usd", GRANT_USD, "--note", "drill")
        # The secret is the last line on stdout (the notice goes to stderr).
        self.secret = self.manage("create_api_key", "--org", ORG_SLUG, "--name", "load").split()[-1]
        self.limited_secret = self.manage(
            "create_api_key", "--org", ORG_SLUG, "--name", "limited"
        ).split()[-1]
        self.sql_exec(
            "UPDATE accounts_apikey SET rpm_limit = %s WHERE name = 'limited'",
            (self.args.limited_rpm,),
        )

    def sql_exec(self, statement: str, params: tuple[Any, ...] = ()) -> None:
        import psycopg

        dsn = f"host={HOST} port={self.pg_port} user=postgres dbname={DATABASE}"
        with psycopg.connect(dsn, connect_timeout=10, autocommit=True) as conn:
            conn.execute(statement, params)  # type: ignore[arg-type]

    def gateway_start(self) -> None:
        self.gateway = self._start(
            [
                PYTHON,
                "-m",
                "uvicorn",
                "llmwise.asgi:application",
                "--host",
                HOST,
                "--port",
                str(self.gateway_port),
                "--workers",
                str(self.args.workers),
                "--no-access-log",
                "--lifespan",
                "on",
                "--log-level",
                "warning",
            ],
            log="gateway",
            env=self.env,
        )
        wait_http(self.url + "/healthz", limit=90)
        # Every worker must be up: a request per worker is not guaranteed, so wait for the count.
        deadline = time.monotonic() + 60
        while len(self.workers()) < self.args.workers and time.monotonic() < deadline:
            time.sleep(0.2)

    def workers(self) -> list[int]:
        """The uvicorn worker processes (children of the supervisor that run the app)."""
        if self.gateway is None:
            return []
        return [p for p in children(self.gateway.pid) if "spawn_main" in cmdline(p)]

    def gateway_log(self) -> str:
        path = self.out / f"{self.name}-gateway.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def set_fault(self, **rule: Any) -> None:
        httpx.post(self.sandbox_url + "/_control/faults", json=rule).raise_for_status()

    def clear_faults(self) -> None:
        httpx.delete(self.sandbox_url + "/_control/faults").raise_for_status()


def wait_http(url: str, *, limit: float = 30) -> None:
    deadline = time.monotonic() + limit
    last = ""
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.1)
    raise SystemExit(f"{url} did not come up within {limit:.0f} s ({last})")


@contextlib.contextmanager
def staged(args: argparse.Namespace, out: Path, name: str) -> Iterator[Stage]:
    stage = Stage(args, out, name=name)
    try:
        yield stage.start()
    finally:
        stage.stop()


# ------------------------------------------------------------------------------- load
@dataclass
class Call:
    """One request as the client saw it."""

    kind: str  # "chat" | "stream"
    model: str
    fault: str
    t0: float  # seconds since the load began
    seconds: float = 0.0
    ttfb: float | None = None
    status: int = 0  # 0: no HTTP answer at all
    request_id: str = ""
    outcome: str = ""  # ok | error_envelope | error_raw | broken
    error_code: str = ""
    charged: int | None = None  # what the answer said left the wallet (None: not reported)
    detail: str = ""
    fallbacks: tuple[str, ...] = ()
    attempts: list[str] = field(default_factory=list)  # "openai:error", "openai:skipped", …


def envelope_ok(body: Any, request_id: str) -> bool:
    error = body.get("error") if isinstance(body, dict) else None
    return (
        isinstance(error, dict)
        and all(isinstance(error.get(k), str) and error.get(k) for k in ENVELOPE_KEYS)
        and (not request_id or error["request_id"] == request_id)
    )


def body_for(call: Call, index: int) -> dict[str, Any]:
    marker = f" [[sandbox:{call.fault}]]" if call.fault else ""
    body: dict[str, Any] = {
        "model": call.model,
        "messages": [
            {"role": "user", "content": f"Drill request {index}: say something short.{marker}"}
        ],
        "max_tokens": 64,
    }
    if call.fallbacks:
        body["fallbacks"] = list(call.fallbacks)
    if call.kind == "stream":
        body.update(stream=True, stream_options={"include_usage": True})
    return body


def _attempts(extra: Any) -> list[str]:
    route = extra.get("route") if isinstance(extra, dict) else None
    attempts = route.get("attempts") if isinstance(route, dict) else None
    return [f"{a.get('provider')}:{a.get('status')}" for a in attempts or [] if isinstance(a, dict)]


async def one_call(client: httpx.AsyncClient, secret: str, call: Call, index: int) -> Call:
    started = time.perf_counter()
    headers = {"authorization": f"Bearer {secret}"}
    try:
        if call.kind == "chat":
            response = await client.post(
                "/v1/chat/completions", json=body_for(call, index), headers=headers
            )
            call.status = response.status_code
            call.request_id = response.headers.get("x-request-id", "")
            try:
                data = response.json()
            except ValueError:
                data = None
            if call.status == 200 and isinstance(data, dict) and data.get("choices"):
                call.outcome = "ok"
                call.charged = int(response.headers.get("x-llmwise-cost-micros", "0"))
                call.attempts = _attempts(data.get("llmwise"))
            elif call.status != 200 and envelope_ok(data, call.request_id):
                call.outcome = "error_envelope"
                call.error_code = data["error"]["code"]  # type: ignore[index]
            else:
                call.outcome = "error_raw"
                call.detail = response.text[:200]
        else:
            async with client.stream(
                "POST", "/v1/chat/completions", json=body_for(call, index), headers=headers
            ) as response:
                call.status = response.status_code
                call.request_id = response.headers.get("x-request-id", "")
                call.ttfb = time.perf_counter() - started
                if call.status != 200:
                    raw = await response.aread()
                    try:
                        data = json.loads(raw)
                    except ValueError:
                        data = None
                    if envelope_ok(data, call.request_id):
                        call.outcome = "error_envelope"
                        call.error_code = data["error"]["code"]  # type: ignore[index]
                    else:
                        call.outcome = "error_raw"
                        call.detail = raw[:200].decode(errors="replace")
                else:
                    call.outcome = "broken"  # until [DONE] or an error event arrives
                    async for line in response.aiter_lines():
                        if not line.startswith("data: "):
                            continue
                        payload = line.removeprefix("data: ")
                        if payload == "[DONE]":
                            if call.outcome == "broken":
                                call.outcome = "ok"
                            break
                        event = json.loads(payload)
                        if "error" in event:
                            ok = envelope_ok(event, call.request_id)
                            call.outcome = "error_envelope" if ok else "error_raw"
                            call.error_code = str((event.get("error") or {}).get("code", ""))
                        elif event.get("usage") is not None:
                            extra = event.get("llmwise") or {}
                            call.charged = int(extra.get("charged_micros", 0))
                            call.attempts = _attempts(extra)
    except (httpx.HTTPError, ValueError) as exc:
        if call.outcome != "broken":
            call.outcome = "broken"
        call.detail = f"{type(exc).__name__}: {exc}"[:200]
    call.seconds = time.perf_counter() - started
    return call


@dataclass
class LoadSpec:
    concurrency: int
    seconds: float
    max_requests: int
    stream_share: float = 0.5
    fault_share: float = 0.0
    secret: str = ""
    fallbacks: bool = False  # gpt-4o-mini requests fall back to claude-haiku-4.5


async def run_load(
    url: str,
    spec: LoadSpec,
    *,
    events: list[tuple[float, Callable[[], Any]]] = (),  # type: ignore[assignment]
    sampler: Callable[[float], None] | None = None,
    seed: int = 7,
) -> tuple[list[Call], list[tuple[float, str]]]:
    """A closed loop of ``spec.concurrency`` clients for ``spec.seconds`` (or max requests);
    ``events`` are (second, action) run in a thread at that time (the faults); ``sampler`` is
    called every second with the elapsed time."""
    rng = random.Random(seed)
    calls: list[Call] = []
    happened: list[tuple[float, str]] = []
    begin = time.perf_counter()
    deadline = begin + spec.seconds
    issued = 0
    faults = list(SOAK_FAULTS)
    weights = [SOAK_FAULTS[f] for f in faults]
    limits = httpx.Limits(
        max_connections=spec.concurrency, max_keepalive_connections=spec.concurrency
    )

    def next_call() -> tuple[Call, int] | None:
        nonlocal issued
        if issued >= spec.max_requests or time.perf_counter() >= deadline:
            return None
        issued += 1
        kind = "stream" if rng.random() < spec.stream_share else "chat"
        fault = rng.choices(faults, weights)[0] if rng.random() < spec.fault_share else ""
        model = rng.choice(MODELS)
        fallbacks = (MODELS[1],) if spec.fallbacks and model == MODELS[0] else ()
        call = Call(
            kind=kind,
            model=model,
            fault=fault,
            t0=time.perf_counter() - begin,
            fallbacks=fallbacks,
        )
        return call, issued

    async def worker(client: httpx.AsyncClient) -> None:
        while (item := next_call()) is not None:
            calls.append(await one_call(client, spec.secret, *item))

    async def scheduler() -> None:
        for at, action in sorted(events, key=lambda e: e[0]):
            wait = begin + at - time.perf_counter()
            if wait > 0:
                await asyncio.sleep(wait)
            if time.perf_counter() >= deadline:
                break
            label = await asyncio.to_thread(action)
            happened.append((round(time.perf_counter() - begin, 2), str(label)))

    async def sample() -> None:
        while time.perf_counter() < deadline and sampler is not None:
            await asyncio.to_thread(sampler, time.perf_counter() - begin)
            await asyncio.sleep(1)

    timeout = httpx.Timeout(60.0, connect=5.0)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=timeout) as client:
        tasks = [asyncio.create_task(worker(client)) for _ in range(spec.concurrency)]
        side = [asyncio.create_task(scheduler()), asyncio.create_task(sample())]
        await asyncio.gather(*tasks)
        for task in side:
            task.cancel()
        await asyncio.gather(*side, return_exceptions=True)
    return calls, happened


# ------------------------------------------------------------------------------- analysis
def pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    data = sorted(values)
    return data[min(int(q * len(data)), len(data) - 1)]


def ms(value: float | None) -> str:
    return "—" if value is None else f"{value * 1000:.0f}"


def summarize(calls: list[Call]) -> dict[str, Any]:
    outcomes = Counter(c.outcome for c in calls)
    classes = Counter(("0xx" if c.status == 0 else f"{c.status // 100}xx") for c in calls)
    codes = Counter(f"{c.status} {c.error_code}".strip() for c in calls if c.outcome != "ok")
    ok_chat = [c.seconds for c in calls if c.outcome == "ok" and c.kind == "chat"]
    ok_stream = [c.seconds for c in calls if c.outcome == "ok" and c.kind == "stream"]
    ttfb = [c.ttfb for c in calls if c.outcome == "ok" and c.ttfb is not None]
    return {
        "requests": len(calls),
        "outcomes": dict(outcomes),
        "status_classes": dict(sorted(classes.items())),
        "errors": dict(codes.most_common()),
        "chat_p50": pct(ok_chat, 0.5),
        "chat_p99": pct(ok_chat, 0.99),
        "stream_p50": pct(ok_stream, 0.5),
        "stream_p99": pct(ok_stream, 0.99),
        "ttfb_p99": pct(ttfb, 0.99),
    }


def phase_table(calls: list[Call], phases: list[tuple[str, float, float]]) -> list[str]:
    lines = [
        "| phase | requests | ok | error (envelope) | error (raw) | broken | status classes "
        "| chat p50 / p99 ms | stream p50 / p99 ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, start, end in phases:
        part = [c for c in calls if start <= c.t0 < end]
        s = summarize(part)
        o = s["outcomes"]
        classes = ", ".join(f"{k}: {v}" for k, v in s["status_classes"].items())
        lines.append(
            f"| {name} | {s['requests']} | {o.get('ok', 0)} | {o.get('error_envelope', 0)} "
            f"| {o.get('error_raw', 0)} | {o.get('broken', 0)} | {classes} "
            f"| {ms(s['chat_p50'])} / {ms(s['chat_p99'])} "
            f"| {ms(s['stream_p50'])} / {ms(s['stream_p99'])} |"
        )
    return lines


@dataclass
class Books:
    """What the private database says after a drill."""

    audit_ok: bool = False
    audit: str = ""
    audit_before_sweep_ok: bool = False
    reservations: dict[str, int] = field(default_factory=dict)
    held_before_sweep: int = 0
    hold_ttl_seconds: int = 0
    swept: int = 0
    held_after: int = 0
    double_charged: int = 0
    double_logged: int = 0
    charges_without_log: int = 0
    ok_not_matching_charge: int = 0
    refused_but_charged: int = 0
    held_for_completed: int = 0
    broken_but_charged: int = 0  # settled just before the connection was cut: charged once
    charges: int = 0
    charged_micros: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.problems


def wait_idle(stage: Stage, limit: float = 60) -> None:
    """Until no hold is younger than the drill's longest call could be (streams finishing)."""
    deadline = time.monotonic() + limit
    last = -1
    while time.monotonic() < deadline:
        rows = stage.sql(
            "SELECT count(*) FROM wallet_reservation WHERE status = 'held' "
            "AND created_at > now() - interval '2 minutes'"
        )
        count = int(rows[0][0])
        if count == last:
            return
        last = count
        time.sleep(2)


def _audit(stage: Stage) -> tuple[bool, str]:
    """``manage.py wallet_audit``: passed, and its last line."""
    done = subprocess.run(
        [PYTHON, "manage.py", "wallet_audit"],
        cwd=stage.code,
        env=stage.env,
        capture_output=True,
        text=True,
        check=False,
    )
    output = (done.stdout + done.stderr).strip().splitlines()
    return done.returncode == 0, output[-1] if output else ""


def check_books(stage: Stage, calls: list[Call], *, real_ttl: bool) -> Books:
    books = Books()
    wait_idle(stage)
    books.held_before_sweep = int(
        stage.sql("SELECT count(*) FROM wallet_reservation WHERE status = 'held'")[0][0]
    )
    completed = {c.request_id for c in calls if c.outcome == "ok" and c.request_id}
    held_ids = {
        r[0] for r in stage.sql("SELECT request_id FROM wallet_reservation WHERE status = 'held'")
    }
    books.held_for_completed = len(held_ids & completed)
    books.audit_before_sweep_ok = _audit(stage)[0]
    if books.held_before_sweep:
        ttl = stage.sql(
            "SELECT extract(epoch FROM max(expires_at - created_at)), "
            "extract(epoch FROM max(expires_at) - now()) FROM wallet_reservation "
            "WHERE status = 'held'"
        )[0]
        books.hold_ttl_seconds = round(float(ttl[0] or 0))
        if real_ttl:
            wait = max(float(ttl[1] or 0), 0) + 2
            print(f"  waiting {wait:.0f} s for the holds to expire ...", file=sys.stderr)
            time.sleep(wait)
        else:
            # Time travel for the holds only: their deadline is moved to now, as if the TTL had
            # passed. The load is over, so no live request is touched.
            stage.sql_exec(
                "UPDATE wallet_reservation SET expires_at = now() - interval '1 second' "
                "WHERE status = 'held'"
            )
        out = stage.manage("release_expired_reservations")
        words = out.split()
        books.swept = int(words[words.index("Released") + 1]) if "Released" in words else -1
    books.audit_ok, books.audit = _audit(stage)
    books.reservations = {
        str(s): int(n)
        for s, n in stage.sql("SELECT status, count(*) FROM wallet_reservation GROUP BY status")
    }
    books.held_after = books.reservations.get("held", 0)
    books.double_charged = int(
        stage.sql(
            "SELECT count(*) FROM (SELECT request_id FROM wallet_ledgerentry WHERE kind = "
            "'charge' GROUP BY request_id HAVING count(*) > 1) d"
        )[0][0]
    )
    books.double_logged = int(
        stage.sql(
            "SELECT count(*) FROM (SELECT request_id FROM gateway_requestlog "
            "GROUP BY request_id HAVING count(*) > 1) d"
        )[0][0]
    )
    books.charges_without_log = int(
        stage.sql(
            "SELECT count(*) FROM wallet_ledgerentry l WHERE l.kind = 'charge' AND NOT EXISTS "
            "(SELECT 1 FROM gateway_requestlog r WHERE r.request_id = l.request_id)"
        )[0][0]
    )
    charges = {
        str(r): -int(a)
        for r, a in stage.sql(
            "SELECT request_id, amount_micros FROM wallet_ledgerentry WHERE kind = 'charge'"
        )
    }
    books.charges = len(charges)
    books.charged_micros = sum(charges.values())
    for call in calls:
        if not call.request_id:
            continue
        got = charges.get(call.request_id, 0)
        if call.outcome == "ok" and call.charged is not None and call.charged != got:
            books.ok_not_matching_charge += 1
        # Refused before any text (an HTTP error status): nothing may have been charged.
        if call.status >= 400 and got:
            books.refused_but_charged += 1
        if call.outcome == "broken" and got:
            books.broken_but_charged += 1
    if not books.audit_ok:
        books.problems.append(f"wallet_audit failed: {books.audit}")
    if not books.audit_before_sweep_ok:
        books.problems.append("wallet_audit failed before the sweep")
    for name in (
        "held_after",
        "double_charged",
        "double_logged",
        "charges_without_log",
        "ok_not_matching_charge",
        "refused_but_charged",
        "held_for_completed",
    ):
        if getattr(books, name):
            books.problems.append(f"{name} = {getattr(books, name)}")
    return books


def books_lines(books: Books) -> list[str]:
    before = "OK" if books.audit_before_sweep_ok else "FAILED"
    return [
        f"- books: wallet_audit before the sweep {before}, after "
        f"{'OK' if books.audit_ok else 'FAILED'} ({books.audit}); "
        f"reservations {books.reservations}; held before sweep {books.held_before_sweep} "
        f"(hold TTL {books.hold_ttl_seconds} s), swept {books.swept}, held after "
        f"{books.held_after}",
        f"- charges: {books.charges} ({books.charged_micros} micro-USD); request ids charged "
        f"twice {books.double_charged}; logged twice {books.double_logged}; charges without "
        f"a log row {books.charges_without_log}; completed answers whose charge differs from "
        f"what they reported {books.ok_not_matching_charge}; refused (4xx/5xx) yet charged "
        f"{books.refused_but_charged}; completed yet still held {books.held_for_completed}; "
        f"cut by the fault after their settle had committed (charged once, for the text sent) "
        f"{books.broken_but_charged}",
    ]


def log_findings(stage: Stage) -> dict[str, Any]:
    """Warnings and errors the gateway logged (JSON lines), and tracebacks printed raw."""
    text = stage.gateway_log()
    levels: Counter[str] = Counter()
    messages: Counter[str] = Counter()
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if not isinstance(record, dict):
            continue
        level = str(record.get("level", ""))
        levels[level] += 1
        if level in ("WARNING", "ERROR", "CRITICAL"):
            messages[f"{level} {record.get('logger')}: {str(record.get('message'))[:90]}"] += 1
    return {
        "raw_tracebacks": text.count("Traceback (most recent call last)"),
        "levels": {k: v for k, v in levels.items() if k in ("WARNING", "ERROR", "CRITICAL")},
        "top": dict(messages.most_common(6)),
    }


def raw_examples(calls: list[Call], limit: int = 3) -> list[str]:
    seen: list[str] = []
    for call in calls:
        if call.outcome in ("error_raw", "broken") and call.detail:
            text = f"{call.kind} {call.status} {call.detail}"
            if text not in seen:
                seen.append(text)
        if len(seen) >= limit:
            break
    return seen


# ------------------------------------------------------------------------------- drills
@dataclass
class DrillResult:
    name: str
    lines: list[str]
    data: dict[str, Any]
    passed: bool


def drill_kill9(args: argparse.Namespace, out: Path) -> DrillResult:
    """SIGKILL one worker mid-stream, later the other one (uvicorn restarts each)."""
    with staged(args, out, "kill9") as stage:
        killed: list[dict[str, Any]] = []

        def kill(index: int) -> Callable[[], str]:
            def action() -> str:
                workers = sorted(stage.workers())
                victim = workers[index % len(workers)]
                os.kill(victim, signal.SIGKILL)
                killed.append({"pid": victim, "at": time.time()})
                return f"SIGKILL worker {victim} (of {workers})"

            return action

        spec = LoadSpec(
            concurrency=args.concurrency,
            seconds=args.seconds,
            max_requests=args.max_requests,
            stream_share=0.8,
            secret=stage.secret,
        )
        events = [(args.seconds * 0.3, kill(0)), (args.seconds * 0.6, kill(1))]
        calls, happened = asyncio.run(run_load(stage.url, spec, events=events))
        deadline = time.monotonic() + 30
        while len(stage.workers()) < args.workers and time.monotonic() < deadline:
            time.sleep(0.2)
        workers_after = stage.workers()
        books = check_books(stage, calls, real_ttl=args.real_ttl)
        after = asyncio.run(run_load(stage.url, LoadSpec(4, 5, 40, 0.5, secret=stage.secret)))[0]
        logs = log_findings(stage)
    first, second = happened[0][0] if happened else 0, happened[1][0] if len(happened) > 1 else 0
    phases = [
        ("issued before kill 1", 0, first),
        ("issued between the kills", first, second),
        ("issued after kill 2", second, args.seconds + 1),
    ]
    recovered = summarize(after)["outcomes"].get("ok", 0) == len(after)
    cut = sum(1 for c in calls if c.outcome == "broken" and c.kind == "stream" and c.status == 200)
    unanswered = sum(1 for c in calls if c.outcome == "broken" and c.status == 0)
    lines = [
        f"### kill -9 of a worker ({args.workers} workers, concurrency {args.concurrency}, "
        f"80% streams of ~{args.chunk_ms} ms per chunk)",
        "",
        *[f"- t={at}s {what}" for at, what in happened],
        f"- workers after: {workers_after} (uvicorn restarted the killed ones)",
        f"- requests the kills broke: {cut} streams cut mid-way, {unanswered} requests with no "
        "answer at all; the holds they left were swept, never charged (a stream cut after its "
        "settle had committed is counted in the books below: charged once, for its text)",
        "",
        *phase_table(calls, phases),
        "",
        *books_lines(books),
        f"- after the drill: {len(after)} requests, all complete: {recovered}",
        f"- gateway log: {logs}",
        *[f"- example: {e}" for e in raw_examples(calls)],
    ]
    raw = summarize(calls)["outcomes"].get("error_raw", 0)
    passed = books.clean and recovered and raw == 0
    return DrillResult(
        "kill9",
        lines,
        {"events": happened, "summary": summarize(calls), "books": asdict(books), "logs": logs},
        passed,
    )


def _limited_probe(stage: Stage, seconds: float) -> dict[str, int]:
    """Hammer the rate-limited key for ``seconds``: how many got through vs 429."""

    async def go() -> Counter[int]:
        statuses: Counter[int] = Counter()
        deadline = time.perf_counter() + seconds
        async with httpx.AsyncClient(base_url=stage.url, timeout=30) as client:

            async def one() -> None:
                while time.perf_counter() < deadline:
                    try:
                        response = await client.post(
                            "/v1/chat/completions",
                            json={
                                "model": MODELS[0],
                                "messages": [{"role": "user", "content": "limited"}],
                                "max_tokens": 8,
                            },
                            headers={"authorization": f"Bearer {stage.limited_secret}"},
                        )
                        statuses[response.status_code] += 1
                    except httpx.HTTPError:
                        statuses[0] += 1

            await asyncio.gather(*(one() for _ in range(4)))
        return statuses

    return {str(k): v for k, v in sorted(asyncio.run(go()).items())}


def _health_status(stage: Stage) -> tuple[int, str]:
    try:
        response = httpx.get(
            stage.url + "/api/v1/health/providers",
            headers={"authorization": f"Bearer {stage.secret}"},
            timeout=10,
        )
    except httpx.HTTPError as exc:
        return 0, type(exc).__name__
    if response.status_code != 200:
        return response.status_code, response.text[:120]
    rows = {(r["provider"], r["model"]): r for r in response.json()["data"]}
    openai = rows.get(("openai", MODELS[0]), {})
    return 200, f"openai/{MODELS[0]}: state {openai.get('state')}, calls {openai.get('calls')}"


def _openai_attempts(calls: list[Call]) -> dict[str, int]:
    """How requests naming gpt-4o-mini (with a fallback) got on with its provider."""
    seen: Counter[str] = Counter()
    for call in calls:
        if call.model != MODELS[0] or call.outcome != "ok":
            continue
        first = next((a for a in call.attempts if a.startswith("openai:")), "openai:?")
        seen[first.split(":", 1)[1]] += 1
    return dict(seen)


def drill_redis(args: argparse.Namespace, out: Path) -> DrillResult:
    """Redis goes away (stopped, or frozen with SIGSTOP) during load, then comes back. While it
    is away the sandbox fails every openai call for a while: requests for gpt-4o-mini fall back
    to claude-haiku-4.5, and whether openai was tried or skipped (its breaker open) shows
    whether health still works (per process) without Redis."""
    name = "redis-freeze" if args.freeze else "redis"
    with staged(args, out, name) as stage:
        down_at, up_at = args.seconds * 0.25, args.seconds * 0.7
        fault_at, fault_end = down_at + 6, up_at - 2
        notes: dict[str, Any] = {}

        def down() -> str:
            if args.freeze:
                stage.redis_freeze()
                return "Redis frozen (SIGSTOP)"
            stage.redis_stop()
            return "Redis stopped"

        def up() -> str:
            if args.freeze:
                stage.redis_thaw()
                return "Redis thawed (SIGCONT)"
            stage.redis_start()
            return "Redis started again (empty)"

        def openai_failing() -> str:
            stage.set_fault(provider="openai", fault="http_500")
            return "sandbox: every openai call fails (http_500)"

        def openai_back() -> str:
            stage.clear_faults()
            return "sandbox: faults cleared"

        def health_probe(label: str) -> Callable[[], str]:
            def action() -> str:
                notes[f"health {label}"] = _health_status(stage)
                return f"health API {label}: {notes[f'health {label}']}"

            return action

        def limited(label: str) -> Callable[[], str]:
            def action() -> str:
                notes[f"limited {label}"] = _limited_probe(stage, 5)
                return f"rate-limited key ({args.limited_rpm} rpm) for 5 s {label}: " + str(
                    notes[f"limited {label}"]
                )

            return action

        spec = LoadSpec(
            concurrency=args.concurrency,
            seconds=args.seconds,
            max_requests=args.max_requests,
            stream_share=0.5,
            secret=stage.secret,
            fallbacks=True,
        )
        events = [
            (1, limited("before")),
            (down_at - 2, health_probe("before")),
            (down_at, down),
            (down_at + 1, health_probe("during")),
            (down_at + 1.5, limited("during")),
            (fault_at, openai_failing),
            (fault_end, openai_back),
            (up_at, up),
            (up_at + 6, health_probe("after")),
            (up_at + 7, limited("after")),
        ]
        calls, happened = asyncio.run(run_load(stage.url, spec, events=events))
        books = check_books(stage, calls, real_ttl=args.real_ttl)
        logs = log_findings(stage)
    at = {what: when for when, what in happened}
    t_down = next(
        (
            t
            for w, t in at.items()
            if w.startswith("Redis") and "again" not in w and "thawed" not in w
        ),
        down_at,
    )
    t_up = next((t for w, t in at.items() if "again" in w or "thawed" in w), up_at)
    t_fault = next((t for w, t in at.items() if "fails" in w), fault_at)
    t_clear = next((t for w, t in at.items() if "cleared" in w), fault_end)
    phases = [
        ("before", 0, t_down),
        ("Redis down", t_down, t_fault),
        ("Redis down + openai failing", t_fault, t_clear),
        ("Redis down, openai back", t_clear, t_up),
        ("after", t_up, args.seconds + 1),
    ]
    failing = [c for c in calls if t_fault + 1 <= c.t0 < t_clear]
    attempts = _openai_attempts(failing)
    during = [c for c in calls if t_down <= c.t0 < t_up]
    before = [c for c in calls if c.t0 < t_down]
    ok_share = sum(c.outcome == "ok" for c in during) / len(during) if during else 0.0
    rate = (len(during) / (t_up - t_down)) / (len(before) / t_down) if before else 0.0
    raw = summarize(calls)["outcomes"].get("error_raw", 0)
    lines = [
        f"### Redis {'frozen (SIGSTOP)' if args.freeze else 'stopped'} during load "
        f"({args.workers} workers, concurrency {args.concurrency}, half streams, gpt-4o-mini "
        "requests with claude-haiku-4.5 as fallback)",
        "",
        *[f"- t={when}s {what}" for when, what in happened],
        "",
        *phase_table(calls, phases),
        "",
        f"- while Redis was down: {ok_share:.2%} of requests complete; request rate "
        f"{rate:.2f} times the rate before",
        f"- gpt-4o-mini requests issued while openai failed (from 1 s after the fault on): "
        f"first openai attempt {attempts} (skipped = its breaker was open in that process)",
        *books_lines(books),
        f"- gateway log: {logs}",
        *[f"- example: {e}" for e in raw_examples(calls)],
    ]
    passed = books.clean and raw == 0 and ok_share >= 0.99 and rate >= 0.5
    return DrillResult(
        name,
        lines,
        {
            "events": happened,
            "notes": notes,
            "summary": summarize(calls),
            "openai_attempts_while_failing": attempts,
            "books": asdict(books),
            "logs": logs,
        },
        passed,
    )


def drill_postgres(args: argparse.Namespace, out: Path) -> DrillResult:
    """PostgreSQL stops (fast or immediate) during load and starts again after a pause."""
    name = f"postgres-{args.mode}"
    with staged(args, out, name) as stage:
        down_at = args.seconds * 0.3
        marks: dict[str, float] = {}

        def restart() -> str:
            began = time.perf_counter()
            stage.pg_stop(args.mode)
            marks["stopped"] = time.perf_counter()
            time.sleep(args.down_seconds)
            stage.pg_start()
            marks["started"] = time.perf_counter()
            return (
                f"PostgreSQL stopped ({args.mode}) and started again: down "
                f"{marks['started'] - began:.1f} s"
            )

        spec = LoadSpec(
            concurrency=args.concurrency,
            seconds=args.seconds,
            max_requests=args.max_requests,
            stream_share=0.5,
            secret=stage.secret,
        )
        calls, happened = asyncio.run(run_load(stage.url, spec, events=[(down_at, restart)]))
        books = check_books(stage, calls, real_ttl=args.real_ttl)
        logs = log_findings(stage)
    back_at = happened[0][0] if happened else down_at
    # First request issued after the restart that completed, and failures after that point.
    later = sorted((c for c in calls if c.t0 >= back_at), key=lambda c: c.t0)
    first_ok = next((c.t0 for c in later if c.outcome == "ok"), None)
    failed_after = sum(1 for c in later if c.outcome != "ok")
    phases = [
        ("before", 0, down_at),
        ("restart", down_at, back_at),
        ("after", back_at, args.seconds + 1),
    ]
    raw = summarize(calls)["outcomes"].get("error_raw", 0)
    lines = [
        f"### PostgreSQL restart during load (`pg_ctl stop -m {args.mode}`, "
        f"{args.down_seconds} s down, {args.workers} workers, concurrency {args.concurrency})",
        "",
        *[f"- t={at}s {what}" for at, what in happened],
        f"- first request issued after the restart that completed: "
        f"{'never' if first_ok is None else f't={first_ok:.2f}s'}; requests issued after "
        f"the restart that failed: {failed_after}",
        "",
        *phase_table(calls, phases),
        "",
        *books_lines(books),
        f"- gateway log: {logs}",
        *[f"- example: {e}" for e in raw_examples(calls)],
    ]
    passed = books.clean and raw == 0 and first_ok is not None
    return DrillResult(
        name,
        lines,
        {"events": happened, "summary": summarize(calls), "books": asdict(books), "logs": logs},
        passed,
    )


def drill_soak(args: argparse.Namespace, out: Path) -> DrillResult:
    """Steady mixed load with sandbox errors for ``--minutes``: memory, p99, the books."""
    seconds = args.minutes * 60
    with staged(args, out, "soak") as stage:
        samples: list[dict[str, Any]] = []

        def sample(elapsed: float) -> None:
            if int(elapsed) % 10:
                return
            rss = {pid: rss_mib(pid) for pid in stage.workers()}
            samples.append({"t": round(elapsed), "rss": rss})

        spec = LoadSpec(
            concurrency=args.concurrency,
            seconds=seconds,
            max_requests=10**9,
            stream_share=0.5,
            fault_share=args.fault_share,
            secret=stage.secret,
        )
        # Warm-up first (connections, caches, imports), not measured.
        asyncio.run(
            run_load(stage.url, LoadSpec(args.concurrency, 15, 10**9, 0.5, 0.05, stage.secret))
        )
        calls, _ = asyncio.run(run_load(stage.url, spec, sampler=sample))
        held_now = int(
            stage.sql("SELECT count(*) FROM wallet_reservation WHERE status='held'")[0][0]
        )
        books = check_books(stage, calls, real_ttl=args.real_ttl)
        logs = log_findings(stage)
    minute = 60.0
    windows = [(f"min {i + 1}", i * minute, (i + 1) * minute) for i in range(int(args.minutes))]
    totals = [
        (s["t"], sum(v for v in s["rss"].values() if v is not None)) for s in samples if s["rss"]
    ]
    # The trend after the first third of the run: a process grows while its caches and
    # allocator arenas fill; what matters is whether it keeps growing once they have.
    settled = [(t, r) for t, r in totals if t >= seconds / 3]
    slope = None
    if len(settled) > 2:
        xs, ys = [t for t, _ in settled], [r for _, r in settled]
        slope = statistics.linear_regression(xs, ys).slope * 60  # MiB per minute
    first_rss = totals[0][1] if totals else None
    last_rss = totals[-1][1] if totals else None
    summary = summarize(calls)
    per_min = []
    for label, start, end in windows:
        part = summarize([c for c in calls if start <= c.t0 < end])
        per_min.append((label, part))
    lines = [
        f"### Soak: {args.minutes} min, concurrency {args.concurrency}, half streams, "
        f"{args.fault_share:.0%} with a sandbox fault ({', '.join(SOAK_FAULTS)})",
        "",
        f"- {summary['requests']} requests ({summary['requests'] / seconds:.1f}/s); outcomes "
        f"{summary['outcomes']}; status classes {summary['status_classes']}",
        f"- errors by status and code: {summary['errors']}",
        f"- worker RSS (sum of {args.workers}): {first_rss and round(first_rss)} MiB at the "
        f"first sample → {last_rss and round(last_rss)} MiB at the end; slope after the first "
        f"third {'—' if slope is None else f'{slope:+.2f}'} MiB/min",
        f"- held reservations right after the load: {held_now}",
        "",
        "| minute | requests | ok | errors | chat p50 / p99 ms | stream p50 / p99 ms |",
        "|---|---|---|---|---|---|",
        *[
            f"| {label} | {p['requests']} | {p['outcomes'].get('ok', 0)} "
            f"| {p['requests'] - p['outcomes'].get('ok', 0)} "
            f"| {ms(p['chat_p50'])} / {ms(p['chat_p99'])} "
            f"| {ms(p['stream_p50'])} / {ms(p['stream_p99'])} |"
            for label, p in per_min
        ],
        "",
        *books_lines(books),
        f"- gateway log: {logs}",
        *[f"- example: {e}" for e in raw_examples(calls)],
    ]
    raw = summary["outcomes"].get("error_raw", 0)
    # Stability: the last minute's p99 within twice the first's (and 250 ms of slack for a
    # shared machine), and worker memory growing by less than 2 MiB a minute.
    p99s = [p["chat_p99"] for _, p in per_min if p["chat_p99"] is not None]
    p99_stable = len(p99s) < 2 or p99s[-1] <= 2 * p99s[0] + 0.25
    memory_flat = slope is None or slope < SOAK_MAX_RSS_SLOPE_MIB_PER_MIN
    lines.append(
        f"- checks: p99 stable {p99_stable} (chat p99 first minute {ms(p99s[0] if p99s else None)}"
        f" ms, last {ms(p99s[-1] if p99s else None)} ms); memory flat {memory_flat}"
    )
    passed = (
        books.clean and raw == 0 and books.held_before_sweep == 0 and p99_stable and memory_flat
    )
    return DrillResult(
        "soak",
        lines,
        {
            "summary": summary,
            "per_minute": dict(per_min),
            "rss_samples": samples,
            "rss_slope_mib_per_min": slope,
            "books": asdict(books),
            "logs": logs,
        },
        passed,
    )


# ------------------------------------------------------------------------------- main
def parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    parser.add_argument("drill", choices=("kill9", "redis", "postgres", "soak", "all"))
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=24)
    parser.add_argument("--seconds", type=float, default=40, help="load per drill (not soak)")
    parser.add_argument("--max-requests", type=int, default=20_000)
    parser.add_argument("--minutes", type=float, default=5, help="soak length")
    parser.add_argument("--fault-share", type=float, default=0.05, help="soak: share faulted")
    parser.add_argument("--upstream-ms", type=int, default=20, help="sandbox first-byte delay")
    parser.add_argument("--chunk-ms", type=int, default=60, help="sandbox delay between chunks")
    parser.add_argument("--first-byte-timeout", type=float, default=5.0)
    parser.add_argument("--total-timeout", type=float, default=30.0)
    parser.add_argument("--limited-rpm", type=int, default=60, help="the rate-limited key")
    parser.add_argument("--freeze", action="store_true", help="redis: SIGSTOP instead of stop")
    parser.add_argument("--mode", choices=("fast", "immediate"), default="fast")
    parser.add_argument("--down-seconds", type=float, default=5.0, help="postgres downtime")
    parser.add_argument("--real-ttl", action="store_true", help="wait for holds to expire")
    parser.add_argument("--keep", action="store_true", help="keep the temporary directories")
    parser.add_argument(
        "--in-place", action="store_true", help="run the working tree, not a snapshot of it"
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse(argv)
    out = REPO / "var" / "bench" / f"drills-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    holder = Path(tempfile.mkdtemp(prefix="llmwise-drill-code-"))
    args.code = REPO if args.in_place else snapshot(holder)
    dirty = run(["git", "status", "--porcelain", "--untracked-files=no"], check=False).strip()
    version = run(["git", "rev-parse", "--short", "HEAD"], check=False).strip()
    version += " + uncommitted changes" if dirty else ""
    plan: list[tuple[Callable[[argparse.Namespace, Path], DrillResult], dict[str, Any]]]
    if args.drill == "all":
        plan = [
            (drill_kill9, {}),
            (drill_redis, {"freeze": False}),
            (drill_redis, {"freeze": True}),
            (drill_postgres, {"mode": "fast"}),
            (drill_soak, {}),
        ]
    else:
        plan = [
            (
                {
                    "kill9": drill_kill9,
                    "redis": drill_redis,
                    "postgres": drill_postgres,
                    "soak": drill_soak,
                }[args.drill],
                {},
            )
        ]
    results: list[DrillResult] = []
    try:
        for drill, overrides in plan:
            variant = argparse.Namespace(**{**vars(args), **overrides})
            print(f"== {drill.__name__} {overrides or ''}", file=sys.stderr)
            result = drill(variant, out)
            results.append(result)
            verdict = "PASS" if result.passed else "FAIL"
            print("\n".join(result.lines) + f"\n\n**{verdict}**\n", flush=True)
    finally:
        shutil.rmtree(holder, ignore_errors=True)
    header = [f"## Fault drills ({time.strftime('%F %T')}, git {version})", ""]
    body = [
        line
        for r in results
        for line in [*r.lines, "", f"**{'PASS' if r.passed else 'FAIL'}**", ""]
    ]
    (out / "summary.md").write_text("\n".join(header + body) + "\n")
    (out / "results.json").write_text(
        json.dumps({r.name: {**r.data, "passed": r.passed} for r in results}, indent=2, default=str)
    )
    print(f"(results in {out.relative_to(REPO)})", file=sys.stderr)
    return 0 if all(r.passed for r in results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
