"""The nightly jobs at scale: expire_points, remind_expiring_points and birthday_gifts over
1,000,000 members and 5,000,000 point lots (target: each under 120 s and 300 MB).

    .venv/bin/python -m bench.jobs --members 1000000 --lots 5000000

A fresh PostgreSQL database on DATABASE_URL's server, migrated, seeded in bulk with COPY: lots
earned uniformly over the last 13 months (so about one in thirteen is past its 12 months), each
member's balance the sum of its lots. Each job then runs through its domain function in a
process of its own, so the peak memory (ru_maxrss) is the job's and not the seeding's. The
ledger invariant is verified after expiry; the database is dropped at the end.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import resource
import subprocess
import sys
import time
from array import array
from datetime import date, datetime, timedelta, timezone

from bench.harness import fresh_database, migrate, pg_connection

JOBS = ("expire_points", "remind_expiring_points", "birthday_gifts")
TIERS = (("regular", 0, 70), ("silver", 500, 20), ("gold", 5000, 8), ("diamond", 20000, 2))
CHUNK = 200_000


async def seed(url: str, *, members: int, lots: int, now: datetime, card_share: float = 0.3) -> dict:
    rng = random.Random(20261122)
    started = time.perf_counter()
    balances = array("q", bytes(8 * (members + 1)))
    async with pg_connection(url) as conn:
        # Lots are drawn first (members need their balances), written after their members.
        owners, amounts = array("q"), array("q")
        for _ in range(lots):
            member_id, amount = rng.randint(1, members), rng.randint(1, 200)
            owners.append(member_id)
            amounts.append(amount)
            balances[member_id] += amount
        weights = [w for *_, w in TIERS]
        born_from = date(1960, 1, 1).toordinal()
        for first in range(0, members, CHUNK):
            rows = []
            for member_id in range(first + 1, min(members, first + CHUNK) + 1):
                tier, floor, _ = rng.choices(TIERS, weights)[0]
                birthday = date.fromordinal(born_from + rng.randrange(45 * 365)) if rng.random() < 0.9 else None
                # Card holders: expiry queues their bonus pushes (issue 4), the others cost nothing.
                code = f"bench-card-{member_id}" if rng.random() < card_share else None
                joined = now - timedelta(days=400 + rng.randrange(400))
                rows.append((member_id, "wx-bench", f"o-bench-{member_id}", f"b{member_id}", birthday,
                             birthday is not None, tier, floor + rng.randrange(400),
                             balances[member_id], 0, False, False, joined, code, code and "p-bench"))
            await conn.copy_records_to_table(
                "member", records=rows,
                columns=["id", "appid", "openid", "invite_code", "birthday", "card_activated", "tier",
                         "growth", "points", "streak", "followed", "blacklisted", "created_at",
                         "card_code", "card_id"])
        span = 396 * 86400  # 13 months of earnings, in seconds
        for first in range(0, lots, CHUNK):
            rows = []
            for lot in range(first + 1, min(lots, first + CHUNK) + 1):
                earned = now - timedelta(seconds=rng.randrange(span))
                amount = amounts[lot - 1]
                rows.append((lot, owners[lot - 1], amount, 0, "seed", f"seed:{lot}", amount,
                             earned + timedelta(days=365), "", earned))
            await conn.copy_records_to_table(
                "ledger_entry", records=rows,
                columns=["id", "member_id", "delta", "growth_delta", "reason", "idempotency_key",
                         "remaining", "expires_at", "note", "created_at"])
        # Foreign keys were checked row by row by COPY; the ids were given, so move the sequences on.
        await conn.execute("SELECT setval(pg_get_serial_sequence('member', 'id'), $1)", members)
        await conn.execute("SELECT setval(pg_get_serial_sequence('ledger_entry', 'id'), $1)", lots)
        await conn.execute("ANALYZE")
    return {"seconds": time.perf_counter() - started}


async def run_one(url: str, job: str, now_iso: str) -> dict:
    """One job through its domain function, in this process; seconds and this process's peak RSS."""
    from app.config import Settings
    from app.db import orm
    from app.domain import birthdays, expiry, rules, wiring

    wiring.install()  # as create_app and the worker do: expiry queues the card pushes
    now = datetime.fromisoformat(now_iso)
    tz = Settings().tz
    today = now.astimezone(tz).date()
    async with orm(url):
        current = await rules.load()
        started = time.perf_counter()
        if job == "expire_points":
            result = vars(await expiry.expire_due(now=now))
        elif job == "remind_expiring_points":
            result = await expiry.remind_expiring(rules=current, today=today, now=now, tz=tz)
        else:
            result = await birthdays.give_gifts(rules=current, today=today, now=now, tz=tz)
        seconds = time.perf_counter() - started
    return {"job": job, "seconds": seconds, "peak_mb": peak_mb(), "result": result}


