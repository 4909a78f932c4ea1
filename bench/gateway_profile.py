#!/usr/bin/env python3
"""Where the gateway's time goes: our server under cProfile (every thread) plus SQL timings.

Same stage as ``gateway_overhead.py`` (production settings on PostgreSQL + Redis, a real key,
provider ``openai`` on the shared fake upstream, one uvicorn worker pinned to one core), but the
server runs inside this file's ``--serve`` mode, which

* profiles the CPU time (``time.thread_time``) of the event-loop thread *and* of every worker
  thread (``sync_to_async`` runs the ORM and the sync services in threads, which a plain
  ``cProfile.run`` would not see);
* wraps every SQL statement (``connection.execute_wrappers``) to count and time it;
* on SIGTERM writes ``<prefix>.pstats``, ``<prefix>.sql.json`` and exits.

For each (concurrency, stream) case it starts a fresh profiled server, sends one bounded load
with the shared ``loadgen.py`` and reports, per request: SQL statements and their time, total
profiled CPU by package (Django, psycopg, asgiref, httpx, our code, ...), and the top functions.
It also samples our own ``x-llmwise-overhead-ms`` header over sequential requests. cProfile
roughly doubles the cost of Python calls, so read the shares, not the absolute milliseconds.

    .venv/bin/python bench/gateway_profile.py               # c=1 and c=16, stream and not
    .venv/bin/python bench/gateway_profile.py --cases 1 16s  # "s" = streaming
"""

from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import re
import signal
import statistics
import sys
import threading
import time
import urllib.request
from collections import defaultdict
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gateway_overhead as gw

REPO = f"{Path(__file__).resolve().parents[1]}/"  # profiled files under the checkout are ours

# Buckets for "where does the CPU go", by the file a function lives in (first match wins).
BUCKETS = (
    ("our code (apps/, llmwise/)", (f"{REPO}apps/", f"{REPO}llmwise/")),
    ("django.db (ORM, compiler)", ("/django/db/",)),
    ("psycopg / psycopg_pool", ("/psycopg/", "/psycopg_pool/", "psycopg")),
    ("django core (handlers, http, urls)", ("/django/core/", "/django/http/", "/django/urls/")),
    ("django middleware + contrib", ("/django/middleware/", "/django/contrib/", "/allauth/")),
    ("django utils/other", ("/django/",)),
    ("asgiref (sync_to_async / threads)", ("/asgiref/",)),
    ("concurrent.futures / threading", ("/concurrent/", "threading.py", "queue.py")),
    ("httpx / httpcore (upstream client)", ("/httpx/", "/httpcore/", "/h11/", "/anyio/")),
    ("redis client", ("/redis/",)),
    ("uvicorn / uvloop / httptools", ("/uvicorn/", "uvloop", "httptools")),
    ("asyncio", ("/asyncio/",)),
    ("json", ("/json/", "_json")),
)
SQL_NORMALIZE = re.compile(r"\b\d+\b|'[^']*'")
SAVEPOINT_NAME = re.compile(r'"s\d+_x\d+"')
# Blocking waits (an idle worker thread, a thread join, a future's result): not CPU work, even
# though cProfile charges them to whatever C call was blocked.
WAITS = (
    "<method 'acquire' of '_thread.lock' objects>",
    "<method 'get' of '_queue.SimpleQueue' objects>",
)


# ------------------------------------------------------------------------------- server side
def serve(args: argparse.Namespace) -> None:
    """Run uvicorn in this process with every thread profiled and every SQL statement timed."""
    profiles: list[cProfile.Profile] = []
    lock = threading.Lock()

    def thread_hook(*_: Any) -> None:
        prof = cProfile.Profile(time.thread_time)
        with lock:
            profiles.append(prof)
        prof.enable()  # replaces this hook for the rest of the thread's life

    sql: dict[str, list[float]] = defaultdict(list)

    def timed(execute: Any, query: str, params: Any, many: bool, context: Any) -> Any:
        started = time.perf_counter()
        try:
            return execute(query, params, many, context)
        finally:
            key = SQL_NORMALIZE.sub("?", SAVEPOINT_NAME.sub('"sp"', query))[:160]
            with lock:
                sql[key].append(time.perf_counter() - started)

    def on_connect(sender: Any, connection: Any, **kwargs: Any) -> None:
        if timed not in connection.execute_wrappers:
            connection.execute_wrappers.append(timed)

    import django

    django.setup()
    from django.db.backends.signals import connection_created

    connection_created.connect(on_connect, weak=False)

    import uvicorn

    main_prof = cProfile.Profile(time.thread_time)

    def dump(*_: Any) -> None:
        main_prof.disable()
        stats = pstats.Stats(main_prof)
        for prof in list(profiles):
            stats.add(prof)
        stats.dump_stats(f"{args.prefix}.pstats")
        with lock:
            Path(f"{args.prefix}.threads.json").write_text(json.dumps(len(profiles)))
            Path(f"{args.prefix}.sql.json").write_text(json.dumps(sql))
        os._exit(0)

    config = uvicorn.Config(
        "llmwise.asgi:application",
        host=gw.HOST,
        port=args.port,
        workers=1,
        access_log=False,
        lifespan="on",
        loop="uvloop",
        http="httptools",
        log_level="warning",
    )
    server = uvicorn.Server(config)
    # uvicorn re-raises SIGTERM after its graceful shutdown: that is when we write the profile.
    signal.signal(signal.SIGTERM, dump)
    threading.setprofile(thread_hook)
    main_prof.enable()
    server.run()
    dump()


