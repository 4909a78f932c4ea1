#!/usr/bin/env python3
"""Gateway overhead, side by side in one run: the fake upstream direct, our gateway, LiteLLM.

Everything stays on 127.0.0.1 and every load is bounded (request count and seconds). The shared
harness in ``../shared/bench/`` does the measuring; this script only sets the stage and calls it:

* ``fake_upstream.py`` is the upstream (OpenAI-shaped, answers in well under a millisecond);
* ``loadgen.py`` sends each load (closed loop, aiohttp on uvloop) and writes one JSON per load;
* ``summarize.py`` turns the folder into the per-round/median tables (every label vs ``direct``);
* ``procstat.py`` records each server's peak RSS;
* ``run_litellm_anchor.sh`` is only used (with ``ROUNDS=0``) to install LiteLLM into its venv
  (``BENCH_VENV``, default ``<tmp>/llm-gw-bench-venv``) when it is not there yet.

Our gateway runs the production shape: ``llmwise.settings.prod`` on PostgreSQL (database
``llmwise_bench``, created if missing) and Redis (``redis://127.0.0.1:6379/15``), a real API key
(``create_api_key``), credit granted with ``grant_credits``, and provider ``openai`` pointed at the
fake upstream through ``OPENAI_BASE_URL``. So every measured request does the full hot path: key
lookup, catalog lookup, reserve, upstream call, settle + request log. It is served by one uvicorn
worker (uvloop + httptools, no access log) pinned to one core with ``taskset``; LiteLLM gets the
same pinning and one worker. The fake upstream and the load generator are pinned to the other
core, so the gateway under test has a core to itself (as far as the machine's other users allow).

Scenarios (each for every target, interleaved in every round; the order of targets rotates from
round to round so slow drift in machine load does not always favour the same one):

    c1, c16, c64                non-streaming, concurrency 1 / 16 / 64
    stream_c1, _c16, _c64       streaming (20 chunks, ``stream_options.include_usage``)

Besides the loadgen numbers it records each server's CPU time per request (utime+stime from
/proc, which contention on a shared machine barely changes). At the end it checks the wallet
(``manage.py wallet_audit``) and that no reservation was left held, then prints the summary and
our ratios against LiteLLM, checked against the issue's targets.

Run (about 6-8 minutes on 2 cores, after LiteLLM's one-time install):

    .venv/bin/python bench/gateway_overhead.py            # --help for the knobs
    .venv/bin/python bench/gateway_overhead.py --rounds 3 --skip-litellm

Output: ``var/bench/gateway-<timestamp>/`` (loadgen JSON, proc_*.json, logs, summary.md from
summarize.py, ratios.md and ratios.json from this script).
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SHARED = REPO.parent / "shared" / "bench"  # ../shared/bench, read-only, reused as is
VENV_BIN = Path(sys.executable).parent  # the repo venv running this script
HOST = "127.0.0.1"
ORG_SLUG = "bench-gateway"
ORG_OWNER = "bench-gateway@example.com"
MODEL = "gpt-4o-mini"  # catalog model of provider openai; the fake upstream accepts any name
LITELLM_MODEL = "bench-model"  # as named in ../shared/bench/litellm_config.yaml
LITELLM_MASTER_KEY = "sk-bench-master"  # dummy key of the shared config (loopback only)
GRANT_USD = "50000"
MIN_AVAILABLE_MICROS = 1_000_000_000  # top up below $1,000: a run holds/charges far less
CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Target:
    label: str
    url: str
    key: str
    model: str
    pid: int | None  # server process whose CPU time is charged to this target


@dataclass(frozen=True)
class Scenario:
    name: str
    concurrency: int
    requests: int
    stream: bool


# ------------------------------------------------------------------------------- processes
_started: list[subprocess.Popen[bytes]] = []


def stop_all() -> None:
    """Stop every process group this script started (TERM, then KILL after a grace period)."""
    for proc in reversed(_started):
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
    deadline = time.monotonic() + 10
    for proc in reversed(_started):
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=5)
    _started.clear()


def _on_signal(signum: int, _frame: Any) -> None:
    stop_all()
    sys.exit(128 + signum)


def start(cmd: list[str], *, env: dict[str, str], log: Path, cwd: Path = REPO) -> int:
    """Start ``cmd`` in its own process group (so stopping it stops its children too)."""
    with log.open("wb") as out:
        proc = subprocess.Popen(
            cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    _started.append(proc)
    return proc.pid


def pinned(cpu: str | None, cmd: list[str]) -> list[str]:
    if cpu is None or cpu == "" or not shutil.which("taskset"):
        return cmd
    return ["taskset", "-c", cpu, *cmd]


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((HOST, port)) != 0


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and its children so far (threads included)."""
    total = 0.0
    pids = [pid]
    seen: set[int] = set()
    while pids:
        p = pids.pop()
        if p in seen:
            continue
        seen.add(p)
        try:
            stat = Path(f"/proc/{p}/stat").read_text()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        total += (int(fields[11]) + int(fields[12])) / CLK_TCK
        for child in Path(f"/proc/{p}/task").glob("*/children"):
            with contextlib.suppress(OSError, ValueError):
                pids.extend(int(c) for c in child.read_text().split())
    return total


