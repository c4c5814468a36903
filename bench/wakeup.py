"""The wake-up job at scale: 1,000,000 members of whom 30 % are dormant (target: < 120 s, < 300 MB).

    .venv/bin/python -m bench.wakeup --members 1000000

A fresh PostgreSQL database on DATABASE_URL's server, migrated and seeded with COPY: dormant
members last logged in 31 to 400 days ago (a tenth of them with subscription quota for the
coupon template, a fifth following the official account), the others within the last 29 days.
The job runs through its domain function in a process of its own (peak memory is the job's),
then once more to show a re-run gives nothing; the database is dropped at the end.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone

from bench.harness import fresh_database, migrate, pg_connection
from bench.jobs import peak_mb

CHUNK = 200_000


async def seed(url: str, *, members: int, dormant: float, now: datetime, template_id: str) -> dict:
    rng = random.Random(20261202)
    started, asleep = time.perf_counter(), 0
    async with pg_connection(url) as conn:
        quotas = []
        for first in range(0, members, CHUNK):
            rows = []
            for member_id in range(first + 1, min(members, first + CHUNK) + 1):
                is_dormant = rng.random() < dormant
                idle = rng.randrange(31, 400) if is_dormant else rng.randrange(0, 29)
                seen = now - timedelta(days=idle, seconds=rng.randrange(86400))
                joined = seen - timedelta(days=rng.randrange(0, 400))
                follows = is_dormant and rng.random() < 0.2
                if is_dormant:
                    asleep += 1
                    if rng.random() < 0.1:
                        quotas.append((member_id, template_id, 1))
                rows.append((member_id, "wx-bench", f"o-bench-{member_id}", f"b{member_id}", "regular", 0, 0, 0,
                             follows, False, False, joined, seen, follows and f"oa-bench-{member_id}" or None))
            await conn.copy_records_to_table(
                "member", records=rows,
                columns=["id", "appid", "openid", "invite_code", "tier", "growth", "points", "streak",
                         "followed", "blacklisted", "card_activated", "created_at", "last_login_at", "oa_openid"])
        await conn.copy_records_to_table("subscription_quota", records=quotas,
                                         columns=["member_id", "template_id", "remaining"])
        await conn.execute("SELECT setval(pg_get_serial_sequence('member', 'id'), $1)", members)
        await conn.execute("ANALYZE")
    return {"seconds": time.perf_counter() - started, "dormant": asleep}


async def run_one(url: str, now_iso: str) -> dict:
    from app.config import Settings
    from app.db import orm
    from app.domain import rules, wakeup

    settings, now = Settings(), datetime.fromisoformat(now_iso)
    async with orm(url):
        current = await rules.load()
        started = time.perf_counter()
        result = await wakeup.wake_dormant(rules=current, now=now, tz=settings.tz,
                                           template_id=settings.templates.get("coupon"))
        seconds = time.perf_counter() - started
    return {"seconds": seconds, "peak_mb": peak_mb(), "result": result}


def child(url: str, now: datetime) -> dict:
    out = subprocess.run([sys.executable, "-m", "bench.wakeup", "--child", "--url", url, "--now", now.isoformat()],
                         check=True, capture_output=True, text=True, timeout=1800)
    return json.loads(out.stdout.strip().splitlines()[-1])


async def main(args) -> int:
    from app.config import Settings

    base = os.environ.get("DATABASE_URL", "")
    if not base.startswith("postgres"):
        raise SystemExit("set DATABASE_URL=postgres://... (a server where this run may create a database)")
    now = datetime.now(timezone.utc).replace(microsecond=0)
    async with fresh_database(base, "bench_wakeup") as url:
        await migrate({**os.environ, "DATABASE_URL": url})
        seeded = await seed(url, members=args.members, dormant=args.dormant, now=now,
                            template_id=Settings().templates["coupon"])
        print(f"seeded {args.members:,} members ({seeded['dormant']:,} dormant) in {seeded['seconds']:.1f} s",
              flush=True)
        first = await asyncio.to_thread(child, url, now)
        again = await asyncio.to_thread(child, url, now)
    ok = first["seconds"] < 120 and first["peak_mb"] < 300
    print(f"wakeup: {first['seconds']:.1f} s, peak {first['peak_mb']:.0f} MB, {first['result']}  "
          f"target: < 120 s, < 300 MB: {'ok' if ok else 'OVER'}")
    print(f"wakeup again: {again['seconds']:.1f} s, issued {again['result']['issued']} (idempotent)")
    return 0 if again["result"]["issued"] == 0 and first["result"]["issued"] == seeded["dormant"] else 1


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m bench.wakeup", description=__doc__.split("\n\n")[0])
    p.add_argument("--members", type=int, default=100_000, help="members to seed (the issue's figure: 1000000)")
    p.add_argument("--dormant", type=float, default=0.3, help="share of dormant members")
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--url", help=argparse.SUPPRESS)
    p.add_argument("--now", help=argparse.SUPPRESS)
    return p


if __name__ == "__main__":
    arguments = build_parser().parse_args()
    if arguments.child:
        print(json.dumps(asyncio.run(run_one(arguments.url, arguments.now)), default=str))
        sys.exit(0)
    sys.exit(asyncio.run(main(arguments)))
