"""`python -m miniprogram_stub wecom add-contact` against the real app and the simulated corp."""
from __future__ import annotations

from app import keys
from app.domain import rules, wecom
from app.models import Member, WeComContact
from miniprogram_stub import wecom_customer
from miniprogram_stub.simulator.wecom import (
    SANDBOX_CORP_ID, SANDBOX_CORP_SECRET, SANDBOX_WECOM_AES_KEY, SANDBOX_WECOM_TOKEN, wecom_state_key,
)
import pytest


@pytest.fixture
def settings(settings):
    return settings.with_(wecom_corp_id=SANDBOX_CORP_ID, wecom_secret=SANDBOX_CORP_SECRET,
                          wecom_token=SANDBOX_WECOM_TOKEN, wecom_aes_key=SANDBOX_WECOM_AES_KEY,
                          wecom_api_base=settings.wechat_api_base)


async def test_add_contact_links_welcomes_and_tags_a_gold_member(client, simulator, login):
    corp = simulator.app[wecom_state_key]
    me = await login("o-cli")
    await Member.filter(id=me.id).update(tier="gold", points=888)
    await wecom.set_steward(rules=await rules.load(), actor="test", steward="steward-01", tier="gold")
    added = await wecom_customer.add_contact(base=str(client.make_url("")).rstrip("/"), openid="o-cli",
                                             staff="steward-01")
    assert (added.status, added.body, added.member_id) == (200, "success", me.id)
    contact = await WeComContact.get(external_userid=added.external_userid)
    assert contact.member_id == me.id and contact.staff_userid == "steward-01"
    assert len(corp.welcomes) == 1 and "888" in corp.welcomes[0]["text"]["content"]
    from app.domain import outbox

    app = client.app
    await outbox.deliver_due(wechat=app[keys.wechat_key], oa_wechat=app[keys.oa_wechat_key],
                             settings=app[keys.settings_key], now=app[keys.clock_key].now(),
                             wecom=app[keys.wecom_key])
    assert corp.tag_names(added.external_userid, "steward-01") == {"金卡"}


@pytest.mark.smoke
async def test_sandbox_mode_simulates_a_corp_end_to_end(aiohttp_client, settings, redis_url):
    from app.main import create_app
    from tests.conftest import reset_state

    sandbox = settings.with_(mp_appid=None, mp_secret=None, wecom_corp_id=None, wecom_secret=None,
                             wecom_token=None, wecom_aes_key=None)
    server = await aiohttp_client(create_app(sandbox))
    await reset_state(redis_url)
    added = await wecom_customer.add_contact(base=str(server.make_url("")).rstrip("/"), openid="o-sandbox",
                                             staff="sales-01")
    assert (added.status, added.body) == (200, "success")
    assert (await WeComContact.get(external_userid=added.external_userid)).member_id == added.member_id
    corp = server.app[keys.simulator_key][wecom_state_key]
    assert corp.called("/cgi-bin/externalcontact/get")


async def test_the_simulated_batch_listing_pages_across_staff_members(simulator, redis):
    import aiohttp

    from app.wechat.wecom import WeComClient

    corp = simulator.app[wecom_state_key]
    for i in range(7):
        corp.add_contact(staff="steward-01", unionid=f"u-a{i}")
    for i in range(5):
        corp.add_contact(staff="steward-02", unionid=f"u-b{i}")
    corp.add_contact(staff="steward-02", unionid="u-a0")  # one customer, two staff members
    await redis.delete(f"wecom:token:{SANDBOX_CORP_ID}")
    async with aiohttp.ClientSession() as session:
        client = WeComClient(session=session, redis=redis, base_url=str(simulator.make_url("")).rstrip("/"),
                             corp_id=SANDBOX_CORP_ID, secret=SANDBOX_CORP_SECRET, retries=0)
        seen, cursor, pages = [], "", 0
        while True:
            data = await client.batch_get_by_user(userids=["steward-01", "steward-02"], cursor=cursor, limit=4)
            seen += [(i["external_contact"]["unionid"], i["follow_info"]["userid"]) for i in data["external_contact_list"]]
            pages += 1
            cursor = data["next_cursor"]
            if not cursor:
                break
    assert pages == 4 and len(seen) == 13 and len(set(seen)) == 13
    assert ("u-a0", "steward-02") in seen