def wait_ready(target: Target, limit: float) -> None:
    """Block until one real chat completion succeeds through ``target`` (or fail loudly)."""
    body = json.dumps(
        {"model": target.model, "messages": [{"role": "user", "content": "ping"}]}
    ).encode()
    deadline, last = time.monotonic() + limit, ""
    while time.monotonic() < deadline:
        request = urllib.request.Request(  # noqa: S310 - loopback URL built above
            target.url,
            data=body,
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {target.key}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
                if response.status == 200 and json.load(response).get("choices"):
                    return
        except (OSError, ValueError, urllib.error.HTTPError) as exc:
            last = repr(exc)[:300]
        time.sleep(0.5)
    raise SystemExit(f"{target.label} not ready after {limit:.0f}s: {last}")


# ------------------------------------------------------------------------------- setup
def run(cmd: list[str], *, env: dict[str, str], check: bool = True) -> str:
    done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, check=False)
    if check and done.returncode != 0:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{done.stdout}\n{done.stderr}")
    return done.stdout


def gateway_env(args: argparse.Namespace) -> dict[str, str]:
    """Production settings with throwaway secrets, routed to the fake upstream."""
    env = {k: v for k, v in os.environ.items() if not k.endswith("_BASE_URL")}
    env.update(
        DJANGO_SETTINGS_MODULE="llmwise.settings.prod",
        SECRET_KEY="bench-only-not-a-secret-" + "x" * 40,  # throwaway, loopback only
        # Throwaway (loopback bench): prod refuses to start without field-encryption keys.
        FIELD_ENCRYPTION_KEYS="bench-only-field-key-" + "0" * 43,
        ALLOWED_HOSTS=HOST,
        SECURE_SSL_REDIRECT="false",
        DATABASE_URL=f"postgres://{args.pg_user}@{HOST}:{args.pg_port}/{args.database}",
        REDIS_URL=args.redis_url,
        OPENAI_BASE_URL=f"http://{HOST}:{args.upstream_port}/v1",
        OPENAI_API_KEY="sk-fake-upstream-dummy",  # the fake accepts any key
        PROVIDER_SANDBOX="false",
        PROVIDER_SANDBOX_KEYLESS="false",
        STATIC_ROOT=str(Path(tempfile.gettempdir()) / "llmwise-bench-static"),
        LOG_LEVEL="WARNING",
        PYTHONUNBUFFERED="1",
        # The organization's limits stay on and are counted on every call, as in production,
        # but above this load: an A/B run sends twice the default's 10,000 calls a minute.
        GATEWAY_ORG_RPM="1000000",
    )
    return env


