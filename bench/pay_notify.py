"""Benchmark POST /wechat/pay/notify: signed APIv3 payment notifications at 64 connections.

Starts the real server (`python -m app serve`, sandbox mode, so it trusts the simulator's
platform key) on a fresh PostgreSQL database created for the run (and dropped after), with
REDIS_URL's server; pre-creates members; sends signed notifications for distinct
transactions; then the same load against a bare aiohttp endpoint in the same run, for the
ratio. Also measures RSA verification inline vs asyncio.to_thread under 64 concurrent tasks.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres REDIS_URL=redis://127.0.0.1:6379/0 \\
        .venv/bin/python -m bench.pay_notify --requests 4000
"""
from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import signal
import statistics
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit, urlunsplit

import aiohttp

from bench.harness import BARE_SERVER, claim_redis, flush_redis, free_port, pg_admin, pg_connection, wait_up
from miniprogram_stub.simulator import pay as sim

APPID = "wx-sandbox-mp"


async def create_members(database_url: str, count: int) -> list[str]:
    from app.db import orm
    from app.domain.members import new_invite_code
    from app.models import Member

    openids = [f"o-bench-{i}" for i in range(count)]
    async with orm(database_url):
        await Member.bulk_create([Member(appid=APPID, openid=o, invite_code=new_invite_code()) for o in openids],
                                 batch_size=500)
    return openids


def sign_all(openids: list[str], count: int, prefix: str) -> list[tuple[dict, bytes]]:
    """Pre-signed notifications (signing is the platform's cost, not the server's)."""
    now = int(time.time())
    out = []
    for i in range(count):
        tid = f"42{prefix}{i:010d}"
        resource = sim.transaction_resource(openid=openids[i % len(openids)], transaction_id=tid,
                                            out_trade_no=f"b{prefix}{i}", total_fen=100 * (1 + i % 300), appid=APPID)
        out.append(sim.build_v3_notification(event_type="TRANSACTION.SUCCESS", resource=resource, timestamp=now))
    return out


