"""Benchmark check-in: N distinct members log in and check in, at 64 concurrent connections.

The real server (`python -m app serve`, WORKERS processes) on a fresh PostgreSQL database
and REDIS_URL's server, talking over HTTP to the WeChat simulator run by this script; then
the same client against a bare aiohttp JSON endpoint in the same run, for the ratio.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/test REDIS_URL=redis://127.0.0.1:6379/0 \\
        .venv/bin/python -m bench.checkin --members 5000 --workers 2
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys

from aiohttp import web

from bench import harness
from miniprogram_stub.simulator import create_simulator_app

APPID, SECRET = "wx-bench-mp", "bench-secret"


async def set_loose_limits(database_url: str, members: int) -> None:
    """One client address logs every member in: lift the per-IP login limit for the run."""
    from app.domain.rules import LimitsRule

    limits = LimitsRule(login_per_ip_per_minute=members * 10).model_dump(mode="json")
    async with harness.pg_connection(database_url) as conn:
        await conn.execute("UPDATE rule SET value = $1::jsonb WHERE key = 'limits'", json.dumps(limits))


async def main(args: argparse.Namespace) -> int:
    base_db, base_redis = harness.services_from_env()
    sim_runner = web.AppRunner(create_simulator_app(appid=APPID, secret=SECRET), access_log=None)
    await sim_runner.setup()
    sim_port = harness.free_port()
    await web.TCPSite(sim_runner, "127.0.0.1", sim_port).start()
    try:
        async with harness.fresh_database(base_db, "bench_checkin") as database_url, \
                harness.claimed_redis(base_redis) as redis_url:
            env = {k: v for k, v in os.environ.items() if not k.startswith("WECHAT_")}
            env.update(DATABASE_URL=database_url, REDIS_URL=redis_url, WORKERS=str(args.workers),
                       LOG_LEVEL="WARNING", WECHAT_MP_APPID=APPID, WECHAT_MP_SECRET=SECRET,
                       WECHAT_API_BASE=f"http://127.0.0.1:{sim_port}")
            await harness.migrate(env)
            await set_loose_limits(database_url, args.members)
            async with harness.server(env) as base, harness.server(env, bare=True) as bare:
                logins = [harness.Request("POST", f"{base}/mp/login",
                                          {"Content-Type": "application/json"},
                                          json.dumps({"code": f"sim:o-bench-{i}"}).encode())
                          for i in range(args.members)]
                tokens: list[str] = []
                login_result = await _collect_tokens(logins, args.concurrency, tokens)
                checkins = [harness.Request("POST", f"{base}/mp/checkin",
                                            {"Authorization": f"Bearer {t}"}) for t in tokens]
                checkin_result = await harness.load(checkins, args.concurrency)
                again = await harness.load(checkins[: min(2000, len(checkins))], args.concurrency)
                bare_requests = [harness.Request("POST", f"{bare}/mp/checkin",
                                                 {"Authorization": f"Bearer {t}"}) for t in tokens]
                await harness.load(bare_requests[:500], args.concurrency)  # warm-up
                bare_result = await harness.load(bare_requests, args.concurrency)
    finally:
        await sim_runner.cleanup()

    print(f"\ncheck-in bench: {args.members} members, {args.concurrency} connections, "
          f"{args.workers} server worker(s), {os.cpu_count()} CPUs, PostgreSQL + Redis\n")
    print(harness.HEADER)
    print(login_result.row("POST /mp/login (new)"))
    print(checkin_result.row("POST /mp/checkin"))
    print(again.row("POST /mp/checkin (409 again)"))
    print(bare_result.row("bare aiohttp JSON"))
    print(f"\nratio check-in/bare: {checkin_result.rps / bare_result.rps:.2f}")
    met = checkin_result.rps >= 1000 and checkin_result.p99 <= 50
    print(f"target >= 1000 check-ins/s at p99 <= 50 ms: {'met' if met else 'NOT met'}")
    ok = checkin_result.statuses.get(200, 0) == args.members
    return 0 if ok else 1


async def _collect_tokens(logins, concurrency: int, tokens: list[str]) -> harness.Result:
    import time

    import aiohttp

    latencies, statuses = [], {}
    queue = iter(logins)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        async def worker():
            for req in queue:
                started = time.perf_counter()
                async with session.post(req.url, data=req.body, headers=req.headers) as resp:
                    body = await resp.json()
                    statuses[resp.status] = statuses.get(resp.status, 0) + 1
                    if resp.status == 200:
                        tokens.append(body["token"])
                latencies.append(time.perf_counter() - started)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    latencies.sort()
    n = len(latencies)
    return harness.Result(n, statuses, n / elapsed, latencies[n // 2] * 1000,
                          latencies[min(n - 1, int(n * 0.99))] * 1000, sum(latencies) / n * 1000)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.checkin", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=5000, help="distinct members (default: %(default)s)")
    parser.add_argument("--concurrency", type=int, default=64, help="connections (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=2, help="server processes, WORKERS (default: %(default)s)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
