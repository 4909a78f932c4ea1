"""Issue 5's capacity checks on one pinned server worker, production-shaped (PostgreSQL + Redis):

* ``streams``: N (default 1,000) concurrent streams held open at once through the gateway — the
  fake upstream sends each stream's chunks slowly, so all N are open together. Every stream must
  end with its usage chunk and ``[DONE]``; we report errors, the peak number open at once, the
  server's peak RSS, and afterwards ``wallet_audit`` and the count of reservations still held.
* ``memory``: M (default 100,000) non-stream calls at a steady concurrency; the server's RSS is
  sampled every ``--sample-every`` calls. "Flat" = the last sample within ±5% of the first sample
  taken after the warm-up (the first 10% of the calls).

Same set-up as ``gateway_overhead.py`` (its functions are reused): database ``llmwise_bench``,
Redis db 15, org ``bench-gateway``, provider ``openai`` pointed at ``../shared/bench``'s fake
upstream. Loads go to 127.0.0.1 only and are bounded in count and time.

    .venv/bin/python bench/gateway_capacity.py streams            # ~1 min
    .venv/bin/python bench/gateway_capacity.py memory -n 100000   # ~10 min on 2 shared cores
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
import gateway_overhead as gw


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def hwm_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def server_pid(group_leader: int) -> int:
    """The uvicorn process itself (taskset execs into it, so the leader is the server)."""
    return group_leader


async def open_streams(url: str, key: str, count: int, timeout_s: float) -> dict[str, Any]:
    body = {
        "model": gw.MODEL,
        "messages": [{"role": "user", "content": "Tell me a long story."}],
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    headers = {"Authorization": f"Bearer {key}"}
    open_now = 0
    peak_open = 0
    results: list[str] = []
    limits = httpx.Limits(max_connections=count + 10, max_keepalive_connections=count + 10)
    timeout = httpx.Timeout(timeout_s, connect=30)
    async with httpx.AsyncClient(limits=limits, timeout=timeout) as client:

        async def one() -> None:
            nonlocal open_now, peak_open
            try:
                async with client.stream("POST", url, json=body, headers=headers) as response:
                    if response.status_code != 200:
                        results.append(f"status {response.status_code}")
                        return
                    open_now += 1
                    peak_open = max(peak_open, open_now)
                    saw_usage = saw_done = False
                    try:
                        async for line in response.aiter_lines():
                            if line == "data: [DONE]":
                                saw_done = True
                            elif line.startswith("data: ") and '"usage"' in line:
                                saw_usage = saw_usage or '"choices":[]' in line
                    finally:
                        open_now -= 1
                    results.append("ok" if saw_done and saw_usage else "incomplete")
            except httpx.HTTPError as exc:
                results.append(type(exc).__name__)

        started = time.monotonic()
        await asyncio.gather(*(one() for _ in range(count)))
        elapsed = time.monotonic() - started
    counts: dict[str, int] = {}
    for result in results:
        counts[result] = counts.get(result, 0) + 1
    return {"results": counts, "peak_open": peak_open, "seconds": round(elapsed, 1)}


async def steady_calls(
    url: str, key: str, total: int, concurrency: int, sample_every: int, pid: int
) -> dict[str, Any]:
    body = {"model": gw.MODEL, "messages": [{"role": "user", "content": "ping"}]}
    headers = {"Authorization": f"Bearer {key}"}
    samples: list[tuple[int, float]] = [(0, rss_mib(pid))]
    done = errors = 0
    statuses: dict[str, int] = {}
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(total):
        queue.put_nowait(i)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(limits=limits, timeout=30) as client:

        async def worker() -> None:
            nonlocal done, errors
            while True:
                try:
                    queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                try:
                    response = await client.post(url, json=body, headers=headers)
                    outcome = str(response.status_code)
                except httpx.HTTPError as exc:
                    outcome = type(exc).__name__
                statuses[outcome] = statuses.get(outcome, 0) + 1
                if outcome != "200":
                    errors += 1
                done += 1
                if done % sample_every == 0:
                    samples.append((done, rss_mib(pid)))

        started = time.monotonic()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.monotonic() - started
    warm = [s for s in samples if s[0] >= total // 10]
    first, last = warm[0][1], warm[-1][1]
    return {
        "calls": done,
        "errors": errors,
        "statuses": statuses,
        "seconds": round(elapsed, 1),
        "req_per_s": round(done / elapsed, 1),
        "rss_samples_mib": [(n, round(m, 1)) for n, m in samples],
        "rss_after_warmup_mib": round(first, 1),
        "rss_last_mib": round(last, 1),
        "rss_change_pct": round((last - first) / first * 100, 2),
        "flat_within_5pct": abs(last - first) / first <= 0.05,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("check", choices=["streams", "memory"])
    p.add_argument("-n", type=int, default=None, help="streams or calls (1,000 / 100,000)")
    p.add_argument("--concurrency", type=int, default=32, help="memory: concurrent calls")
    p.add_argument("--sample-every", type=int, default=5_000)
    p.add_argument("--chunk-delay-ms", type=float, default=250.0, help="streams: upstream pace")
    p.add_argument("--chunks", type=int, default=20)
    p.add_argument("--server-cpu", default="0")
    p.add_argument("--client-cpu", default="1")
    p.add_argument("--upstream-port", type=int, default=18390)
    p.add_argument("--ours-port", type=int, default=18391)
    gw.add_setup_arguments(p)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    args.skip_litellm = True
    args.litellm_port = 0
    out = Path(args.out or gw.REPO / "var" / "bench" / time.strftime("capacity-%Y%m%d-%H%M%S"))
    out.mkdir(parents=True, exist_ok=True)
    signal.signal(signal.SIGTERM, gw._on_signal)
    signal.signal(signal.SIGINT, gw._on_signal)
    count = args.n or (1_000 if args.check == "streams" else 100_000)
    bpy = gw.bench_venv_python(args, out)
    env = gw.gateway_env(args)
    env["OPENAI_BASE_URL"] = f"http://{gw.HOST}:{args.upstream_port}/v1"
    # One org sends everything: lift the per-org rate limits (10,000 RPM by default), which a
    # 100,000-call run at full speed would otherwise hit; the limits still run on every call.
    env["GATEWAY_ORG_RPM"] = env["GATEWAY_ORG_TPM"] = str(10**9)
    secret = gw.setup_gateway(args, env)
    delay = args.chunk_delay_ms if args.check == "streams" else 0
    gw.start(
        gw.pinned(
            args.client_cpu,
            [str(bpy), str(gw.SHARED / "fake_upstream.py"), "--host", gw.HOST,
             "--port", str(args.upstream_port), "--chunks", str(args.chunks),
             "--chunk-delay-ms", str(delay)],
        ),
        env=dict(os.environ),
        log=out / "fake_upstream.log",
    )  # fmt: skip
    server = gw.start(
        gw.pinned(
            args.server_cpu,
            [str(gw.VENV_BIN / "uvicorn"), "llmwise.asgi:application", "--host", gw.HOST,
             "--port", str(args.ours_port), "--workers", "1", "--no-access-log",
             "--timeout-keep-alive", "75",  # as docker/entrypoint.sh
             "--lifespan", "on", "--loop", "uvloop", "--http", "httptools",
             "--backlog", "4096", "--limit-concurrency", str(count + 100)],
        ),
        env=env,
        log=out / "ours.log",
    )  # fmt: skip
    url = f"http://{gw.HOST}:{args.ours_port}/v1/chat/completions"
    target = gw.Target("ours", url, secret, gw.MODEL, server)
    report: dict[str, Any] = {"check": args.check, "n": count, "loadavg": os.getloadavg()}
    try:
        gw.wait_ready(target, 60)
        pid = server_pid(server)
        report["rss_start_mib"] = round(rss_mib(pid), 1)
        if args.check == "streams":
            report.update(asyncio.run(open_streams(url, secret, count, timeout_s=120)))
        else:
            report.update(
                asyncio.run(
                    steady_calls(url, secret, count, args.concurrency, args.sample_every, pid)
                )
            )
        report["rss_peak_mib"] = round(hwm_mib(pid), 1)
    finally:
        time.sleep(1)
        gw.stop_all()
    audit = subprocess.run(
        [str(gw.VENV_BIN / "python"), "manage.py", "wallet_audit"],
        cwd=gw.REPO,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    report["wallet_audit"] = {
        "exit": audit.returncode,
        "output": (audit.stdout + audit.stderr).strip().splitlines()[-3:],
    }
    held = gw.run(
        [str(gw.VENV_BIN / "python"), "manage.py", "shell", "-c",
         "from apps.wallet.models import Reservation as R;"
         "print(R.objects.filter(status='held').count())"],
        env=env,
    )  # fmt: skip
    report["reservations_held_after"] = int(held.strip().splitlines()[-1])
    text = json.dumps(report, indent=2)
    (out / "report.json").write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