def setup_gateway(args: argparse.Namespace, env: dict[str, str]) -> str:
    """Idempotent: database, schema, org, credit; a fresh API key each run (its secret)."""
    pg = ["-h", HOST, "-p", str(args.pg_port), "-U", args.pg_user]
    names = run(["psql", *pg, "-Atc", "SELECT datname FROM pg_database"], env=env).split()
    if args.database not in names:
        run(["createdb", *pg, args.database], env=env)
    manage = [str(VENV_BIN / "python"), "manage.py"]
    run([*manage, "migrate", "--noinput", "-v", "0"], env=env)
    run([*manage, "create_org", "--slug", ORG_SLUG, "--owner", ORG_OWNER], env=env)
    available = (
        run(
            [
                *manage,
                "shell",
                "-c",
                "from apps.accounts.models import Organization as O;"
                "from apps.wallet import services as s;"
                f"print(s.wallet_for_org(org=O.objects.get(slug='{ORG_SLUG}')).available_micros)",
            ],
            env=env,
        )
        .strip()
        .splitlines()[-1]
    )
    if int(available) < MIN_AVAILABLE_MICROS:
        run(
            [
                *manage,
                "grant_credits",
                "--org",
                ORG_SLUG,
                "--usd",
                GRANT_USD,
                "--note",
                "gateway overhead benchmark",
            ],
            env=env,
        )
    secret = (
        run(
            [
                *manage,
                "create_api_key",
                "--org",
                ORG_SLUG,
                "--name",
                f"bench {time.strftime('%F %T')}",
            ],
            env=env,
        )
        .strip()
        .splitlines()[-1]
    )
    return secret


def bench_venv_python(args: argparse.Namespace, results: Path) -> Path:
    """The shared harness's venv (aiohttp, uvloop, orjson, litellm); installed on first use
    by the shared script itself (ROUNDS=0: install, start, readiness check, stop)."""
    venv = Path(args.bench_venv)
    py = venv / "bin" / "python"
    need_litellm = not args.skip_litellm and not (venv / "bin" / "litellm").exists()
    if py.exists() and not need_litellm:
        return py
    print(f"installing the shared bench venv at {venv} (one time) ...", file=sys.stderr)
    env = dict(
        os.environ,
        BENCH_VENV=str(venv),
        ROUNDS="0",
        RESULTS_DIR=str(results / "install"),
        UPSTREAM_PORT=str(args.upstream_port),
        PROXY_PORT=str(args.litellm_port),
    )
    if args.skip_litellm:
        env["SKIP_LITELLM"] = "1"
    subprocess.run(["bash", str(SHARED / "run_litellm_anchor.sh")], env=env, check=False)
    if not py.exists():
        raise SystemExit(f"could not create the bench venv at {venv}")
    return py


# ------------------------------------------------------------------------------- loads
def load(
    bpy: Path, target: Target, sc: Scenario, rnd: int, args: argparse.Namespace, out: Path
) -> dict[str, Any] | None:
    path = out / f"{sc.name}_r{rnd}_{target.label}.json"
    cmd = [
        str(bpy),
        str(SHARED / "loadgen.py"),
        "--url",
        target.url,
        "--api-key",
        target.key,
        "--model",
        target.model,
        "--concurrency",
        str(sc.concurrency),
        "--requests",
        str(sc.requests),
        "--duration",
        str(args.duration),
        "--label",
        target.label,
        "--scenario",
        sc.name,
        "--round",
        str(rnd),
        "--out",
        str(path),
        "--brief",
    ]
    if sc.stream:
        cmd.append("--stream")  # include_usage is on by default
    cpu_before = cpu_seconds(target.pid) if target.pid else None
    subprocess.run(
        pinned(args.client_cpu, cmd),
        stdout=subprocess.DEVNULL,
        check=False,
        timeout=args.duration + 120,
    )
    if not path.exists():
        print(f"  {target.label} {sc.name} r{rnd}: no result", file=sys.stderr)
        return None
    result: dict[str, Any] = json.loads(path.read_text())
    if cpu_before is not None and target.pid and result.get("sent"):
        used = cpu_seconds(target.pid) - cpu_before
        # Warm-up requests ran inside the same window: charge per request actually served.
        served = result["sent"] + result.get("warmup", 0)
        result["server_cpu_ms_per_req"] = round(used * 1000 / served, 3)
        path.write_text(json.dumps(result, indent=2) + "\n")
    return result


