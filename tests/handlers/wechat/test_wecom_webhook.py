"""`/wechat/wecom`: URL verification, every customer-contact event, and the rejection paths."""
from __future__ import annotations

from datetime import timedelta

import pytest

from app.models import OutboxMessage, WeComContact
from tests.handlers.wechat.wecom_world import (  # noqa: F401 - fixtures
    CORP, NOW, add_contact, corp, drain, encrypt, event_xml, member, now, push, query, settings, tier_tags,
)


async def test_url_verification_answers_the_decrypted_echostr(client, now):
    encrypted = encrypt("echo-1234567890")
    resp = await client.get("/wechat/wecom", params={**query(encrypted), "echostr": encrypted})
    assert resp.status == 200
    assert await resp.text() == "echo-1234567890"


@pytest.mark.parametrize("spoil", ["signature", "stale", "future", "replay", "other_corp"])
async def test_url_verification_refusals(client, now, spoil):
    corp_id = "ww-someone-else" if spoil == "other_corp" else CORP
    encrypted = encrypt("echo-1", corp_id=corp_id)
    at = {"stale": NOW - timedelta(minutes=6), "future": NOW + timedelta(minutes=6)}.get(spoil, NOW)
    params = {**query(encrypted, at=at), "echostr": encrypted}
    if spoil == "signature":
        params["msg_signature"] = "0" * 40
    if spoil == "replay":
        assert (await client.get("/wechat/wecom", params=params)).status == 200
    resp = await client.get("/wechat/wecom", params=params)
    assert resp.status == 403
    assert "echo-1" not in await resp.text()


async def test_a_member_adding_staff_is_linked_and_tagged_with_its_tier(client, now, corp):
    member_id = await member(client, "o-silver", unionid="u-silver", tier="silver")
    external, resp = await add_contact(client, corp, staff="sales-01", unionid="u-silver")
    assert resp.status == 200 and await resp.text() == "success"
    contact = await WeComContact.get(external_userid=external, staff_userid="sales-01")
    assert (contact.member_id, contact.unionid, contact.state, contact.corp_id) == (member_id, "u-silver", "active", CORP)
    assert await OutboxMessage.filter(channel="wecom", kind="mark_tag").count() == 1
    await drain(client)
    assert await tier_tags(corp, external, "sales-01") == {"银卡"}
    group = next(g for g in corp.groups.values() if g.name == "会员等级")
    assert sorted(group.tags.values()) == sorted(["普通", "银卡", "金卡", "钻石"])


@pytest.mark.parametrize("first_login", ["new", "returning"])
async def test_an_unknown_customer_is_kept_and_linked_when_the_member_logs_in(client, now, corp, first_login):
    from app.domain import wecom

    if first_login == "returning":
        await member(client, "o-later")  # a member already, but WeChat gave no unionid then
    external, _ = await add_contact(client, corp, staff="sales-01", unionid="u-later")
    contact = await WeComContact.get(external_userid=external)
    assert contact.member_id is None and contact.unionid == "u-later"
    member_id = await member(client, "o-later", unionid="u-later")
    assert (await WeComContact.get(id=contact.id)).member_id == member_id
    assert await wecom.link_waiting(now=NOW) == 0  # the login linked it; the job finds nothing
    assert await OutboxMessage.filter(channel="wecom").count() == 1
    await drain(client)
    assert await tier_tags(corp, external, "sales-01") == {"普通"}


async def test_the_reconcile_job_links_customers_waiting_for_a_member(client, now, corp):
    from app.domain import wecom
    from app.models import Member

    external, _ = await add_contact(client, corp, staff="sales-01", unionid="u-imported")
    member_id = await member(client, "o-imported")
    await Member.filter(id=member_id).update(unionid="u-imported")  # e.g. an import, not a login
    assert await wecom.link_waiting(now=NOW) == 1
    assert await wecom.link_waiting(now=NOW) == 0
    assert (await WeComContact.get(external_userid=external)).member_id == member_id


async def test_edit_event_links_a_customer_whose_unionid_arrived(client, now, corp):
    external, _ = await add_contact(client, corp, staff="sales-01", unionid=None)
    assert (await WeComContact.get(external_userid=external)).unionid is None
    member_id = await member(client, "o-edit", unionid="u-edit")
    corp.customers[external].unionid = "u-edit"  # bound to the open platform meanwhile
    resp = await push(client, event_xml("edit_external_contact", staff="sales-01", external=external))
    assert resp.status == 200
    assert (await WeComContact.get(external_userid=external)).member_id == member_id
    assert await OutboxMessage.filter(channel="wecom").count() == 1


