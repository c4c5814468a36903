"""remind_expiring_points: one message per member 30 and 7 days before points expire."""
from __future__ import annotations

from datetime import timedelta

from app.config import Settings
from app.domain import points
from app.models import Member, OutboxMessage
from jobs.registry import JobContext
from jobs.remind_expiring_points import run
from tests.conftest import assert_ledger_consistent, shanghai


async def member(n: int) -> Member:
    return await Member.create(appid="wx-test-mp", openid=f"o-rm-{n}", invite_code=f"rm{n}")


def ctx(now) -> JobContext:
    settings = Settings()
    return JobContext(settings=settings, redis=None, wechat=None, now=now,
                      today=now.astimezone(settings.tz).date())


async def earn(m: Member, amount: int, at, key: str) -> None:
    await points.award(member_id=m.id, amount=amount, reason="task", key=key, now=at, expiry_months=12)


async def test_thirty_and_seven_days_before_once(db):
    a, b, c, spent = await member(1), await member(2), await member(3), await member(4)
    # a: two lots expiring on 2026-12-31 (one at 00:05 Shanghai, i.e. 30 Dec 16:05 UTC)
    await earn(a, 100, shanghai(2025, 12, 31, 0, 5), "a1")
    await earn(a, 20, shanghai(2025, 12, 31, 23, 59), "a2")
    await earn(b, 50, shanghai(2025, 12, 8, 12, 0), "b1")  # expires 2026-12-08: 7 days on
    await earn(c, 50, shanghai(2026, 1, 1, 0, 0), "c1")  # 2027-01-01: 31 days on, not today
    await earn(spent, 10, shanghai(2025, 12, 31, 12, 0), "s1")
    await points.spend(member_id=spent.id, amount=10, reason="redeem", key="s-spend",
                       now=shanghai(2026, 1, 1, 12, 0))
    now = shanghai(2026, 12, 1, 10, 0)
    first = await run(ctx(now))
    assert first["seen"] == 2 and first["sent"] == 2
    rows = {m.member_id: m for m in await OutboxMessage.all()}
    assert set(rows) == {a.id, b.id}
    assert rows[a.id].key == f"points_expiry:{a.id}:2026-12-31:30"
    assert rows[a.id].payload["values"] == {"points": 120, "expires_on": "2026-12-31"}
    assert rows[b.id].key == f"points_expiry:{b.id}:2026-12-08:7"
    again = await run(ctx(now + timedelta(hours=2)))
    assert again["sent"] == 0 and again["skipped"] == 2
    # 7 days before the 31st: a second, different message
    late = await run(ctx(shanghai(2026, 12, 24, 10, 0)))
    assert late["sent"] == 1
    assert await OutboxMessage.filter(member_id=a.id).count() == 2
    await assert_ledger_consistent()