def scenarios(args: argparse.Namespace) -> list[Scenario]:
    out: list[Scenario] = []
    for stream in (False, True):
        for c in args.concurrency:
            n = args.n_c1 if c == 1 else args.n_cn
            if stream:
                n = max(1, n * 2 // 3)  # a 20-chunk stream costs more per request
            out.append(Scenario(f"{'stream_' if stream else ''}c{c}", c, n, stream))
    return out


# ------------------------------------------------------------------------------- verdict
def _med(values: list[float]) -> float | None:
    return statistics.median(values) if values else None


def _fmt(x: float | None, nd: int = 2) -> str:
    return "-" if x is None else f"{x:.{nd}f}"


def _load_results(out: Path) -> dict[tuple[str, int, str], dict[str, Any]]:
    """The load generator's results in ``out``, by (scenario, round, label)."""
    data: dict[tuple[str, int, str], dict[str, Any]] = {}
    for path in out.glob("*_r*_*.json"):
        obj = json.loads(path.read_text())
        if obj.get("kind") == "load":
            data[(obj["scenario"], obj["round"], obj["label"])] = obj
    return data


def _table_head(rounds: int) -> list[str]:
    rounds_cells = " | ".join(f"r{r}" for r in range(1, rounds + 1))
    return [f"| scenario | metric | {rounds_cells} | median |", "|---|---|" + "---|" * (rounds + 1)]


def ratios(out: Path, labels: list[str], scs: list[Scenario], rounds: int) -> str:
    """Our numbers against LiteLLM's from the same round, and the issue's targets."""
    data = _load_results(out)

    def lat(o: dict[str, Any] | None, key: str = "latency_ms") -> float | None:
        stats = (o or {}).get(key)
        return stats.get("p50") if stats else None

    lines = _table_head(rounds)
    verdict: dict[str, Any] = {}
    for sc in scs:
        rows: dict[str, list[float | None]] = {}
        for r in range(1, rounds + 1):
            d, ours, lite = (data.get((sc.name, r, lab)) for lab in ("direct", "ours", "litellm"))
            d50, o50, l50 = lat(d), lat(ours), lat(lite)
            add_o = o50 - d50 if o50 is not None and d50 is not None else None
            add_l = l50 - d50 if l50 is not None and d50 is not None else None
            rows.setdefault("ours added p50 ms", []).append(add_o)
            rows.setdefault("litellm added p50 ms", []).append(add_l)
            rows.setdefault("ours/litellm added p50", []).append(
                add_o / add_l if add_o is not None and add_l else None
            )
            o_rps = (ours or {}).get("throughput_rps")
            l_rps = (lite or {}).get("throughput_rps")
            rows.setdefault("ours req/s", []).append(o_rps)
            rows.setdefault("litellm req/s", []).append(l_rps)
            rows.setdefault("ours/litellm req/s", []).append(
                o_rps / l_rps if o_rps and l_rps else None
            )
            rows.setdefault("ours server CPU ms/req", []).append(
                (ours or {}).get("server_cpu_ms_per_req")
            )
            rows.setdefault("litellm server CPU ms/req", []).append(
                (lite or {}).get("server_cpu_ms_per_req")
            )
            rows.setdefault("ours errors", []).append((ours or {}).get("errors"))
            rows.setdefault("litellm errors", []).append((lite or {}).get("errors"))
            if sc.stream:
                dt, ot, lt = (lat(x, "ttft_ms") for x in (d, ours, lite))
                rows.setdefault("ours added TTFT p50 ms", []).append(
                    ot - dt if ot is not None and dt is not None else None
                )
                rows.setdefault("litellm added TTFT p50 ms", []).append(
                    lt - dt if lt is not None and dt is not None else None
                )
        sv: dict[str, float | None] = {}
        for name, vals in rows.items():
            if "litellm" in name and "litellm" not in labels:
                continue
            m = _med([v for v in vals if v is not None])
            sv[name] = m
            nd = 3 if name.startswith("ours/litellm") else 1 if "req/s" in name else 2
            cells = " | ".join(_fmt(v, nd) for v in vals)
            lines.append(f"| {sc.name} | {name} | {cells} | **{_fmt(m, nd)}** |")
        verdict[sc.name] = sv

    checks: list[tuple[str, float | None, str, bool | None]] = []

    def check(name: str, value: float | None, goal: str, ok: bool | None) -> None:
        checks.append((name, value, goal, ok))

    c1 = verdict.get("c1", {})
    v = c1.get("ours added p50 ms")
    check("c1 added p50 (ms)", v, "<= 3", None if v is None else v <= 3)
    v = c1.get("ours/litellm added p50")
    check("c1 added p50 ours/litellm", v, "<= 0.5", None if v is None else v <= 0.5)
    for name in ("c16", "c64"):
        v = verdict.get(name, {}).get("ours/litellm req/s")
        check(f"{name} throughput ours/litellm", v, ">= 2", None if v is None else v >= 2)
    v = verdict.get("stream_c1", {}).get("ours added TTFT p50 ms")
    check("stream_c1 added TTFT p50 (ms)", v, "<= 2", None if v is None else v <= 2)
    lines += ["", "| target | measured (median of rounds) | goal | met |", "|---|---|---|---|"]
    for name, value, goal, ok in checks:
        mark = "-" if ok is None else ("yes" if ok else "**no**")
        lines.append(f"| {name} | {_fmt(value, 3)} | {goal} | {mark} |")
    (out / "ratios.json").write_text(json.dumps({"scenarios": verdict}, indent=2) + "\n")
    text = "\n".join(lines) + "\n"
    (out / "ratios.md").write_text(text)
    return text


def ab_table(out: Path, scs: list[Scenario], rounds: int) -> str:
    """``ours_b`` against ``ours``, both as added time over the direct upstream of the same
    round, and their difference round by round: on a noisy machine only a difference measured
    side by side says whether a change of a few tenths of a millisecond helped."""
    data = _load_results(out)

    def p50(scenario: str, rnd: int, label: str, key: str) -> float | None:
        stats = data.get((scenario, rnd, label), {}).get(key)
        return stats.get("p50") if stats else None

    lines = _table_head(rounds)
    for sc in scs:
        for key, what in [("latency_ms", "p50")] + ([("ttft_ms", "TTFT p50")] if sc.stream else []):
            rows: dict[str, list[float | None]] = {}
            for r in range(1, rounds + 1):
                direct = p50(sc.name, r, "direct", key)
                a, b = (p50(sc.name, r, label, key) for label in ("ours", "ours_b"))
                added_a = a - direct if a is not None and direct is not None else None
                added_b = b - direct if b is not None and direct is not None else None
                rows.setdefault(f"ours added {what} ms", []).append(added_a)
                rows.setdefault(f"ours_b added {what} ms", []).append(added_b)
                rows.setdefault(f"ours_b - ours {what} ms", []).append(
                    added_b - added_a if added_a is not None and added_b is not None else None
                )
            for name, vals in rows.items():
                m = _med([v for v in vals if v is not None])
                cells = " | ".join(_fmt(v) for v in vals)
                lines.append(f"| {sc.name} | {name} | {cells} | **{_fmt(m)}** |")
    text = "\n".join(lines) + "\n"
    (out / "ab.md").write_text(text)
    return text


# ------------------------------------------------------------------------------- main
def add_setup_arguments(p: argparse.ArgumentParser) -> None:
    """Where our gateway's database, Redis and the shared harness's venv are (every script that
    uses :func:`gateway_env` / :func:`setup_gateway` takes these)."""
    p.add_argument("--database", default="llmwise_bench")
    p.add_argument("--pg-user", default="postgres")
    p.add_argument("--pg-port", type=int, default=5432)
    p.add_argument("--redis-url", default="redis://127.0.0.1:6379/15")
    p.add_argument(
        "--bench-venv",
        default=os.environ.get(
            "BENCH_VENV", str(Path(tempfile.gettempdir()) / "llm-gw-bench-venv")
        ),
    )


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--concurrency", type=int, nargs="+", default=[1, 16, 64])
    p.add_argument("--n-c1", type=int, default=300, help="requests per c=1 load")
    p.add_argument("--n-cn", type=int, default=1500, help="requests per c>1 load (streams: 2/3)")
    p.add_argument("--duration", type=float, default=40.0, help="time cap per load, seconds")
    p.add_argument("--skip-litellm", action="store_true")
    p.add_argument("--server-cpu", default="0", help="core for each gateway ('' = no pinning)")
    p.add_argument("--client-cpu", default="1", help="core for upstream + loadgen ('' = none)")
    p.add_argument("--upstream-port", type=int, default=18280)
    p.add_argument("--ours-port", type=int, default=18281)
    p.add_argument("--litellm-port", type=int, default=18282)
    p.add_argument("--chunks", type=int, default=20)
    p.add_argument(
        "--b-tree",
        default="",
        help="also serve the gateway from this checkout (a git worktree of another commit, same "
        "migrations) as target ours_b, measured in every round next to ours",
    )
    p.add_argument(
        "--b-env",
        action="append",
        default=[],
        metavar="NAME=VALUE",
        help="extra environment of ours_b (repeatable; ours_b is served even without --b-tree)",
    )
    p.add_argument("--ours-b-port", type=int, default=18283)
    add_setup_arguments(p)
    p.add_argument("--out", default="", help="results folder (default var/bench/gateway-<ts>)")
    args = p.parse_args(argv)
    if args.rounds < 1 or min(args.concurrency) < 1 or args.n_c1 < 1 or args.n_cn < 1:
        p.error("rounds, concurrency and request counts must be positive")
    if args.duration <= 0 or args.duration > 600:
        p.error("--duration must be in (0, 600]")
    if any("=" not in pair for pair in args.b_env):
        p.error("--b-env takes NAME=VALUE")
    if args.b_tree and not (Path(args.b_tree) / "llmwise" / "asgi.py").is_file():
        p.error(f"--b-tree {args.b_tree} is not a checkout of this project")
    return args


def ab_wanted(args: argparse.Namespace) -> bool:
    return bool(args.b_tree or args.b_env)


def serve_ours(
    label: str,
    port: int,
    args: argparse.Namespace,
    *,
    env: dict[str, str],
    secret: str,
    out: Path,
    cwd: Path = REPO,
) -> Target:
    """Our gateway as production serves it (one uvicorn worker), from the checkout ``cwd``."""
    pid = start(
        pinned(
            args.server_cpu,
            [
                str(VENV_BIN / "uvicorn"),
                "llmwise.asgi:application",
                "--host",
                HOST,
                "--port",
                str(port),
                "--workers",
                "1",
                "--no-access-log",
                "--timeout-keep-alive",
                "75",  # as docker/entrypoint.sh
                "--lifespan",
                "on",
                "--loop",
                "uvloop",
                "--http",
                "httptools",
                "--log-level",
                "warning",
            ],
        ),
        env=env,
        log=out / f"{label}.log",
        cwd=cwd,
    )
    target = Target(label, f"http://{HOST}:{port}/v1/chat/completions", secret, MODEL, pid)
    wait_ready(target, 60)
    return target


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    out = (
        Path(args.out)
        if args.out
        else REPO / "var" / "bench" / time.strftime("gateway-%Y%m%d-%H%M%S")
    )
    out.mkdir(parents=True, exist_ok=True)
    atexit.register(stop_all)
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    for port in (args.upstream_port, args.ours_port, args.litellm_port, args.ours_b_port):
        if not port_free(port):
            raise SystemExit(f"port {port} is busy; choose another with --*-port")

    bpy = bench_venv_python(args, out)
    env = gateway_env(args)
    print("setting up our gateway (database, migrate, org, credit, key) ...", file=sys.stderr)
    secret = setup_gateway(args, env)

    base_env = dict(os.environ, PYTHONUNBUFFERED="1")
    up_pid = start(
        pinned(
            args.client_cpu,
            [
                str(bpy),
                str(SHARED / "fake_upstream.py"),
                "--host",
                HOST,
                "--port",
                str(args.upstream_port),
                "--chunks",
                str(args.chunks),
            ],
        ),
        env=base_env,
        log=out / "fake_upstream.log",
    )
    direct = Target(
        "direct", f"http://{HOST}:{args.upstream_port}/v1/chat/completions", "x", "fake-model", None
    )
    wait_ready(direct, 30)

    ours = serve_ours("ours", args.ours_port, args, env=env, secret=secret, out=out)
    targets = [direct, ours]
    if ab_wanted(args):
        b_env = dict(env, **dict(pair.split("=", 1) for pair in args.b_env))
        b_tree = Path(args.b_tree) if args.b_tree else REPO
        targets.append(
            serve_ours(
                "ours_b", args.ours_b_port, args, env=b_env, secret=secret, out=out, cwd=b_tree
            )
        )

    if not args.skip_litellm:
        config = (SHARED / "litellm_config.yaml").read_text()
        config = config.replace("127.0.0.1:18080", f"{HOST}:{args.upstream_port}")
        (out / "litellm_config.rendered.yaml").write_text(config)
        lite_env = dict(
            base_env,
            LITELLM_LOCAL_MODEL_COST_MAP="True",
            LITELLM_LOG="ERROR",
            LITELLM_TELEMETRY="False",
        )
        lite_pid = start(
            pinned(
                args.server_cpu,
                [
                    str(Path(args.bench_venv) / "bin" / "litellm"),
                    "--config",
                    str(out / "litellm_config.rendered.yaml"),
                    "--host",
                    HOST,
                    "--port",
                    str(args.litellm_port),
                    "--num_workers",
                    "1",
                ],
            ),
            env=lite_env,
            log=out / "litellm.log",
        )
        lite = Target(
            "litellm",
            f"http://{HOST}:{args.litellm_port}/v1/chat/completions",
            LITELLM_MASTER_KEY,
            LITELLM_MODEL,
            lite_pid,
        )
        wait_ready(lite, 240)
        targets.append(lite)

    env_txt = [
        f"date {time.strftime('%F %T %z')}",
        f"loadavg {Path('/proc/loadavg').read_text().strip()}",
        f"cpus {os.cpu_count()} server_cpu={args.server_cpu!r} client_cpu={args.client_cpu!r}",
        "git " + run(["git", "rev-parse", "--short", "HEAD"], env=env, check=False).strip(),
        "git dirty files: "
        + " ".join(run(["git", "status", "--short"], env=env, check=False).split("\n")).strip(),
    ]
    (out / "env.txt").write_text("\n".join(env_txt) + "\n")
    print("\n".join(env_txt), file=sys.stderr)

    scs = scenarios(args)
    for rnd in range(1, args.rounds + 1):
        shift = (rnd - 1) % len(targets)
        order = targets[shift:] + targets[:shift]
        print(f"round {rnd}/{args.rounds}: order {[t.label for t in order]}", file=sys.stderr)
        for sc in scs:
            for target in order:
                load(bpy, target, sc, rnd, args, out)

    (out / "loadavg_end.txt").write_text(Path("/proc/loadavg").read_text())
    measured = [(t.label, t.pid) for t in targets if t.pid is not None]
    for label, pid in [*measured, ("fake_upstream", up_pid)]:
        subprocess.run(
            [
                str(bpy),
                str(SHARED / "procstat.py"),
                str(pid),
                "--label",
                label,
                "--out",
                str(out / f"proc_{label}.json"),
            ],
            stdout=subprocess.DEVNULL,
            check=False,
        )
    stop_all()

    # Money must balance after tens of thousands of calls, and nothing may stay held.
    manage = [str(VENV_BIN / "python"), "manage.py"]
    audit = subprocess.run(
        [*manage, "wallet_audit"], cwd=REPO, env=env, capture_output=True, text=True, check=False
    )
    held_lines = (
        run(
            [
                *manage,
                "shell",
                "-c",
                "from apps.wallet.models import Reservation as R;"
                "print(R.objects.filter(status=R.Status.HELD).count())",
            ],
            env=env,
            check=False,
        )
        .strip()
        .splitlines()
    )
    held = held_lines[-1] if held_lines else "?"
    checks = (
        f"wallet_audit exit {audit.returncode}: {(audit.stdout + audit.stderr).strip()[-300:]}\n"
        f"reservations still held: {held}\n"
    )
    (out / "checks.txt").write_text(checks)

    subprocess.run([str(bpy), str(SHARED / "summarize.py"), str(out)], check=False)
    table = ratios(out, [t.label for t in targets], scs, args.rounds)
    print(f"### ours vs litellm, same round\n\n{table}")
    if ab_wanted(args):
        print(f"### ours_b vs ours, same round\n\n{ab_table(out, scs, args.rounds)}")
    print(checks)
    print(f"results in {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
