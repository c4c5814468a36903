"""Benchmark POST /partner/orders (signed HMAC requests, distinct order_no, points and growth
credited as for a Pay payment) at 64 connections, against a bare aiohttp endpoint measured in
the same run for the ratio; `--wallet-share` pays that share of orders partly from stored value.

Also `--bill-lines N`: the reconciliation of an N-line trade bill (the simulator's format, every
line matching a payment of ours), its time and peak RSS.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/postgres REDIS_URL=redis://127.0.0.1:6379/0 \\
        .venv/bin/python -m bench.partner_orders --requests 4000
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import sys
import tempfile
import time

from bench.harness import HEADER, Request, claimed_redis, fresh_database, load, migrate, pg_connection, server, \
    services_from_env

KEY = "bench-partner-key"


def signed_orders(member_ids: list[int], count: int, prefix: str, wallet_share: float) -> list[tuple[dict, bytes]]:
    from handlers.partner.auth import sign

    at = str(int(time.time()))
    out = []
    every = int(1 / wallet_share) if wallet_share else 0
    for i in range(count):
        body = {"order_no": f"{prefix}{i:09d}", "member_id": member_ids[i % len(member_ids)],
                "paid_fen": 100 * (1 + i % 300), "paid_at": "2026-12-01T10:00:00+08:00", "channel": "till"}
        if every and i % every == 0:
            body["wallet_fen"] = 100
        raw = json.dumps(body).encode()
        out.append(({"X-Partner-Timestamp": at, "X-Partner-Signature": sign(KEY, at, raw),
                     "Content-Type": "application/json"}, raw))
    return out


async def create_members(database_url: str, count: int) -> list[int]:
    from tortoise.transactions import in_transaction

    from app.db import orm
    from app.domain import wallet
    from app.domain.members import new_invite_code
    from app.models import Member

    async with orm(database_url):
        await Member.bulk_create([Member(appid="wx-sandbox-mp", openid=f"o-bench-{i}", invite_code=new_invite_code())
                                  for i in range(count)], batch_size=500)
        ids = list(await Member.all().order_by("id").values_list("id", flat=True))
        from datetime import datetime, timezone

        for member_id in ids:  # a stored value to spend from
            wallet_id = await wallet.ensure(member_id=member_id)
            async with in_transaction() as conn:
                await wallet.credit(conn=conn, member_id=member_id, wallet_id=wallet_id, principal_fen=100_000,
                                    bonus_fen=10_000, reason="recharge", key=f"bench:{member_id}",
                                    now=datetime.now(timezone.utc))
    return ids


async def orders_bench(args, base_db: str, base_redis: str) -> None:
    async with fresh_database(base_db, "bench_partner") as url, claimed_redis(base_redis) as redis_url:
        env = {k: v for k, v in os.environ.items() if not k.startswith("WECHAT_")}
        env.update(DATABASE_URL=url, REDIS_URL=redis_url, PARTNER_API_KEY=KEY, LOG_LEVEL="WARNING")
        await migrate(env)
        ids = await create_members(url, args.members)
        warm = signed_orders(ids, 200, "w", args.wallet_share)
        notes = signed_orders(ids, args.requests, "r", args.wallet_share)
        async with server(env) as base:
            await load([Request("POST", base + "/partner/orders", h, b) for h, b in warm], args.concurrency)
            app_result = await load([Request("POST", base + "/partner/orders", h, b) for h, b in notes],
                                    args.concurrency)
        async with server(env, bare=True) as bare:
            await load([Request("POST", bare + "/partner/orders", h, b) for h, b in warm], args.concurrency)
            bare_result = await load([Request("POST", bare + "/partner/orders", h, b) for h, b in notes],
                                     args.concurrency)
        async with pg_connection(url) as conn:
            credited = await conn.fetchval("SELECT count(*) FROM payment WHERE credited")
            orders = await conn.fetchval("SELECT count(*) FROM partner_order")
    print(f"\npartner orders bench: {args.requests} signed orders (distinct order_no, "
          f"{args.wallet_share:.0%} partly from stored value), {args.concurrency} connections, "
          f"{os.cpu_count()} CPUs\n")
    print(HEADER)
    print(app_result.row("POST /partner/orders"))
    print(bare_result.row("bare aiohttp"))
    print(f"\nratio app/bare: {app_result.rps / bare_result.rps:.2f}")
    print(f"orders stored: {orders}, payments credited: {credited} of {args.requests + 200} sent (incl. warm-up)")
    print(f"target >= 800/s: {'met' if app_result.rps >= 800 else 'NOT met'}")


def write_bill(path: str, lines: int) -> None:
    """An N-line trade bill in WeChat's CSV (the simulator's format): one payment per line."""
    from miniprogram_stub.simulator.merchant import BILL_HEADER, _bill_line

    with open(path, "w", encoding="utf-8") as out:
        out.write(",".join(BILL_HEADER) + "\r\n")
        for i in range(lines):
            order = {"appid": "wx-sandbox-mp", "mchid": "1900000001", "transaction_id": f"42b{i:012d}",
                     "out_trade_no": f"b{i}", "openid": f"o-{i % 1000}", "amount_fen": 100 + i % 5000,
                     "description": "bench"}
            out.write(_bill_line("2026-12-01T10:00:00+08:00", order, status="SUCCESS") + "\r\n")
        out.write("总交易单数,应结订单总金额\r\n`0,`0.00\r\n")


async def reconciliation_bench(args, base_db: str, base_redis: str) -> None:
    from datetime import date, datetime, timezone
    from zoneinfo import ZoneInfo

    async with fresh_database(base_db, "bench_recon") as url:
        await migrate({**os.environ, "DATABASE_URL": url})
        with tempfile.TemporaryDirectory() as folder:
            bill = os.path.join(folder, "bill.csv")
            write_bill(bill, args.bill_lines)
            async with pg_connection(url) as conn:  # our side: every payment of the bill, recorded
                await conn.execute(
                    "INSERT INTO payment (transaction_id, out_trade_no, openid, total_fen, payer_total_fen, "
                    "refunded_fen, points_awarded, growth_awarded, credited, paid_at, source, created_at) "
                    "SELECT '42b' || lpad(i::text, 12, '0'), 'b' || i, 'o-' || (i % 1000), 100 + i % 5000, "
                    "100 + i % 5000, 0, 0, 0, false, '2026-12-01T02:00:00Z', 'v3', now() "
                    f"FROM generate_series(0, {args.bill_lines - 1}) AS i")
            from app.db import orm
            from app.domain import reconciliation, rules

            class FilePay:
                async def download_trade_bill(self, *, bill_date: str, into) -> int:
                    with open(bill, "rb") as source:
                        while chunk := source.read(1 << 16):
                            into.write(chunk)
                    return os.path.getsize(bill)

            rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            async with orm(url):
                began = time.perf_counter()
                summary = await reconciliation.reconcile(
                    bill_date=date(2026, 12, 1), pay=FilePay(), redis=None, rules=await rules.load(),
                    appid="wx-sandbox-mp", now=datetime.now(timezone.utc), tz=ZoneInfo("Asia/Shanghai"))
                elapsed = time.perf_counter() - began
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(f"\nreconciliation of a {args.bill_lines}-line trade bill: {elapsed:.1f} s, peak RSS {peak / 1024:.0f} MB "
          f"(before: {rss_before / 1024:.0f} MB); {summary}")
    print(f"target < 120 s and < 300 MB: {'met' if elapsed < 120 and peak / 1024 < 300 else 'NOT met'}")


async def main(args) -> int:
    base_db, base_redis = services_from_env()
    if args.requests:
        await orders_bench(args, base_db, base_redis)
    if args.bill_lines:
        await reconciliation_bench(args, base_db, base_redis)
    return 0


def parse_args(argv=None):
    parser = argparse.ArgumentParser(prog="python -m bench.partner_orders", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=4000, help="orders to send; 0: skip (default: %(default)s)")
    parser.add_argument("--concurrency", type=int, default=64, help="connections (default: %(default)s)")
    parser.add_argument("--members", type=int, default=1000, help="members to pre-create (default: %(default)s)")
    parser.add_argument("--wallet-share", type=float, default=0.1,
                        help="share of orders paying 1 yuan from stored value (default: %(default)s)")
    parser.add_argument("--bill-lines", type=int, default=0,
                        help="also time the reconciliation of a bill of this many lines (default: skip)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