# ------------------------------------------------------------------------------- driver
def bucket_of(filename: str) -> str:
    for name, needles in BUCKETS:
        if any(n in filename for n in needles):
            return name
    return "other (stdlib, C builtins)"


def report(prefix: Path, requests: int, top: int) -> str:
    stats = pstats.Stats(str(prefix) + ".pstats")
    raw: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    buckets: dict[str, float] = defaultdict(float)
    total = 0.0
    waited = 0.0
    for (filename, _line, func), (_cc, _nc, tt, _ct, _callers) in raw.items():
        if func in WAITS:
            waited += tt
            continue
        buckets[bucket_of(filename)] += tt
        total += tt
    threads = json.loads(Path(str(prefix) + ".threads.json").read_text())
    lines = [
        f"profiled CPU per request (all threads, under cProfile): {total * 1000 / requests:.2f}"
        f" ms (plus {waited * 1000 / requests:.2f} ms/req charged to blocking lock/queue waits,"
        f" left out); threads started: {threads} ({threads / requests:.2f} per request)",
        "",
    ]
    lines += ["| where (own CPU time, all threads) | ms/req | share |", "|---|---|---|"]
    for name, tt in sorted(buckets.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {name} | {tt * 1000 / requests:.3f} | {tt / total:.1%} |")

    def short(key: tuple[str, int, str]) -> str:
        filename, line, func = key
        for cut in ("site-packages/", REPO, "lib/python3.11/"):
            if cut in filename:
                filename = filename.split(cut, 1)[1]
        return f"{filename}:{line}({func})"

    ours = [
        (key, v)
        for key, v in raw.items()
        if REPO in key[0] and "/.venv/" not in key[0] and "/bench/" not in key[0]
    ]
    lines += ["", f"top {top} of our functions by cumulative CPU time (ms/req, calls/req):", ""]
    lines += ["| function | cum ms/req | own ms/req | calls/req |", "|---|---|---|---|"]
    for key, (_cc, nc, tt, ct, _c) in sorted(ours, key=lambda kv: -kv[1][3])[:top]:
        lines.append(
            f"| {short(key)} | {ct * 1000 / requests:.3f} | {tt * 1000 / requests:.3f} "
            f"| {nc / requests:.1f} |"
        )
    lines += ["", f"top {top} functions by own CPU time:", ""]
    lines += ["| function | own ms/req | calls/req |", "|---|---|---|"]
    busy = [(key, v) for key, v in raw.items() if key[2] not in WAITS]
    for key, (_cc, nc, tt, _ct, _c) in sorted(busy, key=lambda kv: -kv[1][2])[:top]:
        lines.append(f"| {short(key)} | {tt * 1000 / requests:.3f} | {nc / requests:.1f} |")

    sql: dict[str, list[float]] = defaultdict(list)
    for query, times in json.loads(Path(str(prefix) + ".sql.json").read_text()).items():
        sql[SAVEPOINT_NAME.sub('"sp"', query)].extend(times)
    n_sql = sum(len(v) for v in sql.values())
    t_sql = sum(sum(v) for v in sql.values())
    lines += [
        "",
        f"SQL: {n_sql / requests:.2f} statements and {t_sql * 1000 / requests:.2f} ms "
        "(wall, in worker threads) per request",
        "",
        "| statement | per req | mean ms | p50 ms |",
        "|---|---|---|---|",
    ]
    for query, times in sorted(sql.items(), key=lambda kv: -sum(kv[1])):
        q = query.replace("|", "\\|")
        lines.append(
            f"| `{q[:110]}` | {len(times) / requests:.2f} | {statistics.mean(times) * 1000:.3f} "
            f"| {statistics.median(times) * 1000:.3f} |"
        )
    return "\n".join(lines) + "\n"


def overhead_header(url: str, key: str, n: int) -> dict[str, float]:
    """Our own ``x-llmwise-overhead-ms`` over ``n`` sequential non-stream calls (integer ms)."""
    body = json.dumps({"model": gw.MODEL, "messages": [{"role": "user", "content": "hi"}]}).encode()
    values: list[float] = []
    for _ in range(n):
        request = urllib.request.Request(  # noqa: S310 - loopback URL
            url,
            data=body,
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {key}"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:  # noqa: S310
            values.append(float(response.headers.get("x-llmwise-overhead-ms", "nan")))
    values.sort()
    return {"p50": values[len(values) // 2], "p90": values[int(len(values) * 0.9)], "n": n}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0] if __doc__ else None)
    p.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--prefix", default="", help=argparse.SUPPRESS)
    p.add_argument("--port", type=int, default=18291)
    p.add_argument("--upstream-port", type=int, default=18290)
    p.add_argument("--cases", nargs="+", default=["1", "16", "1s", "16s"])
    p.add_argument("-n", type=int, default=600, help="requests per case")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--server-cpu", default="0")
    p.add_argument("--client-cpu", default="1")
    p.add_argument("--out", default="")
    args = p.parse_args(argv)
    if args.serve:
        serve(args)
        return 0

    # Reuse the overhead benchmark's setup (same database, org, credit, settings).
    bargs = gw.parse_args(["--upstream-port", str(args.upstream_port), "--skip-litellm"])
    out = Path(args.out or gw.REPO / "var" / "bench" / time.strftime("profile-%Y%m%d-%H%M%S"))
    out.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, gw._on_signal)
    signal.signal(signal.SIGINT, gw._on_signal)
    bpy = gw.bench_venv_python(bargs, out)
    env = gw.gateway_env(bargs)
    secret = gw.setup_gateway(bargs, env)
    gw.start(
        gw.pinned(
            args.client_cpu,
            [str(bpy), str(gw.SHARED / "fake_upstream.py"), "--host", gw.HOST,
             "--port", str(args.upstream_port)],
        ),
        env=dict(os.environ),
        log=out / "fake_upstream.log",
    )  # fmt: skip
    url = f"http://{gw.HOST}:{args.port}/v1/chat/completions"
    texts = [f"# gateway profile {time.strftime('%F %T')}, loadavg {os.getloadavg()}\n"]
    try:
        for case in args.cases:
            stream = case.endswith("s")
            c = int(case.rstrip("s"))
            prefix = out / f"prof_c{c}{'_stream' if stream else ''}"
            server = gw.start(
                gw.pinned(
                    args.server_cpu,
                    [sys.executable, __file__, "--serve", "--port", str(args.port),
                     "--prefix", str(prefix)],
                ),
                env=env,
                log=out / f"{prefix.name}.log",
            )  # fmt: skip
            target = gw.Target("ours", url, secret, gw.MODEL, server)
            gw.wait_ready(target, 60)
            header = overhead_header(url, secret, 50) if not stream else None
            sc = gw.Scenario(prefix.name, c, args.n, stream)
            result = gw.load(bpy, target, sc, 1, bargs, out) or {}
            # Everything the server handled: readiness probe(s), header samples, warm-up, load.
            handled = result.get("sent", 0) + result.get("warmup", 0) + (50 if header else 0) + 1
            os.killpg(server, signal.SIGTERM)
            for _ in range(100):
                if Path(f"{prefix}.sql.json").exists():
                    break
                time.sleep(0.2)
            time.sleep(0.5)
            lat = result.get("latency_ms") or {}
            texts.append(
                f"\n## c={c} {'stream' if stream else 'non-stream'}: {result.get('count')} ok, "
                f"{result.get('errors')} errors, {result.get('throughput_rps')} req/s under "
                f"cProfile, p50 {lat.get('p50')} ms\n"
            )
            if header:
                texts.append(f"x-llmwise-overhead-ms over 50 sequential calls: {header}\n\n")
            texts.append(report(prefix, handled, args.top))
    finally:
        gw.stop_all()
    text = "".join(texts)
    (out / "profile.md").write_text(text)
    print(text)
    print(f"results in {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