async def load(url: str, notes: list[tuple[dict, bytes]], concurrency: int, rate: float = 0) -> dict:
    """Closed loop (each connection sends its next request when the last one answered) or, with
    `rate`, open loop: request i is due at i / rate seconds, over at most `concurrency`
    connections, and its latency counts from when it was due (queueing included)."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    queue = iter(notes)
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def send(headers: dict, body: bytes, since: float) -> None:
            async with session.post(url, data=body, headers=headers) as resp:
                await resp.read()
                statuses[resp.status] = statuses.get(resp.status, 0) + 1
            latencies.append(time.perf_counter() - since)

        async def worker() -> None:
            for headers, body in queue:
                await send(headers, body, time.perf_counter())

        async def scheduled(i: int, headers: dict, body: bytes) -> None:
            due = began + i / rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            await send(headers, body, due)

        began = time.perf_counter()
        if rate:
            await asyncio.gather(*(scheduled(i, h, b) for i, (h, b) in enumerate(notes)))
        else:
            await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    latencies.sort()
    return {
        "requests": len(latencies), "statuses": statuses, "rps": len(latencies) / elapsed,
        "p50": latencies[len(latencies) // 2] * 1000,
        "p99": latencies[min(len(latencies) - 1, int(len(latencies) * 0.99))] * 1000,
        "mean": statistics.fmean(latencies) * 1000,
    }


async def verify_inline_vs_thread(count: int, concurrency: int) -> dict[str, float]:
    """RSA-2048 verification of `count` notifications by `concurrency` tasks, inline and via to_thread."""
    from app.wechat.pay import PayV3Verifier

    verifier = PayV3Verifier(apiv3_key=sim.SANDBOX_APIV3_KEY,
                             public_keys={sim.SANDBOX_PUBLIC_KEY_ID: sim.platform_public_key()})
    notes = sign_all(["o-x"], min(count, 500), "v")
    now = time.time()

    async def inline(headers, body):
        verifier.parse_notification(headers=headers, body=body, now=now)

    async def threaded(headers, body):
        await asyncio.to_thread(verifier.parse_notification, headers=headers, body=body, now=now)

    results = {}
    for name, call in (("inline", inline), ("to_thread", threaded)):
        items = iter([notes[i % len(notes)] for i in range(count)])

        async def worker():
            for headers, body in items:
                await call(headers, body)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        results[name] = count / (time.perf_counter() - began)
    return results


async def main(args: argparse.Namespace) -> int:
    base_db, base_redis = os.environ.get("DATABASE_URL", ""), os.environ.get("REDIS_URL", "")
    if not base_db.startswith("postgres") or not base_redis:
        print("set DATABASE_URL (postgres://...) and REDIS_URL (redis://...)", file=sys.stderr)
        return 2
    name = f"bench_pay_{secrets.token_hex(3)}"
    # DATABASE_URL's query (e.g. ?maxsize=20, Tortoise's pool size) goes to the server only.
    server_query = urlsplit(base_db).query
    if args.pool:
        server_query = f"minsize={min(4, args.pool)}&maxsize={args.pool}"
    base_db = urlunsplit(urlsplit(base_db)._replace(query=""))
    await pg_admin(base_db, f'CREATE DATABASE "{name}"')
    database_url = urlunsplit(urlsplit(base_db)._replace(path=f"/{name}"))
    redis_url = await claim_redis(base_redis)
    port, bare_port = free_port(), free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WECHAT_")}
    server_db = urlunsplit(urlsplit(database_url)._replace(query=server_query))
    env.update(DATABASE_URL=server_db, REDIS_URL=redis_url, PORT=str(port), HOST="127.0.0.1",
               WORKERS=str(args.workers), LOG_LEVEL="WARNING", SCHEDULER_IN_SERVE="0")
    # Its own process group: with WORKERS > 1 the workers are its children and must stop with it.
    server = await asyncio.create_subprocess_exec(sys.executable, "-m", "app", "serve", env=env,
                                                  stdout=asyncio.subprocess.DEVNULL, start_new_session=True)
    bare = await asyncio.create_subprocess_exec(sys.executable, "-c", BARE_SERVER, str(bare_port))
    try:
        await wait_up(f"http://127.0.0.1:{port}/healthz", server)
        await wait_up(f"http://127.0.0.1:{bare_port}/", bare)
        openids = await create_members(database_url, args.members)
        with ThreadPoolExecutor(2) as pool:
            loop = asyncio.get_running_loop()
            warm, notes = await asyncio.gather(
                loop.run_in_executor(pool, sign_all, openids, 200, "w"),
                loop.run_in_executor(pool, sign_all, openids, args.requests, "r"))
        notify = f"http://127.0.0.1:{port}/wechat/pay/notify"
        await load(notify, warm, args.concurrency)
        app_result = await load(notify, notes, args.concurrency, args.rate)
        await load(f"http://127.0.0.1:{bare_port}/wechat/pay/notify", warm, args.concurrency)
        bare_result = await load(f"http://127.0.0.1:{bare_port}/wechat/pay/notify", notes, args.concurrency, args.rate)
        verify = await verify_inline_vs_thread(2000, args.concurrency)
        recorded = await count_payments(database_url)
    finally:
        if server.returncode is None:
            os.killpg(server.pid, signal.SIGTERM)
        if bare.returncode is None:
            bare.terminate()
        for proc in (server, bare):
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except asyncio.TimeoutError:
                proc.kill()
        await flush_redis(redis_url)
        await pg_admin(base_db, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    print(f"\npay notify bench: {args.requests} signed notifications (distinct transactions), "
          f"{args.concurrency} connections, {f'open loop at {args.rate:g}/s' if args.rate else 'closed loop'}, "
          f"{args.workers} server worker(s), pool {args.pool or 'default'}, "
          f"{os.cpu_count()} CPUs\n")
    print(f"{'endpoint':<28}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'mean ms':>10}  statuses")
    for label, r in (("POST /wechat/pay/notify", app_result), ("bare aiohttp 204", bare_result)):
        print(f"{label:<28}{r['rps']:>10.0f}{r['p50']:>10.1f}{r['p99']:>10.1f}{r['mean']:>10.1f}  {r['statuses']}")
    print(f"\nratio app/bare: {app_result['rps'] / bare_result['rps']:.2f}")
    print(f"payments recorded: {recorded} of {args.requests + 200} sent (incl. 200 warm-up)")
    print(f"RSA verify, 64 tasks: inline {verify['inline']:.0f}/s, to_thread {verify['to_thread']:.0f}/s")
    target = app_result["rps"] >= 800 and app_result["p99"] <= 50
    print(f"target >= 800/s at p99 <= 50 ms: {'met' if target else 'NOT met'}")
    return 0


async def count_payments(database_url: str) -> int:
    async with pg_connection(database_url) as conn:
        return int(await conn.fetchval("SELECT count(*) FROM payment WHERE credited"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.pay_notify", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=4000, help="notifications to send (default: %(default)s)")
    parser.add_argument("--concurrency", type=int, default=64, help="connections (default: %(default)s)")
    parser.add_argument("--members", type=int, default=1000, help="members to pre-create (default: %(default)s)")
    parser.add_argument("--pool", type=int, default=0,
                        help="the server's PostgreSQL pool size per worker (default: Tortoise's own, 5)")
    parser.add_argument("--rate", type=float, default=0,
                        help="open loop: offer this many notifications/s (latency from when each was due) "
                             "instead of closed-loop connections; at 64 closed-loop connections Little's law "
                             "makes mean latency = 64 / throughput (default: closed loop)")
    parser.add_argument("--workers", type=int, default=1, help="server processes, WORKERS (default: %(default)s)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
