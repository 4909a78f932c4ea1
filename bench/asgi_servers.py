#!/usr/bin/env python3
"""Serve LLMWise with uvicorn, granian and daphne side by side and measure each one.

One run does everything, bounded in time and on 127.0.0.1 only:

1. Setup in the embedded default (SQLite at var/llmwise.db, no DATABASE_URL / REDIS_URL):
   ``manage.py migrate``, ``create_org --slug bench`` and ``create_api_key`` (its secret is the
   last line of stdout) so the authenticated DRF endpoint can be loaded too.
2. Lifespan probe: each server briefly serves a tiny ASGI app (``lifespan_probe`` below) that
   reports whether the server sent ``lifespan.startup``. Our app starts its in-process
   scheduler from the lifespan, so a server without lifespan support silently drops it.
3. For each round: start all servers side by side (different ports, one process/worker each,
   serving ``llmwise.asgi:application``), wait until ``/healthz`` answers, and check that every
   endpoint returns 200 with the expected body. Then for each endpoint and concurrency (1, 16),
   load each server back to back, rotating which one goes first, so that the noise of a busy
   machine hits all of them alike. Endpoints: ``GET /healthz`` (minimal sync view), ``GET /``
   (template-rendered landing page), ``GET /api/v1/key`` (DRF + API-key lookup in the DB).
   Each load is closed-loop and stops after ``-n`` requests or ``--duration`` seconds,
   whichever comes first. Besides req/s and latency it records the server's CPU time per
   request (utime+stime of its process tree, which contention barely affects). At the end of
   the round: peak RSS (VmHWM summed over the process tree), then every server is stopped by
   process group (also on errors and Ctrl-C).
4. Print Markdown tables (per round with the ratio to uvicorn in the same round, then medians)
   and write them plus the raw JSON to ``var/bench/asgi-<timestamp>/``.

Run (about 3-4 minutes on 2 cores):

    .venv/bin/pip install -r bench/requirements-asgi.txt
    .venv/bin/python bench/asgi_servers.py

The load client is aiohttp on uvloop, in this process; it shares the CPU with the server, the
same way for every server.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import http.client
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
BENCH_DIR = Path(__file__).resolve().parent
BIN = Path(sys.executable).parent
HOST = "127.0.0.1"  # everything stays on loopback
APP = "llmwise.asgi:application"
PROBE_APP = "asgi_servers:lifespan_probe"
SETTINGS = "llmwise.settings.dev"

# ------------------------------------------------------------------------------ lifespan probe
_probe_state = {"startup": False}


async def lifespan_probe(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """Tiny ASGI app: answers every HTTP request with whether lifespan.startup was received."""
    if scope["type"] == "lifespan":
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                _probe_state["startup"] = True
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await send({"type": "lifespan.shutdown.complete"})
                return
    elif scope["type"] == "http":
        body = b"lifespan=1" if _probe_state["startup"] else b"lifespan=0"
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"10")],
            }
        )
        await send({"type": "http.response.body", "body": body})


# ------------------------------------------------------------------------------ servers
def _uvicorn(port: int, app: str) -> list[str]:
    return [
        str(BIN / "uvicorn"),
        app,
        "--host",
        HOST,
        "--port",
        str(port),
        "--loop",
        "uvloop",
        "--http",
        "httptools",
        "--lifespan",
        "on",
        "--no-access-log",
        "--log-level",
        "warning",
    ]


def _granian(port: int, app: str) -> list[str]:
    # WebSockets stay enabled (the default): Channels serves /ws/ routes in the same app.
    return [
        str(BIN / "granian"),
        "--interface",
        "asgi",
        "--host",
        HOST,
        "--port",
        str(port),
        "--workers",
        "1",
        "--loop",
        "uvloop",
        "--no-access-log",
        "--log-level",
        "warning",
        app,
    ]


def _daphne(port: int, app: str) -> list[str]:
    # -v 0: no access log on stdout (the default at verbosity 1).
    return [str(BIN / "daphne"), "-b", HOST, "-p", str(port), "-v", "0", app]


SERVERS: dict[str, Callable[[int, str], list[str]]] = {
    "uvicorn": _uvicorn,
    "granian": _granian,
    "daphne": _daphne,
}
BASE_PORT = {"uvicorn": 18101, "granian": 18102, "daphne": 18103}
PACKAGES = ("uvicorn", "uvloop", "httptools", "granian", "daphne", "twisted", "aiohttp", "django")


@dataclass(frozen=True)
class Endpoint:
    name: str
    path: str
    auth: bool
    marker: bytes  # must appear in a correct response body


ENDPOINTS = {
    "healthz": Endpoint("healthz", "/healthz", False, b'"status": "ok"'),
    "landing": Endpoint("landing", "/", False, b"LLMWise</title>"),
    "key": Endpoint("key", "/api/v1/key", True, b'"organization":"'),
}


def server_env(debug: bool, extra_path: Path | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    env["DJANGO_SETTINGS_MODULE"] = SETTINGS
    env["DEBUG"] = "1" if debug else "0"
    env["PYTHONUNBUFFERED"] = "1"
    paths = [str(REPO)] + ([str(extra_path)] if extra_path else [])
    env["PYTHONPATH"] = os.pathsep.join(paths)
    return env


def port_in_use(port: int) -> bool:
    import socket

    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port)) == 0


def http_get(port: int, path: str, headers: dict[str, str] | None = None) -> tuple[int, bytes]:
    conn = http.client.HTTPConnection(HOST, port, timeout=5)
    try:
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def log_tail(path: Path, lines: int = 20) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def stop_group(proc: subprocess.Popen[bytes], timeout: float = 10.0) -> None:
    """SIGTERM the server's process group, SIGKILL whatever is left after ``timeout``."""
    pgid = proc.pid  # started with start_new_session=True, so it leads its own group
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGTERM)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pgid, signal.SIGKILL)
        proc.wait(5)
    # Workers that outlived the leader (granian's) are still in the group: kill them too.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)


