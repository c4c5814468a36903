"""企业微信 domain: tier tags through the outbox, WeCom's error codes, reconcile, welcome messages."""
from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest
from tortoise.transactions import in_transaction

from app import keys
from app.domain import outbox, rules, tiers, wecom
from app.models import AuditLog, Member, OutboxMessage, TierChange, WeComContact
from tests.handlers.wechat.wecom_world import (  # noqa: F401 - fixtures
    NOW, add_contact, corp, drain, event_xml, member, now, push, settings, tier_tags,
)


async def grow(member_id: int, growth: int, *, at=NOW):
    await Member.filter(id=member_id).update(growth=growth)
    async with in_transaction() as conn:
        return await tiers.follow_growth(conn=conn, member_id=member_id, rules=await rules.load(),
                                         cause="test", now=at, allow_down=True)


async def linked(client, corp, name: str, *, staff: str = "sales-01", **kw):
    member_id = await member(client, f"o-{name}", unionid=f"u-{name}", **kw)
    external, resp = await add_contact(client, corp, staff=staff, unionid=f"u-{name}")
    assert resp.status == 200
    return member_id, external


# -- tier tags -------------------------------------------------------------------------------


async def test_a_tier_change_moves_the_tag_for_every_staff_member_followed(client, now, corp):
    member_id, external = await linked(client, corp, "two")
    corp.follow(corp.customers[external], "steward-02")
    await push(client, event_xml("add_external_contact", staff="steward-02", external=external))
    await drain(client)
    assert await grow(member_id, 5000)
    assert await OutboxMessage.filter(channel="wecom", status="pending").count() == 2
    await drain(client)
    assert await tier_tags(corp, external, "sales-01") == {"金卡"}
    assert await tier_tags(corp, external, "steward-02") == {"金卡"}


async def test_an_inactivity_downgrade_queues_its_mark_tag(client, now, corp):
    from app.domain import downgrades
    from app.domain.clock import business_day
    from app.models import Member

    member_id, external = await linked(client, corp, "down", tier="silver")
    await Member.filter(id=member_id).update(growth=600, created_at=NOW - timedelta(days=400), tier_since=None)
    await drain(client)
    later = NOW + timedelta(days=5)
    summary = await downgrades.downgrade_inactive(rules=await rules.load(), today=business_day(later, client.app[keys.settings_key].tz),
                                                  now=later, tz=client.app[keys.settings_key].tz)
    assert summary["downgraded"] == 1
    await drain(client, later=timedelta(days=5))
    assert await tier_tags(corp, external, "sales-01") == {"普通"}


@pytest.mark.postgres
async def test_one_mark_tag_per_tier_change_with_two_workers(client, now, corp):
    members = [await linked(client, corp, f"w{i}") for i in range(24)]
    await drain(client)
    corp.calls.clear()
    for member_id, _ in members:
        assert await grow(member_id, 600)
    app = client.app

    async def worker():
        done = 0
        for _ in range(10):
            result = await outbox.deliver_due(wechat=app[keys.wechat_key], oa_wechat=app[keys.oa_wechat_key],
                                              settings=app[keys.settings_key], now=NOW, limit=5,
                                              wecom=app[keys.wecom_key])
            done += result["sent"]
        return done

    sent = await asyncio.gather(worker(), worker(), worker())
    assert sum(sent) == 24
    marks = corp.called("/cgi-bin/externalcontact/mark_tag")
    assert sorted(m["external_userid"] for m in marks) == sorted(e for _, e in members)
    for _, external in members:
        assert await tier_tags(corp, external, "sales-01") == {"银卡"}


async def test_a_members_mark_tags_go_one_at_a_time_in_order(client, now, corp):
    """A send reads the tier when it runs, so an older one finishing after a newer one would
    undo it: like card pushes, a member's next mark_tag waits until the previous one is done."""
    members = [await linked(client, corp, f"o{i}") for i in range(3)]
    for member_id, _ in members:
        assert await grow(member_id, 600)  # a second message behind each link message
    app = client.app
    first = await outbox.deliver_due(wechat=app[keys.wechat_key], oa_wechat=app[keys.oa_wechat_key],
                                     settings=app[keys.settings_key], now=NOW, wecom=app[keys.wecom_key])
    assert first["claimed"] == 3 and first["sent"] == 3
    pending = await OutboxMessage.filter(channel="wecom", status="pending").values_list("key", flat=True)
    assert len(pending) == 3 and all(":tc" in key for key in pending)
    await drain(client)
    for _, external in members:
        assert await tier_tags(corp, external, "sales-01") == {"银卡"}


