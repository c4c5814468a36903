"""Benchmark GET /admin/metrics on a big programme: 1,000,000 members and 10,000,000 ledger
entries (plus check-ins, payments, refunds, tier changes, coupons and referrals in proportion,
spread over the last 365 days), loaded by COPY into a fresh PostgreSQL database made on
DATABASE_URL's server and dropped at the end.

It then starts the real server and times calls over the last 30 days: one with no day
pre-aggregated yet (metrics_day emptied, so the call builds the 30 days itself), then the
metrics_days job that pre-aggregates the rest of the year (`python -m app jobs run
metrics_days`, hourly in production), then ~20 cold calls (the Redis cache key deleted before
each, so every call runs its SQL) and ~20 cached ones; target p50 under 500 ms cold. Also
times the rfm_segments job (`python -m app jobs run rfm_segments`), and prints the payload of a
stored day (the bytes of its four member sets, roaring bitmaps).

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/test REDIS_URL=redis://127.0.0.1:6379/0 \\
        .venv/bin/python -m bench.metrics                # full scale, a few minutes
        .venv/bin/python -m bench.metrics --members 100000 --ledger 1000000
        .venv/bin/python -m bench.metrics --members 10000000 --ledger 100000000 --keep bench_10m
        .venv/bin/python -m bench.metrics --keep bench_metrics_kept   # seed once, reuse after

With --keep NAME the database NAME is seeded on the first run, kept, and reused (not
re-seeded) by later runs with the same NAME; drop it yourself when done
(`DROP DATABASE NAME WITH (FORCE)`). Its rows are dated from its seeding day.
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import statistics
import sys
import time
from datetime import datetime, timedelta, timezone
from urllib.parse import urlsplit, urlunsplit
from zoneinfo import ZoneInfo

import aiohttp

from bench import harness

TOKEN = "bench-admin-token"
# What a stored day weighs: the bytes of its four member sets (app/domain/metrics_days.encode).
PAYLOAD = (
    "SELECT COUNT(*) AS days, COALESCE(AVG(b), 0) AS mean, COALESCE(MAX(b), 0) AS max FROM ("
    " SELECT octet_length(active) + octet_length(checked_in) + octet_length(payers)"
    " + octet_length(repeat_payers) AS b FROM metrics_day WHERE built_version = version) AS d")
CHUNK = 250_000
TIERS = (("regular", 70), ("silver", 20), ("gold", 8), ("diamond", 2))
SEEDED = ("member", "ledger_entry", "checkin", "payment", "refund", "tier_change", "coupon",
          "referral")


class Seeder:
    """Rows generated in chunks and COPYed (asyncpg copy_records_to_table); ids are explicit."""

    def __init__(self, conn, *, members: int, ledger: int, now: datetime, seed: int = 7) -> None:
        self.conn, self.members, self.ledger, self.now = conn, members, ledger, now
        self.rand = random.Random(seed)
        self.span = 365 * 86400
        self.start = now - timedelta(seconds=self.span)
        self.rows: dict[str, int] = {}

    def at(self, fraction: float) -> datetime:
        return self.start + timedelta(seconds=int(self.span * fraction))

    async def copy(self, table: str, columns: list[str], rows) -> None:
        batch: list[tuple] = []
        for row in rows:
            batch.append(row)
            if len(batch) >= CHUNK:
                await self.conn.copy_records_to_table(table, records=batch, columns=columns)
                self.rows[table] = self.rows.get(table, 0) + len(batch)
                batch = []
        if batch:
            await self.conn.copy_records_to_table(table, records=batch, columns=columns)
            self.rows[table] = self.rows.get(table, 0) + len(batch)

    def member(self) -> int:
        return self.rand.randint(1, self.members)

    async def run(self) -> None:
        r, n, now = self.rand, self.members, self.now
        weights = [w for _, w in TIERS]
        tiers = [t for t, _ in TIERS]
        await self.copy("member", [
            "id", "appid", "openid", "invite_code", "phone", "card_activated", "tier", "growth", "points",
            "streak", "last_checkin", "last_paid_at", "followed", "blacklisted", "created_at"], (
            (i, "wx-bench", f"o-{i}", f"i{i}", f"139{i:08d}", False, r.choices(tiers, weights)[0],
             r.randint(0, 30000), r.randint(0, 5000), r.randint(0, 7),
             (now - timedelta(days=r.randint(0, 200))).date(), now - timedelta(days=r.randint(0, 300)),
             False, False, self.at(i / n))
            for i in range(1, n + 1)))

        reasons = (("checkin", 1, 40), ("purchase", 1, 25), ("referral", 1, 5), ("redeem", -1, 22),
                   ("expire", -1, 5), ("refund", -1, 3))
        names = [x[0] for x in reasons]
        signs = {x[0]: x[1] for x in reasons}
        rweights = [x[2] for x in reasons]
        total = self.ledger
        await self.copy("ledger_entry", [
            "id", "member_id", "delta", "growth_delta", "reason", "idempotency_key", "remaining", "note",
            "created_at"], (
            (i, self.member(), signs[reason] * r.randint(1, 200), 0, reason, f"bench:{i}", 0, "",
             self.at(i / total))
            for i in range(1, total + 1) for reason in (r.choices(names, rweights)[0],)))

        # Check-ins: runs of 1..7 consecutive days, unique per (member, day) by construction.
        checkins = total * 3 // 10

        def checkin_rows():
            i, member = 0, 0
            while i < checkins:
                member = member % n + 1
                first = (now - timedelta(days=r.randint(1, 360))).date()
                for d in range(r.randint(1, 7)):
                    i += 1
                    yield (i, member, first + timedelta(days=d), False, 5,
                           datetime.combine(first + timedelta(days=d), datetime.min.time(), timezone.utc))
        await self.copy("checkin", ["id", "member_id", "day", "makeup", "points", "created_at"], checkin_rows())

        payments = total // 10
        await self.copy("payment", [
            "id", "transaction_id", "out_trade_no", "openid", "member_id", "total_fen", "payer_total_fen",
            "refunded_fen", "points_awarded", "growth_awarded", "credited", "paid_at", "source", "created_at"], (
            (i, f"tx{i}", f"ot{i}", f"o-{m}", m, fen, fen, 0, fen // 100, fen // 100, True, t, "v3", t)
            for i in range(1, payments + 1)
            for m, fen, t in ((self.member(), r.randint(100, 100_000), self.at(i / payments)),)))
        refunds = payments // 20
        await self.copy("refund", ["id", "refund_id", "payment_id", "refund_fen", "points_taken",
                                   "growth_taken", "created_at"], (
            (i, f"rf{i}", p, 100, 1, 1, self.at(p / payments) + timedelta(days=1))
            for i, p in enumerate(sorted(r.sample(range(1, payments + 1), refunds)), start=1)))
        changes = n // 5
        await self.copy("tier_change", ["id", "member_id", "from_tier", "to_tier", "cause", "created_at"], (
            (i, self.member(), *((a, b) if r.random() < 0.8 else (b, a)), "payment", self.at(i / changes))
            for i in range(1, changes + 1)
            for a, b in ((tiers[k], tiers[k + 1]) for k in (r.randint(0, 2),))))
        await self.conn.execute(
            "INSERT INTO coupon_template (id, key, name, kind, amount_fen, discount_percent, min_spend_fen,"
            " valid_days, created_at) VALUES (1, 'bench20', '20 yuan', 'amount', 2000, 100, 0, 30, now()),"
            " (2, 'bench90', '10% off', 'discount', 0, 90, 0, 30, now())")
        coupons = n // 2
        await self.copy("coupon", ["id", "code", "issue_key", "template_id", "member_id", "valid_from",
                                   "expires_at", "used_at", "created_at"], (
            (i, f"C{i}", f"bench:{i}", 1 + (i % 2), self.member(), t, t + timedelta(days=30),
             t + timedelta(days=r.randint(0, 29)) if r.random() < 0.4 else None, t)
            for i in range(1, coupons + 1) for t in (self.at(i / coupons),)))
        referrals = n // 10
        await self.copy("referral", ["id", "inviter_id", "invitee_id", "source", "paid_at", "rewarded_at",
                                     "created_at"], (
            (i, self.member(), i * 10, "login", paid, paid if paid and r.random() < 0.9 else None, t)
            for i in range(1, referrals + 1)
            for t in (self.at(i * 10 / n),)
            for paid in ((t + timedelta(days=r.randint(0, 20))) if r.random() < 0.3 else None,)))
        for table in SEEDED + ("coupon_template",):
            await self.conn.execute(
                f"SELECT setval(pg_get_serial_sequence('{table}', 'id'), (SELECT COALESCE(MAX(id), 1) FROM {table}))")


async def seed(database_url: str, *, members: int, ledger: int, now: datetime) -> dict:
    """COPY everything with the plain indexes dropped, then rebuild them and ANALYZE."""
    async with harness.pg_connection(database_url) as conn:
        await conn.execute("SET synchronous_commit = off; SET maintenance_work_mem = '512MB'")
        plain = await conn.fetch(
            "SELECT i.indexname, i.indexdef FROM pg_indexes i WHERE i.schemaname = 'public'"
            " AND i.tablename = ANY($1::text[]) AND NOT EXISTS ("
            " SELECT 1 FROM pg_constraint c WHERE c.conname = i.indexname)", list(SEEDED))
        for row in plain:
            await conn.execute(f'DROP INDEX "{row["indexname"]}"')
        seeder = Seeder(conn, members=members, ledger=ledger, now=now)
        started = time.perf_counter()
        await seeder.run()
        copied = time.perf_counter() - started
        started = time.perf_counter()
        for row in plain:
            await conn.execute(row["indexdef"])
        # VACUUM too: index-only scans need the visibility map autovacuum keeps in production.
        await conn.execute("VACUUM ANALYZE")
        indexed = time.perf_counter() - started
    return {"rows": seeder.rows, "copy_s": copied, "index_s": indexed}


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


async def time_calls(url: str, *, calls: int, bust) -> list[float]:
    latencies = []
    async with aiohttp.ClientSession(headers={"Authorization": f"Bearer {TOKEN}"}) as session:
        for _ in range(calls):
            await bust()
            started = time.perf_counter()
            async with session.get(url) as resp:
                body = await resp.json()
                if resp.status != 200:
                    raise SystemExit(f"GET {url}: {resp.status} {body}")
            latencies.append((time.perf_counter() - started) * 1000)
    return latencies


@contextlib.asynccontextmanager
async def kept_database(base_url: str, name: str):
    """The database `name` on DATABASE_URL's server, created if missing, never dropped; yields
    (url, whether it was seeded by an earlier run)."""
    url = urlunsplit(urlsplit(base_url)._replace(path=f"/{name}"))
    async with harness.pg_connection(base_url) as admin:
        exists = await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name)
        if not exists:
            await admin.execute(f'CREATE DATABASE "{name}"')
    seeded = None
    if exists:
        async with harness.pg_connection(url) as conn:
            if await conn.fetchval("SELECT to_regclass('member') IS NOT NULL"):
                seeded = await conn.fetchval("SELECT MAX(created_at) FROM member")
    yield url, seeded


async def main(args: argparse.Namespace) -> int:
    from redis.asyncio import Redis

    base_db, base_redis = harness.services_from_env()
    tz = ZoneInfo(os.environ.get("APP_TIMEZONE") or "Asia/Shanghai")
    now = datetime.now(timezone.utc)
    began = time.perf_counter()
    database = kept_database(base_db, args.keep) if args.keep else _fresh(base_db)
    async with database as (database_url, seeded_at), harness.claimed_redis(base_redis) as redis_url:
        env = {k: v for k, v in os.environ.items() if not k.startswith("WECHAT_")}
        env.update(DATABASE_URL=database_url, REDIS_URL=redis_url, LOG_LEVEL="WARNING", ADMIN_TOKEN=TOKEN,
                   WORKERS="1")
        await harness.migrate(env)
        if seeded_at is not None:
            now = seeded_at  # the range stays where the kept rows are
            print(f"reusing the seeded database {args.keep} (rows up to {now:%Y-%m-%d %H:%M} UTC)", flush=True)
        else:
            print(f"seeding {args.members:,} members and {args.ledger:,} ledger entries by COPY ...", flush=True)
            seeded = await seed(database_url, members=args.members, ledger=args.ledger, now=now)
            print(f"  copied in {seeded['copy_s']:.1f} s, indexes + ANALYZE in {seeded['index_s']:.1f} s",
                  flush=True)
            for table, count in seeded["rows"].items():
                print(f"  {table:<14}{count:>12,}")
        last = now.astimezone(tz).date() - timedelta(days=1)
        first = last - timedelta(days=args.days - 1)

        from app.domain import metrics

        redis = Redis.from_url(redis_url)
        key = metrics.cache_key(first=first, last=last, fen_per_point=1)

        async def bust() -> None:
            await redis.delete(key)

        async def keep() -> None:
            return None

        try:
            async with harness.server(env) as base:
                url = f"{base}/admin/metrics?from={first.isoformat()}&to={last.isoformat()}"
                await harness.pg_admin(database_url, "TRUNCATE metrics_day")
                first_call = (await time_calls(url, calls=1, bust=bust))[0]
                days_s, days_ok = await _job("metrics_days", env)
                cold = await time_calls(url, calls=args.calls, bust=bust)
                cached = await time_calls(url, calls=args.calls, bust=keep)
        finally:
            await redis.aclose()

        rfm_s, rfm_ok = await _job("rfm_segments", env)
        async with harness.pg_connection(database_url) as conn:
            payload = await conn.fetchrow(PAYLOAD)

    print(f"\nGET /admin/metrics {first}..{last} ({args.days} days), {args.calls} calls each")
    print(f"{'':<24}{'p50 ms':>10}{'p95 ms':>10}{'max ms':>10}")
    print(f"{'first (no day built)':<24}{first_call:>10.1f}")
    for label, values in (("cold (cache busted)", cold), ("cached (Redis)", cached)):
        print(f"{label:<24}{statistics.median(values):>10.1f}{_pct(values, 0.95):>10.1f}{max(values):>10.1f}")
    print(f"metrics_days job (the other days of the year): {days_s:.1f} s ({'ok' if days_ok else 'FAILED'})")
    print(f"rfm_segments job: {rfm_s:.1f} s ({'ok' if rfm_ok else 'FAILED'})")
    print(f"payload per stored day ({payload['days']} days, its 4 member sets): mean {float(payload['mean']) / 1024:,.1f} KiB,"
          f" max {float(payload['max']) / 1024:,.1f} KiB")
    met = statistics.median(cold) < 500
    print(f"target cold p50 < 500 ms: {'met' if met else 'NOT met'}; total bench time {time.perf_counter() - began:.0f} s")
    return 0 if met and rfm_ok and days_ok else 1


async def _job(name: str, env: dict) -> tuple[float, bool]:
    """`python -m app jobs run NAME`: seconds taken and whether it succeeded."""
    started = time.perf_counter()
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "app", "jobs", "run", name, env=env,
                                                stdout=asyncio.subprocess.DEVNULL,
                                                stderr=asyncio.subprocess.DEVNULL)
    ok = await proc.wait() == 0
    return time.perf_counter() - started, ok


@contextlib.asynccontextmanager
async def _fresh(base_db: str):
    async with harness.fresh_database(base_db, "bench_metrics") as url:
        yield url, None


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.metrics", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=1_000_000, help="members (default: %(default)s)")
    parser.add_argument("--ledger", type=int, default=10_000_000,
                        help="ledger entries; check-ins, payments... in proportion (default: %(default)s)")
    parser.add_argument("--days", type=int, default=30, help="range length, ending yesterday (default: %(default)s)")
    parser.add_argument("--calls", type=int, default=20, help="timed calls per mode (default: %(default)s)")
    parser.add_argument("--keep", metavar="NAME",
                        help="seed the database NAME once and keep it; later runs reuse it (not dropped)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
