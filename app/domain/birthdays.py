"""Birthday gifts (CONTRACT.md): 3 days before the birthday a no-threshold coupon by tier —
regular 20, silver 50, gold 100, diamond 200 yuan — and a subscription message, once a year.
"""
from __future__ import annotations

import calendar
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from tortoise import connections
from tortoise.transactions import in_transaction

from app.domain import coupons, messages
from app.domain.rules import Rules

BATCH = 2000


def celebrated_on(target: date) -> list[str]:
    """The birthdays ("MM-DD") celebrated on `target`: 29 February ones on 28 February when the
    year has no 29th."""
    days = [target.strftime("%m-%d")]
    if target.month == 2 and target.day == 28 and not calendar.isleap(target.year):
        days.append("02-29")
    return days


async def members_born_on(days: list[str]) -> list[tuple[int, str]]:
    """(member id, tier) of members whose birthday's month-day is one of `days`, not blacklisted."""
    conn = connections.get("default")
    month_day = "to_char(birthday, 'MM-DD')" if conn.capabilities.dialect == "postgres" \
        else "strftime('%m-%d', birthday)"
    marks = ", ".join("$%d" % (i + 1) for i in range(len(days)))
    if conn.capabilities.dialect != "postgres":
        marks = marks.replace("$", "?")
    _, rows = await conn.execute_query(
        f"SELECT id, tier FROM member WHERE birthday IS NOT NULL AND NOT blacklisted "
        f"AND {month_day} IN ({marks}) ORDER BY id", list(days))
    return [(int(dict(r)["id"]), dict(r)["tier"]) for r in rows]


async def give_gifts(*, rules: Rules, today: date, now: datetime, tz: ZoneInfo, total=lambda n: None,
                     advance=lambda n: None) -> dict:
    """The birthday gifts of business day `today`, for birthdays `rules.birthday.days_ahead` days on.

    Once per member per year: the coupon's issue_key and the message's key are
    `birthday:{member}:{year}`, the year of the birthday celebrated. Messages are queued for every
    gifted member, not only new ones, so a re-run after a crash between the two completes the set.
    """
    rule = rules.birthday
    target = today + timedelta(days=rule.days_ahead)
    found = await members_born_on(celebrated_on(target))
    total(len(found))
    templates = {}
    summary = {"seen": 0, "sent": 0, "skipped": 0, "failed": 0, "issued": 0}
    for start in range(0, len(found), BATCH):
        part = found[start:start + BATCH]
        grants = []
        for member_id, tier in part:
            amount = rule.coupon_fen.get(tier, rule.coupon_fen.get(rules.tiers.levels[0].key, 0))
            if amount <= 0:
                continue
            if (tier, amount) not in templates:
                templates[(tier, amount)] = await coupons.template(
                    key=f"birthday:{tier}:{amount}:{rule.valid_days}",
                    name=f"{rules.tier(tier).name}生日券", amount_fen=amount,
                    valid_days=rule.valid_days)
            grants.append(coupons.Grant(member_id, templates[(tier, amount)],
                                        f"birthday:{member_id}:{target.year}"))
        # The coupon and its message in one transaction: both or neither.
        async with in_transaction() as conn:
            summary["issued"] += await coupons.issue_many(grants, now=now, conn=conn)
            sent = await messages.enqueue_many([
                {"member_id": g.member_id, "kind": "birthday", "period": str(target.year),
                 "values": {"title": g.template.name, "amount": coupons.yuan(g.template.amount_fen),
                            "expires_on": coupons.expiry_of(g.template, now=now, tz=tz).isoformat()},
                 "page": "pages/coupons/index"}
                for g in grants], now=now, conn=conn)
        summary["seen"] += len(part)
        summary["sent"] += sent
        summary["skipped"] += len(part) - sent
        advance(len(part))
    return summary