@dataclass
class Running:
    name: str
    port: int
    proc: subprocess.Popen[bytes]
    startup_s: float
    log: Path


@contextlib.contextmanager
def serving(
    name: str, port: int, app: str, env: dict[str, str], log: Path, ready_path: str, timeout: float
) -> Iterator[Running]:
    if port_in_use(port):
        raise RuntimeError(f"port {port} is already in use; is an old server still running?")
    cmd = SERVERS[name](port, app)
    with log.open("wb") as fh:
        t0 = time.perf_counter()
        proc = subprocess.Popen(
            cmd, cwd=REPO, env=env, stdout=fh, stderr=subprocess.STDOUT, start_new_session=True
        )
        try:
            deadline = t0 + timeout
            while True:
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode}:\n{log_tail(log)}")
                try:
                    status, _ = http_get(port, ready_path)
                    if status == 200:
                        break
                except OSError:
                    pass
                if time.perf_counter() > deadline:
                    raise RuntimeError(f"{name} not ready after {timeout}s:\n{log_tail(log)}")
                time.sleep(0.05)
            yield Running(name, port, proc, time.perf_counter() - t0, log)
        finally:
            stop_group(proc)


# ------------------------------------------------------------------------------ memory
def process_tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids: list[int]) -> float:
    """User + system CPU time consumed so far by these processes (all their threads)."""
    total = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])  # utime, stime (stat fields 14, 15)
        except (OSError, ValueError, IndexError):
            continue
    return total / CLK_TCK


def peak_rss_kb(root: int) -> tuple[int, int]:
    """(sum of VmHWM over the process tree, number of processes)."""
    total, count = 0, 0
    for pid in process_tree(root):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmHWM:"):
                    total += int(line.split()[1])
                    count += 1
        except (OSError, ValueError):
            continue
    return total, count