def peak_mb() -> float:
    """This process's peak resident memory. VmHWM, not ru_maxrss: Linux carries ru_maxrss over
    exec from the forking parent (the seeder), VmHWM starts afresh with the new image."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def verify(url: str) -> dict:
    from tortoise import connections

    from app import ledger_check
    from app.db import orm

    started, broken, checked = time.perf_counter(), 0, 0
    async with orm(url):
        _, low, high = await ledger_check.member_id_range()
        async for n, bad in ledger_check.scan(low=low, high=high, batch=20000):
            checked += n
            broken += len(bad)
        _, rows = await connections.get("default").execute_query(
            "SELECT COUNT(*) AS n FROM outbox_message WHERE channel = 'card'")
        pushes = int(dict(rows[0])["n"])
    return {"members": checked, "imbalances": broken, "card_pushes": pushes,
            "seconds": time.perf_counter() - started}


def child(url: str, job: str, now: datetime) -> dict:
    out = subprocess.run([sys.executable, "-m", "bench.jobs", "--child", job, "--url", url,
                          "--now", now.isoformat()], check=True, capture_output=True, text=True,
                         timeout=1800)
    return json.loads(out.stdout.strip().splitlines()[-1])


async def main(args) -> int:
    base = os.environ.get("DATABASE_URL", "")
    if not base.startswith("postgres"):
        raise SystemExit("set DATABASE_URL=postgres://... (a server where this run may create a database)")
    now = datetime.now(timezone.utc).replace(microsecond=0)
    rows = []
    async with fresh_database(base, "bench_jobs") as url:
        await migrate({**os.environ, "DATABASE_URL": url})
        seeded = await seed(url, members=args.members, lots=args.lots, now=now, card_share=args.card_share)
        print(f"seeded {args.members:,} members and {args.lots:,} lots in {seeded['seconds']:.1f} s", flush=True)
        for job in JOBS:
            figures = await asyncio.to_thread(child, url, job, now)
            rows.append(figures)
            print(f"{job}: {figures['seconds']:.1f} s, peak {figures['peak_mb']:.0f} MB, {figures['result']}",
                  flush=True)
        again = await asyncio.to_thread(child, url, "expire_points", now)
        check = await verify(url)
    print()
    print(f"{'job':26} {'seconds':>9} {'peak MB':>9}  target: < 120 s, < 300 MB")
    for r in rows:
        ok = r["seconds"] < 120 and r["peak_mb"] < 300
        print(f"{r['job']:26} {r['seconds']:9.1f} {r['peak_mb']:9.0f}  {'ok' if ok else 'OVER'}")
    print(f"expire_points again: {again['seconds']:.1f} s, {again['result']['lots']} lots (idempotent)")
    print(f"ledger verify: {check['members']:,} members, {check['imbalances']} imbalances, {check['seconds']:.1f} s;"
          f" {check['card_pushes']:,} card pushes queued")
    return 0 if check["imbalances"] == 0 and again["result"]["lots"] == 0 else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.jobs", description=__doc__.split("\n\n")[0])
    p.add_argument("--members", type=int, default=100_000, help="members to seed (the issue's figure: 1000000)")
    p.add_argument("--lots", type=int, default=500_000, help="point lots to seed (the issue's figure: 5000000)")
    p.add_argument("--card-share", type=float, default=0.3, help="share of members holding a member card")
    p.add_argument("--child", choices=JOBS, help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--now", help=argparse.SUPPRESS)
    return p


if __name__ == "__main__":
    arguments = build_parser().parse_args()
    if arguments.child:
        print(json.dumps(asyncio.run(run_one(arguments.url, arguments.child, arguments.now)), default=str))
        sys.exit(0)
    sys.exit(asyncio.run(main(arguments)))
