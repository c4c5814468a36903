"""Benchmark the results of an A/B test over 1,000,000 assignments (target p50 < 500 ms).

A fresh PostgreSQL database on DATABASE_URL's server (dropped at the end) is migrated and
seeded by COPY: `--members` members, two experiments of `--members` assignments each (a
repurchase test over three arms with a holdout, and a redemption test over two arms, each
assignment with its coupon, 30 % of them redeemed), `--payments` payments and a cost entry per
redeemed coupon; each assignment's `converted_at` as the payment and redemption transactions
stamp it. Then `experiments.results` (what GET /admin/experiments/{key}/results runs) is
timed `--calls` times per experiment, in process.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/test REDIS_URL=redis://127.0.0.1:6379/0 \\
        .venv/bin/python -m bench.experiments                       # 1,000,000 assignments
        .venv/bin/python -m bench.experiments --members 100000      # smaller
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import time
from datetime import datetime, timedelta, timezone

from bench import harness

ARMS_REPURCHASE = [{"key": "discount", "weight": 45, "holdout": False,
                    "reward": {"name": "9折券", "amount_fen": 0, "discount_percent": 90, "min_spend_fen": 0,
                               "valid_days": 7}},
                   {"key": "amount", "weight": 45, "holdout": False,
                    "reward": {"name": "满减券", "amount_fen": 1000, "discount_percent": 100, "min_spend_fen": 5000,
                               "valid_days": 7}},
                   {"key": "holdout", "weight": 10, "holdout": True, "reward": None}]
ARMS_REDEMPTION = [{"key": "d7", "weight": 1, "holdout": False,
                    "reward": {"name": "7天券", "amount_fen": 1000, "discount_percent": 100, "min_spend_fen": 0,
                               "valid_days": 7}},
                   {"key": "d3", "weight": 1, "holdout": False,
                    "reward": {"name": "3天券", "amount_fen": 1000, "discount_percent": 100, "min_spend_fen": 0,
                               "valid_days": 3}}]
CHUNK = 250_000


async def copy(conn, table: str, columns: list[str], rows) -> int:
    batch, total = [], 0
    for row in rows:
        batch.append(row)
        if len(batch) >= CHUNK:
            await conn.copy_records_to_table(table, records=batch, columns=columns)
            total += len(batch)
            batch = []
    if batch:
        await conn.copy_records_to_table(table, records=batch, columns=columns)
        total += len(batch)
    return total


def pick(rand: random.Random, arms: list[dict]) -> str:
    point = rand.randrange(sum(a["weight"] for a in arms))
    for arm in arms:
        point -= arm["weight"]
        if point < 0:
            return arm["key"]
    return arms[-1]["key"]


async def seed(url: str, *, members: int, payments: int, now: datetime) -> dict:
    rand = random.Random(12)
    start = now - timedelta(days=30)
    async with harness.pg_connection(url) as conn:
        await conn.execute("SET synchronous_commit = off; SET maintenance_work_mem = '256MB'")
        rows = {"member": await copy(conn, "member", [
            "id", "appid", "openid", "invite_code", "tier", "growth", "points", "streak", "card_activated",
            "followed", "blacklisted", "created_at"],
            ((i, "wx-bench", f"o-{i}", f"i{i}", "regular", 0, 0, 0, False, False, False, start)
             for i in range(1, members + 1)))}
        for exp_id, key, arms, metric in ((1, "repurchase", ARMS_REPURCHASE, "repurchase"),
                                          (2, "validity", ARMS_REDEMPTION, "redemption")):
            await conn.execute(
                "INSERT INTO experiment (id, key, name, salt, arms, control, population, metric, metric_days,"
                " starts_at, ends_at, actor, created_at) VALUES ($1, $2, $2, 'benchsalt', $3, $4, $5, $6, 14,"
                " $7, $8, 'bench', $7)", exp_id, key, json.dumps(arms), arms[0]["key"],
                json.dumps({"segment": "active"}), metric, start, start + timedelta(days=30))
        await conn.execute(
            "INSERT INTO coupon_template (id, key, name, kind, amount_fen, discount_percent, min_spend_fen,"
            " valid_days, created_at) VALUES (1, 'exp:validity:d7', '7', 'amount', 1000, 100, 0, 7, now()),"
            " (2, 'exp:validity:d3', '3', 'amount', 1000, 100, 0, 3, now())")
        paid = [(rand.randint(1, members), start + timedelta(seconds=rand.randrange(86400 * 30)))
                for _ in range(payments)]
        by_member: dict[int, list[datetime]] = {}
        for m, t in paid:
            by_member.setdefault(m, []).append(t)
        assigned = [(i, pick(rand, ARMS_REPURCHASE), start + timedelta(seconds=rand.randrange(86400 * 10)))
                    for i in range(1, members + 1)]

        def converted(m: int, at: datetime) -> datetime | None:
            # What the payment transactions stamp: the first order within 14 days after assignment.
            hits = [t for t in by_member.get(m, ()) if at < t <= at + timedelta(days=14)]
            return min(hits) if hits else None
        rows["experiment_assignment"] = await copy(conn, "experiment_assignment", [
            "id", "experiment_id", "member_id", "arm", "assigned_at", "coupon_id", "converted_at"],
            ((i, 1, m, arm, at, None, converted(m, at)) for i, (m, arm, at) in enumerate(assigned, start=1)))
        validity = [(i, "d7" if rand.random() < 0.5 else "d3", start + timedelta(seconds=rand.randrange(86400 * 10)))
                    for i in range(1, members + 1)]
        used = {}
        for m, arm, at in validity:
            if rand.random() < 0.3:
                used[m] = at + timedelta(seconds=rand.randrange(86400 * (7 if arm == "d7" else 3)))
        rows["coupon"] = await copy(conn, "coupon", [
            "id", "code", "issue_key", "template_id", "member_id", "valid_from", "expires_at", "used_at",
            "created_at"],
            ((m, f"C{m}", f"exp:validity:{m}", 1 if arm == "d7" else 2, m, at,
              at + timedelta(days=7 if arm == "d7" else 3), used.get(m), at) for m, arm, at in validity))
        rows["experiment_assignment"] += await copy(conn, "experiment_assignment", [
            "id", "experiment_id", "member_id", "arm", "assigned_at", "coupon_id", "converted_at"],
            ((members + m, 2, m, arm, at, m, used.get(m)) for m, arm, at in validity))
        arms = {m: arm for m, arm, _ in validity}
        rows["cost_entry"] = await copy(conn, "cost_entry", [
            "id", "key", "kind", "amount_fen", "member_id", "tier", "source", "experiment", "arm", "occurred_at",
            "created_at"],
            ((n, f"coupon:{m}", "coupon", 1000, m, "regular", "exp", "validity", arms[m], t, t)
             for n, (m, t) in enumerate(used.items(), start=1)))
        rows["payment"] = await copy(conn, "payment", [
            "id", "transaction_id", "out_trade_no", "openid", "member_id", "total_fen", "payer_total_fen",
            "refunded_fen", "points_awarded", "growth_awarded", "credited", "paid_at", "source", "created_at"],
            ((i, f"tx{i}", f"ot{i}", f"o-{m}", m, 5000, 5000, 0, 50, 50, True, t, "v3", t)
             for i, (m, t) in enumerate(paid, start=1)))
        for table in ("member", "experiment", "experiment_assignment", "coupon", "coupon_template", "cost_entry",
                      "payment"):
            await conn.execute(f"SELECT setval(pg_get_serial_sequence('{table}', 'id'),"
                               f" (SELECT COALESCE(MAX(id), 1) FROM {table}))")
        await conn.execute("VACUUM ANALYZE")
    return rows


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, default=1_000_000, help="members = assignments per experiment")
    parser.add_argument("--payments", type=int, default=300_000)
    parser.add_argument("--calls", type=int, default=20)
    args = parser.parse_args()
    base_db, _ = harness.services_from_env()
    now = datetime.now(timezone.utc)
    async with harness.fresh_database(base_db, "bench_experiments") as url:
        await harness.migrate({**os.environ, "DATABASE_URL": url})
        started = time.perf_counter()
        rows = await seed(url, members=args.members, payments=args.payments, now=now)
        print(f"seeded {rows} in {time.perf_counter() - started:.1f} s")
        from app.db import orm
        from app.domain import experiments

        async with orm(url):
            for key in ("repurchase", "validity"):
                latencies = []
                for _ in range(args.calls):
                    t0 = time.perf_counter()
                    result = await experiments.results(key=key, now=now)
                    latencies.append((time.perf_counter() - t0) * 1000)
                ordered = sorted(latencies)
                arms = ", ".join(f"{a['arm']} {a['members']}/{a['conversions']}" for a in result["arms"])
                print(f"{key}: {sum(a['members'] for a in result['arms']):,} assignments ({arms}); "
                      f"p50 {statistics.median(latencies):.0f} ms, p95 {ordered[int(len(ordered) * 0.95) - 1]:.0f} ms,"
                      f" max {ordered[-1]:.0f} ms; SRM mismatch {result['sample_ratio']['mismatch']}")


if __name__ == "__main__":
    asyncio.run(main())