# ------------------------------------------------------------------------------ load client
@dataclass
class LoadResult:
    round: int
    server: str
    endpoint: str
    concurrency: int
    requests: int = 0
    errors: int = 0
    error_kinds: dict[str, int] = field(default_factory=dict)
    elapsed_s: float = 0.0
    rps: float = 0.0
    p50_ms: float = 0.0
    p90_ms: float = 0.0
    p99_ms: float = 0.0
    cpu_ms_per_req: float = 0.0  # server process tree CPU time / successful requests
    capped: bool = False  # stopped by --duration before reaching -n


def quantile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return float("nan")
    pos = (len(sorted_values) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


async def closed_loop(
    session: Any,
    url: str,
    headers: dict[str, str],
    marker: bytes,
    concurrency: int,
    n: int,
    deadline: float,
) -> tuple[list[float], dict[str, int]]:
    """``concurrency`` workers, one request at a time each, until n requests or the deadline."""
    import aiohttp

    latencies: list[float] = []
    errors: dict[str, int] = {}
    remaining = [n]

    async def worker() -> None:
        while remaining[0] > 0 and time.perf_counter() < deadline:
            remaining[0] -= 1
            t0 = time.perf_counter()
            try:
                async with session.get(url, headers=headers) as resp:
                    body = await resp.read()
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError) as exc:
                kind = type(exc).__name__
            else:
                if status == 200 and marker in body:
                    latencies.append(time.perf_counter() - t0)
                    continue
                kind = f"http_{status}" if status != 200 else "unexpected_body"
            errors[kind] = errors.get(kind, 0) + 1

    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return latencies, errors


async def run_load(
    result: LoadResult,
    port: int,
    endpoint: Endpoint,
    api_key: str,
    n: int,
    duration: float,
    server_pids: list[int],
) -> LoadResult:
    import aiohttp

    url = f"http://{HOST}:{port}{endpoint.path}"
    headers = {"Authorization": f"Bearer {api_key}"} if endpoint.auth else {}
    c = result.concurrency
    connector = aiohttp.TCPConnector(limit=c, limit_per_host=c)
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        # Warm-up (not counted): opens the keep-alive connections and warms Django's caches.
        warm = max(20, 2 * c)
        await closed_loop(session, url, headers, endpoint.marker, c, warm, time.perf_counter() + 10)
        cpu0 = cpu_seconds(server_pids)
        t0 = time.perf_counter()
        latencies, errors = await closed_loop(
            session, url, headers, endpoint.marker, c, n, t0 + duration
        )
        elapsed = time.perf_counter() - t0
        cpu = cpu_seconds(server_pids) - cpu0
    latencies.sort()
    result.requests = len(latencies) + sum(errors.values())
    result.errors = sum(errors.values())
    result.error_kinds = errors
    result.elapsed_s = round(elapsed, 3)
    result.rps = round(len(latencies) / elapsed, 1) if elapsed > 0 else 0.0
    result.p50_ms = round(quantile(latencies, 0.50) * 1000, 2)
    result.p90_ms = round(quantile(latencies, 0.90) * 1000, 2)
    result.p99_ms = round(quantile(latencies, 0.99) * 1000, 2)
    result.cpu_ms_per_req = round(cpu * 1000 / len(latencies), 3) if latencies else 0.0
    result.capped = result.requests < n
    return result


# ------------------------------------------------------------------------------ setup
def manage(*args: str, env: dict[str, str]) -> str:
    proc = subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"manage.py {' '.join(args)} failed:\n{proc.stdout}\n{proc.stderr}")
    return proc.stdout


def setup_app(env: dict[str, str], org: str) -> str:
    """Migrate the embedded SQLite DB, ensure the org exists, return a fresh API key secret."""
    manage("migrate", "--noinput", env=env)
    manage("create_org", "--slug", org, "--owner", f"{org}@example.com", env=env)
    out = manage("create_api_key", "--org", org, "--name", "asgi-bench", env=env)
    return out.strip().splitlines()[-1].strip()