@pytest.mark.postgres
async def test_racing_growth_records_one_change_and_one_mark_tag(client, now, corp):
    member_id, _ = await linked(client, corp, "race")
    await drain(client)
    await Member.filter(id=member_id).update(growth=5000)

    async def move():
        async with in_transaction() as conn:
            return await tiers.follow_growth(conn=conn, member_id=member_id, rules=await rules.load(),
                                             cause="race", now=NOW)

    results = await asyncio.gather(*(move() for _ in range(20)))
    assert sum(r is not None for r in results) == 1
    assert await TierChange.filter(member_id=member_id).count() == 1
    assert await OutboxMessage.filter(channel="wecom", status="pending").count() == 1


async def test_invalid_external_user_is_skipped_not_retried(client, now, corp):
    member_id, external = await linked(client, corp, "gone")
    del corp.customers[external]
    summary = await drain(client)
    assert summary["skipped"] == 1 and summary["retried"] == 0
    message = await OutboxMessage.get(channel="wecom")
    assert (message.status, message.last_error, message.attempts) == ("skipped", "invalid_external_user", 1)
    assert (await WeComContact.get(external_userid=external)).state == "invalid"


async def test_a_tag_deleted_by_hand_is_found_again_and_the_send_succeeds(client, now, corp):
    member_id, external = await linked(client, corp, "retag")
    await drain(client)
    silver = next(tid for g in corp.groups.values() for tid, name in g.tags.items() if name == "银卡")
    corp.delete_tag(silver)
    assert await grow(member_id, 600)
    summary = await drain(client)
    assert summary["sent"] == 1 and summary["dead"] == 0
    assert await tier_tags(corp, external, "sales-01") == {"银卡"}
    assert len(corp.called("/cgi-bin/externalcontact/add_corp_tag")) == 2


async def test_a_tag_group_not_owned_by_the_app_is_a_dead_letter_at_once(client, now, corp):
    corp.add_hand_group("会员等级", ["普通", "银卡", "金卡", "钻石"])
    await linked(client, corp, "notours")
    summary = await drain(client)
    assert summary["dead"] == 1 and summary["retried"] == 0
    message = await OutboxMessage.get(channel="wecom")
    assert message.attempts == 1 and "301002" in message.last_error


# -- reconcile -------------------------------------------------------------------------------


async def test_reconcile_repairs_what_an_outage_left_behind(client, now, corp):
    member_id, external = await linked(client, corp, "outage")
    await drain(client)
    corp.down = True
    assert await grow(member_id, 600)
    first = await drain(client)
    assert first["retried"] == 1
    second = await drain(client, later=timedelta(hours=1))
    assert second["dead"] == 1  # outbox_max_attempts=2 in these tests
    corp.down = False
    assert await tier_tags(corp, external, "sales-01") == {"普通"}
    result = await wecom.reconcile(client=client.app[keys.wecom_key], rules=await rules.load(), now=NOW)
    assert (result["drifted"], result["sent"]) == (1, 1)
    await drain(client)
    assert await tier_tags(corp, external, "sales-01") == {"银卡"}
    again = await wecom.reconcile(client=client.app[keys.wecom_key], rules=await rules.load(),
                                  now=NOW + timedelta(days=1))
    assert again["drifted"] == 0


async def test_reconcile_undoes_tags_changed_by_hand_and_keeps_other_tags(client, now, corp):
    _, external = await linked(client, corp, "hand", tier="gold")
    _, fine = await linked(client, corp, "fine")
    await drain(client)
    vip = corp.add_hand_group("门店", ["常客"])
    hand_tag = next(iter(vip.tags))
    wrong = {tid for g in corp.groups.values() if g.name == "会员等级" for tid, n in g.tags.items() if n in ("普通", "钻石")}
    corp.set_tags(external, "sales-01", wrong | {hand_tag})
    result = await wecom.reconcile(client=client.app[keys.wecom_key], rules=await rules.load(), now=NOW)
    assert (result["seen"], result["drifted"]) == (2, 1)
    await drain(client)
    assert await tier_tags(corp, external, "sales-01") == {"金卡"}
    assert hand_tag in corp.tags_of(external, "sales-01")
    assert await tier_tags(corp, fine, "sales-01") == {"普通"}


