#!/usr/bin/env python3
"""Mesh failover under a dead provider: success rate and the latency failover adds.

Everything stays on 127.0.0.1 and every load is bounded (request count and seconds). The stage:

* the sandbox upstreams (``python -m apps.gateway.sandbox``) in their own process, with a fixed
  first-byte latency (``--upstream-ms``, default 20 ms) so answers look like a fast provider;
* our gateway: one uvicorn worker of ``llmwise.settings.prod`` on PostgreSQL (database
  ``llmwise_mesh_bench``, created if missing) and Redis (``--redis-url``), every provider routed to
  the sandbox, a real API key and credit (``create_org``, ``grant_credits``, ``create_api_key``),
  organization RPM/TPM ceilings off (the load would pass 10,000 requests a minute);
* the load: a closed loop of ``--concurrency`` httpx clients, each request a chain of three
  providers: ``gpt-4o-mini`` (openai) → ``claude-haiku-4.5`` (anthropic) →
  ``gemini-2.5-flash-lite`` (gemini).

Phases (all with that chain):

1. ``baseline``: no fault — openai answers everything;
2. ``openai_down``: the sandbox fails every openai call (``http_500``) — the breaker opens after
   a burst and openai is skipped, probed once per cool-down (default 10 s);
3. ``no_breaker`` (unless ``--skip-no-breaker``): the same fault with a gateway restarted with
   the breaker disabled, so *every* request first tries openai and fails over: the raw cost of a
   failover attempt, which the breaker saves.

It prints success rates, p50/p99/max latency per phase, the attempts seen (from
``llmwise.route.attempts``), and the added latency (phase vs baseline). At the end it checks the
wallet (``manage.py wallet_audit``) and that no reservation is left held.

Run (~2-4 minutes on 2 cores):

    .venv/bin/python bench/failover.py                  # 10,000 requests with openai down
    .venv/bin/python bench/failover.py --requests 2000  # a lighter run; --help for the knobs

Output: Markdown on stdout and ``var/bench/failover-<timestamp>/results.json``.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
HOST = "127.0.0.1"
ORG_SLUG = "bench-failover"
ORG_OWNER = "bench-failover@example.com"
CHAIN = ("gpt-4o-mini", "claude-haiku-4.5", "gemini-2.5-flash-lite")
FAILING_PROVIDER = "openai"
GRANT_USD = "20000"
SUCCESS_TARGET = 0.999
_procs: list[subprocess.Popen[bytes]] = []


def _stop_all() -> None:
    for proc in _procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in _procs:
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
    _procs.clear()


atexit.register(_stop_all)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _run(cmd: list[str], *, env: dict[str, str]) -> str:
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{done.stdout}\n{done.stderr}")
    return done.stdout


def _start(cmd: list[str], *, env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT)
    _procs.append(proc)
    return proc


def _wait_http(url: str, proc: subprocess.Popen[bytes], limit: float = 60) -> None:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"{url}: the process exited ({proc.returncode})")
        try:
            httpx.get(url, timeout=1)
            return
        except httpx.HTTPError:
            time.sleep(0.1)
    raise SystemExit(f"{url} did not come up within {limit:.0f} s")


def _env(args: argparse.Namespace, sandbox_url: str, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.endswith("_BASE_URL")}
    env.update(
        DJANGO_SETTINGS_MODULE="llmwise.settings.prod",
        SECRET_KEY="bench-only-not-a-secret-" + "x" * 40,  # throwaway, loopback only
        FIELD_ENCRYPTION_KEYS="bench-only-field-key-" + "0" * 43,
        ALLOWED_HOSTS=HOST,
        SECURE_SSL_REDIRECT="false",
        DATABASE_URL=f"postgres://{args.pg_user}@{HOST}:{args.pg_port}/{args.database}",
        REDIS_URL=args.redis_url,
        PROVIDER_SANDBOX="true",
        PROVIDER_SANDBOX_URL=sandbox_url,
        GATEWAY_ORG_RPM="0",
        GATEWAY_ORG_TPM="0",
        STATIC_ROOT=str(Path(tempfile.gettempdir()) / "llmwise-bench-static"),
        LOG_LEVEL="WARNING",
        PYTHONUNBUFFERED="1",
        **extra,
    )
    return env


def _setup(args: argparse.Namespace, env: dict[str, str]) -> str:
    pg = ["-h", HOST, "-p", str(args.pg_port), "-U", args.pg_user]
    names = _run(["psql", *pg, "-Atc", "SELECT datname FROM pg_database"], env=env).split()
    if args.database not in names:
        _run(["createdb", *pg, args.database], env=env)
    manage = [PYTHON, "manage.py"]
    _run([*manage, "migrate", "--noinput", "-v", "0"], env=env)
    _run([*manage, "create_org", "--slug", ORG_SLUG, "--owner", ORG_OWNER], env=env)
    _run(
        [*manage, "grant_credits", "--org", ORG_SLUG, "--usd", GRANT_USD, "--note", "failover"],
        env=env,
    )
    out = _run([*manage, "create_api_key", "--org", ORG_SLUG, "--name", "failover"], env=env)
    return out.strip().splitlines()[-1]


@dataclass
class Phase:
    name: str
    latencies_ms: list[float] = field(default_factory=list)
    statuses: Counter[int] = field(default_factory=Counter)
    attempts: Counter[str] = field(default_factory=Counter)  # "openai:error", …
    answered_by: Counter[str] = field(default_factory=Counter)
    failover_latencies_ms: list[float] = field(default_factory=list)  # tried the dead one
    seconds: float = 0.0

    @property
    def total(self) -> int:
        return sum(self.statuses.values())

    @property
    def ok(self) -> int:
        return self.statuses.get(200, 0)

    def pct(self, q: float, values: list[float] | None = None) -> float | None:
        data = sorted(self.latencies_ms if values is None else values)
        if not data:
            return None
        return data[min(int(q * len(data)), len(data) - 1)]

    def summary(self) -> dict[str, Any]:
        return {
            "requests": self.total,
            "ok": self.ok,
            "success_rate": self.ok / self.total if self.total else None,
            "statuses": dict(self.statuses),
            "seconds": round(self.seconds, 2),
            "req_per_s": round(self.total / self.seconds, 1) if self.seconds else None,
            "p50_ms": self.pct(0.5),
            "p99_ms": self.pct(0.99),
            "max_ms": max(self.latencies_ms) if self.latencies_ms else None,
            "mean_ms": statistics.fmean(self.latencies_ms) if self.latencies_ms else None,
            "attempts": dict(self.attempts),
            "answered_by": dict(self.answered_by),
            "tried_failing_provider": len(self.failover_latencies_ms),
            "tried_failing_p50_ms": self.pct(0.5, self.failover_latencies_ms),
            "tried_failing_p99_ms": self.pct(0.99, self.failover_latencies_ms),
        }


async def _load(
    name: str, url: str, secret: str, *, requests: int, concurrency: int, max_seconds: float
) -> Phase:
    phase = Phase(name)
    body = {
        "model": CHAIN[0],
        "fallbacks": list(CHAIN[1:]),
        "messages": [{"role": "user", "content": "Say something short about failover."}],
        "max_tokens": 32,
    }
    headers = {"authorization": f"Bearer {secret}"}
    remaining = requests
    deadline = time.monotonic() + max_seconds
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def worker(client: httpx.AsyncClient) -> None:
        nonlocal remaining
        while remaining > 0 and time.monotonic() < deadline:
            remaining -= 1
            started = time.perf_counter()
            try:
                response = await client.post("/v1/chat/completions", json=body, headers=headers)
                status = response.status_code
                data = response.json()
            except (httpx.HTTPError, ValueError):
                status, data = 0, {}
            elapsed = (time.perf_counter() - started) * 1000
            phase.latencies_ms.append(elapsed)
            phase.statuses[status] += 1
            route = (data.get("llmwise") or {}).get("route") or {}
            tried_failing = False
            for attempt in route.get("attempts", []):
                phase.attempts[f"{attempt['provider']}:{attempt['status']}"] += 1
                if attempt["provider"] == FAILING_PROVIDER and attempt["status"] == "error":
                    tried_failing = True
            if tried_failing:
                phase.failover_latencies_ms.append(elapsed)
            if status == 200:
                phase.answered_by[data.get("model", "?")] += 1

    started = time.monotonic()
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        await asyncio.gather(*(worker(client) for _ in range(concurrency)))
    phase.seconds = time.monotonic() - started
    return phase


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.1f}"


def _report(phases: list[Phase], args: argparse.Namespace) -> str:
    lines = [
        f"## Mesh failover benchmark ({time.strftime('%F %T')})",
        "",
        f"Chain {' → '.join(CHAIN)}; concurrency {args.concurrency}; sandbox first-byte latency "
        f"{args.upstream_ms} ms; one uvicorn worker, PostgreSQL + Redis.",
        "",
        "| phase | requests | success | req/s | p50 ms | p99 ms | max ms | tried dead provider "
        "| their p50 / p99 ms |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for phase in phases:
        s = phase.summary()
        rate = f"{100 * s['success_rate']:.3f}%" if s["success_rate"] is not None else "—"
        lines.append(
            f"| {phase.name} | {s['requests']} | {rate} | {s['req_per_s']} | {_fmt(s['p50_ms'])} "
            f"| {_fmt(s['p99_ms'])} | {_fmt(s['max_ms'])} | {s['tried_failing_provider']} "
            f"| {_fmt(s['tried_failing_p50_ms'])} / {_fmt(s['tried_failing_p99_ms'])} |"
        )
    base = phases[0].summary()
    lines.append("")
    for phase in phases[1:]:
        s = phase.summary()
        if base["p50_ms"] is not None and s["p50_ms"] is not None:
            p50 = s["p50_ms"] - base["p50_ms"]
            p99 = s["p99_ms"] - base["p99_ms"]
            lines.append(
                f"- added latency, {phase.name} vs baseline: p50 {p50:+.1f} ms, p99 {p99:+.1f} ms"
            )
        lines.append(f"- {phase.name} attempts: {dict(sorted(phase.attempts.items()))}")
    down = next((p for p in phases if p.name == "openai_down"), None)
    if down is not None and down.total:
        share = down.ok / down.total
        verdict = "PASS" if share >= SUCCESS_TARGET else "FAIL"
        lines.append(
            f"- openai_down success {100 * share:.3f}% (target ≥ {100 * SUCCESS_TARGET:.1f}%): "
            f"{verdict}"
        )
    return "\n".join(lines)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=10_000, help="with openai down")
    parser.add_argument("--baseline-requests", type=int, default=2_000)
    parser.add_argument("--no-breaker-requests", type=int, default=2_000)
    parser.add_argument("--skip-no-breaker", action="store_true")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--upstream-ms", type=int, default=20)
    parser.add_argument("--max-seconds", type=float, default=300, help="cap per phase")
    parser.add_argument("--database", default="llmwise_mesh_bench")
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/3")
    parser.add_argument("--pg-user", default="postgres")
    parser.add_argument("--pg-port", type=int, default=5432)
    return parser.parse_args(argv)


def _gateway(env: dict[str, str], out: Path, tag: str) -> tuple[str, subprocess.Popen[bytes]]:
    port = _free_port()
    proc = _start(
        [
            PYTHON,
            "-m",
            "uvicorn",
            "llmwise.asgi:application",
            "--host",
            HOST,
            "--port",
            str(port),
            "--no-access-log",
            "--log-level",
            "warning",
        ],
        env=env,
        log=out / f"gateway-{tag}.log",
    )
    url = f"http://{HOST}:{port}"
    _wait_http(url + "/healthz", proc)
    return url, proc


def _flush_health(redis_url: str) -> None:
    """Start each gateway with no breaker state left from an earlier phase or run."""
    import redis  # the gateway's own dependency

    client = redis.Redis.from_url(redis_url)
    for key in client.scan_iter("llmwise:ctr:*health:*"):
        client.delete(key)
    client.close()


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    out = REPO / "var" / "bench" / f"failover-{time.strftime('%Y%m%d-%H%M%S')}"
    out.mkdir(parents=True, exist_ok=True)
    sandbox_port = _free_port()
    sandbox_url = f"http://{HOST}:{sandbox_port}"
    sandbox = _start(
        [
            PYTHON,
            "-m",
            "apps.gateway.sandbox",
            "--port",
            str(sandbox_port),
            "--latency-ms",
            str(args.upstream_ms),
        ],
        env=dict(os.environ),
        log=out / "sandbox.log",
    )
    _wait_http(sandbox_url + "/_control/health", sandbox)
    env = _env(args, sandbox_url)
    secret = _setup(args, env)
    _flush_health(args.redis_url)
    httpx.delete(sandbox_url + "/_control/faults")
    url, gateway = _gateway(env, out, "mesh")
    phases: list[Phase] = []
    load = {"concurrency": args.concurrency, "max_seconds": args.max_seconds}
    # A short warm-up (connections, caches), not measured.
    asyncio.run(_load("warmup", url, secret, requests=200, **load))
    phases.append(
        asyncio.run(_load("baseline", url, secret, requests=args.baseline_requests, **load))
    )
    httpx.post(
        sandbox_url + "/_control/faults", json={"provider": FAILING_PROVIDER, "fault": "http_500"}
    ).raise_for_status()
    phases.append(asyncio.run(_load("openai_down", url, secret, requests=args.requests, **load)))
    gateway.terminate()
    gateway.wait(timeout=10)
    if not args.skip_no_breaker:
        _flush_health(args.redis_url)
        no_breaker = _env(args, sandbox_url, GATEWAY_MESH_BREAKER_MIN_CALLS=str(10**9))
        url, gateway = _gateway(no_breaker, out, "no-breaker")
        asyncio.run(_load("warmup", url, secret, requests=100, **load))
        phases.append(
            asyncio.run(_load("no_breaker", url, secret, requests=args.no_breaker_requests, **load))
        )
        gateway.terminate()
        gateway.wait(timeout=10)
    httpx.delete(sandbox_url + "/_control/faults")
    audit = _run([PYTHON, "manage.py", "wallet_audit"], env=env).strip()
    held = (
        _run(
            [
                PYTHON,
                "manage.py",
                "shell",
                "-c",
                "from apps.wallet.models import Reservation as R;"
                "print(R.objects.filter(status=R.Status.HELD).count())",
            ],
            env=env,
        )
        .strip()
        .splitlines()[-1]
    )  # after the shell's "N objects imported" banner
    report = _report(phases, args)
    report += (
        f"\n- wallet_audit: {audit.splitlines()[-1] if audit else 'ok'}; reservations held: {held}"
    )
    (out / "results.json").write_text(
        json.dumps({p.name: p.summary() for p in phases}, indent=2, default=str)
    )
    (out / "summary.md").write_text(report + "\n")
    print(report)
    print(f"\n(results in {out.relative_to(REPO)})")
    _stop_all()
    down = next(p for p in phases if p.name == "openai_down")
    return 0 if down.total and down.ok / down.total >= SUCCESS_TARGET else 1


if __name__ == "__main__":
    raise SystemExit(main())