@pytest.mark.parametrize("change", ["del_external_contact", "del_follow_user"])
async def test_deletions_keep_the_contact_but_stop_tagging_it(client, now, corp, change):
    from app.domain import tiers
    from app.models import Member
    from app.domain import rules
    from tortoise.transactions import in_transaction

    member_id = await member(client, f"o-{change}", unionid=f"u-{change}")
    external, _ = await add_contact(client, corp, staff="sales-01", unionid=f"u-{change}")
    await drain(client)
    resp = await push(client, event_xml(change, staff="sales-01", external=external, at=NOW + timedelta(seconds=5)),
                      at=NOW + timedelta(seconds=5))
    assert resp.status == 200
    assert (await WeComContact.get(external_userid=external)).state == "deleted"
    await Member.filter(id=member_id).update(growth=600)
    async with in_transaction() as conn:
        assert await tiers.follow_growth(conn=conn, member_id=member_id, rules=await rules.load(),
                                         cause="test", now=NOW)
    assert await OutboxMessage.filter(channel="wecom").count() == 1  # the link's only


async def test_a_re_added_customer_is_tagged_again(client, now, corp):
    await member(client, "o-back", unionid="u-back")
    external, _ = await add_contact(client, corp, staff="sales-01", unionid="u-back")
    later = NOW + timedelta(seconds=30)
    await push(client, event_xml("del_follow_user", staff="sales-01", external=external, at=later), at=later)
    again = NOW + timedelta(seconds=60)
    await push(client, event_xml("add_external_contact", staff="sales-01", external=external, at=again), at=again)
    assert (await WeComContact.get(external_userid=external)).state == "active"
    assert await OutboxMessage.filter(channel="wecom").count() == 2


@pytest.mark.parametrize("spoil", ["signature", "stale", "replay", "token"])
async def test_refused_pushes_process_nothing(client, now, corp, spoil):
    await member(client, "o-refused", unionid="u-refused")
    external, code = corp.add_contact(staff="sales-01", unionid="u-refused")
    xml = event_xml("add_external_contact", staff="sales-01", external=external, welcome_code=code)
    encrypted = encrypt(xml)
    body = f"<xml><Encrypt><![CDATA[{encrypted}]]></Encrypt></xml>".encode()
    params = query(encrypted, at=NOW - timedelta(minutes=6) if spoil == "stale" else NOW,
                   token="wrong-token" if spoil == "token" else "wecom-test-token")
    if spoil == "signature":
        params["msg_signature"] = params["msg_signature"][::-1]
    if spoil == "replay":
        assert (await client.post("/wechat/wecom", params=params, data=body)).status == 200
        await WeComContact.all().delete()
        corp.calls.clear()
    resp = await client.post("/wechat/wecom", params=params, data=body)
    assert resp.status == 403
    assert await WeComContact.all().count() == 0
    assert not corp.called("/cgi-bin/externalcontact/get")


async def test_a_push_that_is_not_encrypted_is_refused(client, now, corp):
    await member(client, "o-plain", unionid="u-plain")
    external, code = corp.add_contact(staff="sales-01", unionid="u-plain")
    plain = event_xml("add_external_contact", staff="sales-01", external=external, welcome_code=code)
    resp = await client.post("/wechat/wecom", params=query(""), data=plain.encode())
    assert resp.status == 403
    assert await WeComContact.all().count() == 0 and not corp.calls


@pytest.mark.parametrize("body", [
    b"",
    b"not xml at all",
    b'<?xml version="1.0"?><!DOCTYPE xml [<!ENTITY a "aaaaaaaaaa">]><xml><Encrypt>&a;</Encrypt></xml>',
    b"<xml><Encrypt>a</Encrypt><Encrypt>b</Encrypt></xml>",
    b"<xml>" + b"<x>1</x>" * 500 + b"</xml>",
])
async def test_hostile_xml_is_refused_before_anything_else(client, now, corp, body):
    resp = await client.post("/wechat/wecom", params=query("x"), data=body)
    assert resp.status in (400, 403, 413)
    assert resp.status != 500
    assert not corp.calls


async def test_a_valid_envelope_around_hostile_inner_xml_is_refused(client, now, corp):
    inner = '<!DOCTYPE xml [<!ENTITY e SYSTEM "file:///etc/passwd">]><xml><ToUserName>&e;</ToUserName></xml>'
    resp = await push(client, inner)
    assert resp.status == 400
    assert not corp.called("/cgi-bin/externalcontact/get")


async def test_wecom_off_answers_503(aiohttp_client, settings):
    from app.main import create_app

    off = await aiohttp_client(create_app(settings.with_(wecom_corp_id=None, wecom_secret=None)))
    encrypted = encrypt("x")
    resp = await off.get("/wechat/wecom", params={**query(encrypted), "echostr": encrypted})
    assert resp.status == 503