async def test_a_customer_added_during_an_outage_is_linked_by_the_reconcile(client, now, corp):
    member_id = await member(client, "o-dark", unionid="u-dark")
    corp.down = True
    external, resp = await add_contact(client, corp, staff="sales-01", unionid="u-dark")
    assert resp.status == 200
    contact = await WeComContact.get(external_userid=external)
    assert (contact.member_id, contact.unionid, contact.state) == (None, None, "active")
    corp.down = False
    result = await wecom.reconcile(client=client.app[keys.wecom_key], rules=await rules.load(), now=NOW)
    assert result["linked"] == 1
    assert (await WeComContact.get(id=contact.id)).member_id == member_id
    await drain(client)
    assert await tier_tags(corp, external, "sales-01") == {"普通"}


async def test_reconcile_marks_contacts_wecom_no_longer_lists(client, now, corp):
    _, external = await linked(client, corp, "vanished")
    await drain(client)
    corp.customers[external].follows.pop("sales-01")  # the deletion event was lost
    result = await wecom.reconcile(client=client.app[keys.wecom_key], rules=await rules.load(), now=NOW)
    assert result["gone"] == 1
    assert (await WeComContact.get(external_userid=external)).state == "deleted"


async def test_the_reconcile_job_runs_with_the_app_client(client, now, corp):
    from jobs import wecom_reconcile
    from jobs.registry import JobContext

    await linked(client, corp, "job")
    app = client.app
    ctx = JobContext(settings=app[keys.settings_key], redis=app[keys.redis_key], wechat=app[keys.wechat_key],
                     now=NOW, today=NOW.date(), wecom=app[keys.wecom_key])
    assert (await wecom_reconcile.run(ctx))["seen"] == 1
    ctx.wecom = None
    assert (await wecom_reconcile.run(ctx))["off"] == 1


# -- stewards and welcome --------------------------------------------------------------------


async def steward(tier="gold", userid="steward-01"):
    await wecom.set_steward(rules=await rules.load(), actor="test", steward=userid, tier=tier)


async def test_a_gold_member_adding_their_steward_is_welcomed_with_tier_and_points(client, clock, corp):
    await steward()
    await member(client, "o-gold", unionid="u-gold", tier="gold", points=1234)
    clock.travel_to(NOW + timedelta(seconds=3))
    _, resp = await add_contact(client, corp, staff="steward-01", unionid="u-gold")
    assert resp.status == 200
    assert len(corp.welcomes) == 1
    text = corp.welcomes[0]["text"]["content"]
    assert "金卡" in text and "1234" in text
    assert corp.welcomes[0]["userid"] == "steward-01"
    assert (await WeComContact.get(staff_userid="steward-01")).welcomed_at is not None


async def test_no_welcome_once_the_welcome_code_is_older_than_20_seconds(client, clock, corp):
    await steward()
    await member(client, "o-late", unionid="u-late", tier="gold")
    clock.travel_to(NOW + timedelta(seconds=21))
    _, resp = await add_contact(client, corp, staff="steward-01", unionid="u-late",
                                sent_at=NOW + timedelta(seconds=21))
    assert resp.status == 200
    assert corp.welcomes == []
    assert not corp.called("/cgi-bin/externalcontact/send_welcome_msg")
    assert (await WeComContact.get(staff_userid="steward-01")).member_id is not None


async def test_welcome_only_from_the_steward_and_only_once(client, now, corp):
    await steward()
    await member(client, "o-reg", unionid="u-reg")  # regular: no steward
    await add_contact(client, corp, staff="steward-01", unionid="u-reg")
    await member(client, "o-g2", unionid="u-g2", tier="gold")
    await add_contact(client, corp, staff="sales-01", unionid="u-g2")  # not their steward
    assert corp.welcomes == []
    external, code = corp.add_contact(staff="steward-01", unionid="u-g2")
    xml = event_xml("add_external_contact", staff="steward-01", external=external, welcome_code=code)
    await push(client, xml)
    await push(client, xml)  # WeCom's retry: a new nonce, the same event
    assert len(corp.welcomes) == 1


async def test_a_member_steward_overrides_the_tier_rule(client, now, corp):
    await steward()
    member_id = await member(client, "o-own", unionid="u-own", tier="diamond")
    await wecom.set_steward(rules=await rules.load(), actor="ops", steward="steward-02", member_id=member_id)
    assert await wecom.steward_for(member_id=member_id, tier="diamond") == "steward-02"
    await add_contact(client, corp, staff="steward-02", unionid="u-own")
    assert len(corp.welcomes) == 1
    assert await AuditLog.filter(action="wecom.steward").count() == 2
