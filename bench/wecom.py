"""The 企业微信 tier-tag reconcile over 100,000 linked customers against the simulator
(target: under 120 s).

    .venv/bin/python -m bench.wecom --customers 100000 --drift 0.01

A fresh PostgreSQL database on DATABASE_URL's server, migrated, seeded with COPY: members in
the usual tier mix, each linked to one customer following one of 10 stewards. The simulated
corp (a real HTTP server on loopback, in this process) holds the same customers with their
tier tag, `--drift` of them with a wrong one. `wecom.reconcile` then runs once, timed; it must
find exactly the drifted customers. The database is dropped at the end.
"""
from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
import time
from datetime import datetime, timezone

from bench.harness import claimed_redis, fresh_database, migrate, pg_connection, services_from_env

TIERS = (("regular", 0, 70), ("silver", 500, 20), ("gold", 5000, 8), ("diamond", 20000, 2))
STAFF = tuple(f"steward-{i:02d}" for i in range(1, 11))
CHUNK = 50_000


async def seed_db(url: str, *, customers: int, corp_id: str, now: datetime, rng: random.Random) -> list[tuple]:
    """Members and their contacts; returns (external_userid, staff, tier) per customer."""
    weights = [w for *_, w in TIERS]
    out = []
    async with pg_connection(url) as conn:
        for first in range(1, customers + 1, CHUNK):
            members, contacts = [], []
            for i in range(first, min(customers, first + CHUNK - 1) + 1):
                tier, floor, _ = rng.choices(TIERS, weights)[0]
                members.append((i, "wx-bench", f"o-bench-{i}", f"u-bench-{i}", f"b{i}", tier, floor, 0, 0,
                                False, False, False, now))
                staff, external = STAFF[i % len(STAFF)], f"wm-bench-{i}"
                contacts.append((i, corp_id, external, staff, f"u-bench-{i}", i, "active", now, now))
                out.append((external, staff, tier))
            await conn.copy_records_to_table("member", records=members, columns=[
                "id", "appid", "openid", "unionid", "invite_code", "tier", "growth", "points", "streak",
                "card_activated", "followed", "blacklisted", "created_at"])
            await conn.copy_records_to_table("wecom_contact", records=contacts, columns=[
                "id", "corp_id", "external_userid", "staff_userid", "unionid", "member_id", "state",
                "created_at", "updated_at"])
        await conn.execute("SELECT setval(pg_get_serial_sequence('member', 'id'), $1)", customers)
        await conn.execute("SELECT setval(pg_get_serial_sequence('wecom_contact', 'id'), $1)", customers)
        await conn.execute("ANALYZE")
    return out


async def main(args) -> int:
    import aiohttp
    from aiohttp import web
    from redis.asyncio import Redis

    from app.db import orm
    from app.domain import rules, wecom
    from app.models import OutboxMessage
    from app.wechat.wecom import WeComClient
    from miniprogram_stub.simulator.wecom import Customer, WeComState, add_wecom_routes, wecom_state_key

    base_db, base_redis = services_from_env()
    rng = random.Random(20261201)
    now = datetime.now(timezone.utc).replace(microsecond=0)
    sim = web.Application()
    add_wecom_routes(sim, state=WeComState())
    corp = sim[wecom_state_key]
    corp.staff.update(STAFF)
    runner = web.AppRunner(sim, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    sim_url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"  # noqa: SLF001
    try:
        async with fresh_database(base_db, "bench_wecom") as url, claimed_redis(base_redis) as redis_url:
            await migrate({**os.environ, "DATABASE_URL": url})
            started = time.perf_counter()
            seeded = await seed_db(url, customers=args.customers, corp_id=corp.corp_id, now=now, rng=rng)
            redis = Redis.from_url(redis_url, decode_responses=True)
            async with orm(url), aiohttp.ClientSession() as session:
                client = WeComClient(session=session, redis=redis, base_url=sim_url, corp_id=corp.corp_id,
                                     secret=corp.secret)
                current = await rules.load()
                tags = await wecom.ensure_tags(client=client, rules=current)
                drifted = 0
                for external, staff, tier in seeded:
                    tag = tags[tier]
                    if rng.random() < args.drift:
                        tag, drifted = tags["diamond" if tier != "diamond" else "regular"], drifted + 1
                    customer = Customer(external_userid=external, name="客户", unionid=None)
                    corp.customers[external] = customer
                    corp.follow(customer, staff, {tag})
                print(f"seeded {args.customers:,} linked customers ({drifted:,} drifted) in "
                      f"{time.perf_counter() - started:.1f} s", flush=True)
                corp.calls.clear()
                started = time.perf_counter()
                result = await wecom.reconcile(client=client, rules=current, now=now)
                seconds = time.perf_counter() - started
                queued = await OutboxMessage.filter(channel="wecom").count()
            await redis.aclose()
    finally:
        await runner.cleanup()
    pages = len(corp.called("/cgi-bin/externalcontact/batch/get_by_user"))
    ok = seconds < 120 and result["drifted"] == drifted == queued
    print(f"reconcile: {seconds:.1f} s over {result['seen']:,} customers, {pages:,} pages, "
          f"{result['drifted']:,} drifted, {queued:,} mark_tag queued  target < 120 s: {'ok' if ok else 'OVER'}")
    return 0 if ok else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.wecom", description=__doc__.split("\n\n")[0])
    p.add_argument("--customers", type=int, default=100_000, help="linked customers (the issue's figure: 100000)")
    p.add_argument("--drift", type=float, default=0.01, help="share of customers whose tag is wrong")
    return p


if __name__ == "__main__":
    sys.exit(asyncio.run(main(build_parser().parse_args())))
