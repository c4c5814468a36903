"""The new-member pack (app/domain/campaigns.py), through login and directly under races."""
import asyncio
from datetime import datetime
from zoneinfo import ZoneInfo

import pytest

from app.domain import antiabuse, campaigns, rules
from app.domain.members import new_invite_code
from app.models import Coupon, LedgerEntry, Member
from tests.conftest import assert_ledger_consistent

TZ = ZoneInfo("Asia/Shanghai")
NOW = datetime(2026, 12, 2, 10, 0, tzinfo=TZ)


async def pack_on():
    await rules.update({"new_member_pack": {"enabled": True}}, actor="ops")
    return await rules.load(fresh=True)


async def test_the_pack_is_off_out_of_the_box(db):
    m = await Member.create(appid="wx", openid="o-1", invite_code=new_invite_code())
    assert not await campaigns.give_new_member_pack(member_id=m.id, now=NOW, rules=await rules.load())
    assert await LedgerEntry.all().count() == 0 and await Coupon.all().count() == 0


@pytest.mark.postgres
async def test_the_pack_is_given_once_however_many_calls_race(db, redis):
    r = await pack_on()
    m = await Member.create(appid="wx", openid="o-1", invite_code=new_invite_code())
    given = await asyncio.gather(*(campaigns.give_new_member_pack(member_id=m.id, now=NOW, rules=r)
                                   for _ in range(30)))
    assert given.count(True) == 1
    member = await Member.get(id=m.id)
    assert member.points == 50
    coupon = await Coupon.get(member_id=m.id).prefetch_related("template")
    assert (coupon.issue_key, coupon.template.amount_fen, coupon.template.min_spend_fen) == \
        ("new_member_pack:%d" % m.id, 1000, 0)
    entry = await LedgerEntry.get(member_id=m.id)
    assert (entry.reason, entry.capped_on) == ("new_member_pack", None)  # a grant, not under the cap
    await assert_ledger_consistent()


async def test_the_pack_is_not_blocked_by_a_spent_daily_cap(db, redis):
    r = await pack_on()
    m = await Member.create(appid="wx", openid="o-1", invite_code=new_invite_code())
    await antiabuse.reserve_cap(redis=redis, member_id=m.id, day=NOW.date(), wanted=200, cap=200)
    assert await campaigns.give_new_member_pack(member_id=m.id, now=NOW, rules=r)
    assert (await Member.get(id=m.id)).points == 50


async def test_the_rules_sections_are_validated_and_audited(db):
    from app.errors import InvalidField
    from app.models import AuditLog

    with pytest.raises(InvalidField) as caught:
        await rules.update({"new_member_pack": {"coupon_fen": -1}}, actor="ops")
    assert caught.value.field == "new_member_pack.coupon_fen"
    with pytest.raises(InvalidField):
        await rules.update({"tasks": {"points": {"share": 5}}}, actor="ops")
    await rules.update({"tasks": {"points": {"profile": 20, "review": 10}}, "wakeup": {"dormant_days": 45}},
                       actor="ops")
    current = await rules.load(fresh=True)
    assert current.tasks.points == {"profile": 20, "review": 10} and current.tasks.weekly_cap == 200
    assert current.wakeup.dormant_days == 45 and current.wakeup.every_days == 90
    assert {a.target for a in await AuditLog.filter(action="rules.update")} == {"tasks", "wakeup"}