def probe_lifespan(names: list[str], env: dict[str, str], logdir: Path, timeout: float) -> dict:
    out = {}
    for name in names:
        port = BASE_PORT[name] + 100
        log = logdir / f"probe_{name}.log"
        with serving(name, port, PROBE_APP, env, log, "/", timeout):
            _, body = http_get(port, "/")
        out[name] = body == b"lifespan=1"
    return out


# ------------------------------------------------------------------------------ reporting
def fmt_ratio(values: list[float]) -> str:
    if not values:
        return "-"
    med = statistics.median(values)
    if len(values) == 1:
        return f"{med:.2f}"
    return f"{med:.2f} ({min(values):.2f}-{max(values):.2f})"


def markdown(results: list[LoadResult], servers: dict[str, dict[str, Any]]) -> str:
    by_key = {(r.round, r.server, r.endpoint, r.concurrency): r for r in results}

    def base(r: LoadResult) -> LoadResult | None:
        u = by_key.get((r.round, "uvicorn", r.endpoint, r.concurrency))
        return u if u and u.rps and u.p99_ms and u.cpu_ms_per_req else None

    lines = [
        "### Per round (vs uvicorn = this req/s / uvicorn's req/s in the same round)",
        "",
        "| round | server | endpoint | c | n | req/s | p50 ms | p99 ms | CPU ms/req | errors "
        "| vs uvicorn |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        u = base(r)
        ratio = f"{r.rps / u.rps:.2f}" if u else "-"
        n = f"{r.requests}{' (capped)' if r.capped else ''}"
        lines.append(
            f"| {r.round} | {r.server} | {r.endpoint} | {r.concurrency} | {n} | {r.rps:.0f} "
            f"| {r.p50_ms:.2f} | {r.p99_ms:.2f} | {r.cpu_ms_per_req:.2f} | {r.errors} | {ratio} |"
        )

    lines += [
        "",
        "### Summary (median over rounds; ratios: median (min-max) of the per-round ratios)",
        "",
        "| server | endpoint | c | req/s | p50 ms | p99 ms | CPU ms/req | errors "
        "| req/s vs uvicorn | p99 vs uvicorn | CPU/req vs uvicorn |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    groups: dict[tuple[str, str, int], list[LoadResult]] = {}
    for r in results:
        groups.setdefault((r.server, r.endpoint, r.concurrency), []).append(r)
    order = sorted(
        groups, key=lambda k: (list(ENDPOINTS).index(k[1]), k[2], list(SERVERS).index(k[0]))
    )
    for key in order:
        rs = groups[key]
        server, endpoint, c = key
        pairs = [(r, u) for r in rs if (u := base(r))]
        rps_r = [r.rps / u.rps for r, u in pairs]
        p99_r = [r.p99_ms / u.p99_ms for r, u in pairs]
        cpu_r = [r.cpu_ms_per_req / u.cpu_ms_per_req for r, u in pairs]
        med = statistics.median
        lines.append(
            f"| {server} | {endpoint} | {c} | {med(r.rps for r in rs):.0f} "
            f"| {med(r.p50_ms for r in rs):.2f} | {med(r.p99_ms for r in rs):.2f} "
            f"| {med(r.cpu_ms_per_req for r in rs):.2f} | {sum(r.errors for r in rs)} "
            f"| {fmt_ratio(rps_r)} | {fmt_ratio(p99_r)} | {fmt_ratio(cpu_r)} |"
        )

    lines += [
        "",
        "### Servers",
        "",
        "| server | lifespan | startup s (median) | peak RSS MiB (max over rounds; processes) |",
        "|---|---|---|---|",
    ]
    for name, info in servers.items():
        rss = max(info["peak_rss_kb"], default=0) / 1024
        startup = statistics.median(info["startup_s"]) if info["startup_s"] else float("nan")
        life = {True: "yes", False: "**no**", None: "not probed"}[info.get("lifespan")]
        lines.append(f"| {name} | {life} | {startup:.2f} | {rss:.0f} ({info['processes']}) |")
    return "\n".join(lines)


def versions() -> dict[str, str]:
    out = {"python": platform.python_version(), "cpus": str(os.cpu_count())}
    for pkg in PACKAGES:
        try:
            out[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            out[pkg] = "missing"
    return out


# ------------------------------------------------------------------------------ main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--servers", default=",".join(SERVERS), help="comma list (ratios need uvicorn)")
    p.add_argument("--endpoints", default=",".join(ENDPOINTS), help="comma list")
    p.add_argument("--concurrency", default="1,16", help="comma list of concurrencies")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--n-c1", type=int, default=1000, help="requests per load at concurrency 1")
    p.add_argument("--n-cn", type=int, default=2000, help="requests per load at concurrency >1")
    p.add_argument("--duration", type=float, default=6.0, help="time cap per load, seconds")
    p.add_argument("--startup-timeout", type=float, default=30.0)
    p.add_argument("--debug", action="store_true", help="serve with DEBUG=1 (default DEBUG=0)")
    p.add_argument("--org", default="bench", help="organization slug for the API key")
    p.add_argument("--api-key", default="", help="reuse this key instead of creating one")
    p.add_argument("--no-probe", action="store_true", help="skip the lifespan probe")
    p.add_argument("--out", type=Path, default=None, help="results dir (default var/bench/...)")
    args = p.parse_args(argv)
    args.servers = [s for s in args.servers.split(",") if s]
    args.endpoints = [e for e in args.endpoints.split(",") if e]
    args.concurrency = [int(c) for c in args.concurrency.split(",") if c]
    unknown = set(args.servers) - set(SERVERS) | set(args.endpoints) - set(ENDPOINTS)
    if unknown:
        p.error(f"unknown servers/endpoints: {', '.join(sorted(unknown))}")
    if not (1 <= args.rounds <= 10 and 0 < args.duration <= 120):
        p.error("--rounds must be 1..10 and --duration 0..120 s")
    if not all(1 <= c <= 256 for c in args.concurrency):
        p.error("--concurrency values must be 1..256")
    if not (0 < args.n_c1 <= 100_000 and 0 < args.n_cn <= 100_000):
        p.error("request counts must be 1..100000")
    return args


def _raise_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks that stop servers


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    missing = [n for n in args.servers if not (BIN / n).exists()]
    try:
        import aiohttp  # noqa: F401
    except ImportError:
        missing.append("aiohttp")
    if missing:
        print(
            f"missing: {', '.join(missing)}; run "
            f"{BIN / 'pip'} install -r {BENCH_DIR / 'requirements-asgi.txt'}",
            file=sys.stderr,
        )
        return 2
    signal.signal(signal.SIGTERM, _raise_on_sigterm)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    outdir = args.out or REPO / "var" / "bench" / f"asgi-{stamp}"
    outdir.mkdir(parents=True, exist_ok=True)
    env = server_env(args.debug)
    info = versions()
    print(f"# ASGI servers on LLMWise ({stamp}); results in {outdir}", flush=True)
    print("versions: " + ", ".join(f"{k} {v}" for k, v in info.items()), flush=True)
    print(f"load average before: {os.getloadavg()}", flush=True)

    api_key = args.api_key or setup_app(env, args.org)
    servers: dict[str, dict[str, Any]] = {
        name: {"startup_s": [], "peak_rss_kb": [], "processes": 0, "lifespan": None}
        for name in args.servers
    }
    if not args.no_probe:
        probe = probe_lifespan(args.servers, server_env(args.debug, BENCH_DIR), outdir, 15.0)
        for name, ok in probe.items():
            servers[name]["lifespan"] = ok
        print(f"lifespan.startup sent: {probe}", flush=True)

    results: list[LoadResult] = []
    t_start = time.perf_counter()
    runner = _client_runner()
    try:
        for rnd in range(1, args.rounds + 1):
            print(f"round {rnd}: load average {os.getloadavg()}", flush=True)
            run_round(rnd, args, env, api_key, outdir, runner, servers, results)
    finally:
        runner.close()
        (outdir / "results.json").write_text(
            json.dumps(
                {
                    "versions": info,
                    "args": {k: str(v) for k, v in vars(args).items() if k != "api_key"},
                    "servers": servers,
                    "results": [asdict(r) for r in results],
                },
                indent=2,
            )
        )

    table = markdown(results, servers)
    (outdir / "summary.md").write_text(table + "\n")
    print()
    print(table)
    print(f"\ntotal load phase: {time.perf_counter() - t_start:.0f} s; results in {outdir}")
    return 0 if all(r.errors == 0 for r in results) else 1


def rotated(items: list[str], shift: int) -> list[str]:
    shift %= len(items)
    return items[shift:] + items[:shift]


def run_round(
    rnd: int,
    args: argparse.Namespace,
    env: dict[str, str],
    api_key: str,
    outdir: Path,
    runner: asyncio.Runner,
    servers: dict[str, dict[str, Any]],
    results: list[LoadResult],
) -> None:
    """Start every server, then run each load on each of them back to back, rotating who goes
    first, so that background noise hits all servers alike; stop them all at the end."""
    with contextlib.ExitStack() as stack:
        running: dict[str, Running] = {}
        for name in rotated(args.servers, rnd - 1):
            running[name] = stack.enter_context(
                serving(
                    name,
                    BASE_PORT[name],
                    APP,
                    env,
                    outdir / f"r{rnd}_{name}.log",
                    "/healthz",
                    args.startup_timeout,
                )
            )
            servers[name]["startup_s"].append(round(running[name].startup_s, 2))
        trees = {}
        for name, srv in running.items():
            check_endpoints(srv, args.endpoints, api_key)
            trees[name] = process_tree(srv.proc.pid)
        step = rnd - 1
        for ep_name in args.endpoints:
            for c in args.concurrency:
                n = args.n_c1 if c == 1 else args.n_cn
                for name in rotated(args.servers, step):
                    res = LoadResult(rnd, name, ep_name, c)
                    runner.run(
                        run_load(
                            res,
                            running[name].port,
                            ENDPOINTS[ep_name],
                            api_key,
                            n,
                            args.duration,
                            trees[name],
                        )
                    )
                    results.append(res)
                    print(
                        f"r{rnd} {name:8} {ep_name:8} c={c:<3} n={res.requests:<5} "
                        f"rps={res.rps:8.1f} p50={res.p50_ms:7.2f} p99={res.p99_ms:7.2f} "
                        f"cpu/req={res.cpu_ms_per_req:5.2f}ms err={res.errors}"
                        + (f" {res.error_kinds}" if res.errors else "")
                        + (" (time cap)" if res.capped else ""),
                        flush=True,
                    )
                step += 1
        for name, srv in running.items():
            rss, procs = peak_rss_kb(srv.proc.pid)
            servers[name]["peak_rss_kb"].append(rss)
            servers[name]["processes"] = procs


def check_endpoints(srv: Running, endpoints: list[str], api_key: str) -> None:
    """Every endpoint must answer 200 with the expected body before we measure it."""
    for ep_name in endpoints:
        ep = ENDPOINTS[ep_name]
        headers = {"Authorization": f"Bearer {api_key}"} if ep.auth else {}
        status, body = http_get(srv.port, ep.path, headers)
        if status != 200 or ep.marker not in body:
            raise RuntimeError(
                f"{srv.name} {ep.path}: status {status}, body {body[:200]!r}\n{log_tail(srv.log)}"
            )


def _client_runner() -> asyncio.Runner:
    try:
        import uvloop
    except ImportError:
        return asyncio.Runner()
    return asyncio.Runner(loop_factory=uvloop.new_event_loop)


if __name__ == "__main__":
    sys.exit(main())
