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
