"""企业微信 protocol and client: the envelope against an independent encryptor, the token cache."""
from __future__ import annotations

import asyncio

import aiohttp
import pytest

from app.wechat.client import WeChatError
from app.wechat.oa import OAProtocolError, parse_xml
from app.wechat.wecom import WeComClient, WeComCrypto, fresh, parse_event
from miniprogram_stub.simulator.wecom import SANDBOX_CORP_ID, SANDBOX_CORP_SECRET, wecom_state_key
from tests.handlers.wechat.wecom_world import AES_KEY, CORP, TOKEN, encrypt, event_xml, sign


def test_the_crypto_opens_what_the_independent_helper_sealed():
    crypto = WeComCrypto(TOKEN, AES_KEY, CORP)
    xml = event_xml("add_external_contact", staff="s1", external="wm1", welcome_code="wc1")
    sealed = encrypt(xml)
    plain = crypto.decrypt(sealed, sign(TOKEN, "1", "n", sealed), "1", "n")
    assert plain.decode() == xml
    event = parse_event(parse_xml(plain))
    assert (event.change_type, event.staff_userid, event.external_userid, event.welcome_code) == \
        ("add_external_contact", "s1", "wm1", "wc1")


def test_echostr_and_refusals():
    crypto = WeComCrypto(TOKEN, AES_KEY, CORP)
    sealed = encrypt("12345")
    assert crypto.verify_echostr(sealed, sign(TOKEN, "7", "n", sealed), "7", "n") == "12345"
    with pytest.raises(OAProtocolError):
        crypto.verify_echostr(sealed, sign("other", "7", "n", sealed), "7", "n")
    foreign = encrypt("12345", corp_id="ww-other")
    with pytest.raises(OAProtocolError):
        crypto.verify_echostr(foreign, sign(TOKEN, "7", "n", foreign), "7", "n")


def test_timestamp_window():
    assert fresh("1000", now=1300) and fresh("1300", now=1000)
    assert not fresh("1000", now=1301) and not fresh("abc", now=1000) and not fresh("", now=0)


@pytest.fixture
async def wecom(simulator, redis):
    await redis.delete(f"wecom:token:{SANDBOX_CORP_ID}")  # a token of an earlier test's simulator
    async with aiohttp.ClientSession() as session:
        yield WeComClient(session=session, redis=redis, base_url=str(simulator.make_url("")).rstrip("/"),
                          corp_id=SANDBOX_CORP_ID, secret=SANDBOX_CORP_SECRET, retries=0)


async def test_the_token_is_fetched_once_and_refreshed_when_expired(wecom, simulator):
    state = simulator.app[wecom_state_key]
    await asyncio.gather(*(wecom.get_corp_tag_list() for _ in range(10)))
    assert len(state.called("/cgi-bin/gettoken")) == 1
    for value in state.tokens:
        state.tokens[value] = 0.0  # every token expired: 42001
    assert await wecom.get_corp_tag_list() == []
    assert len(state.called("/cgi-bin/gettoken")) == 2


async def test_wecom_refusals_raise_with_their_errcode(wecom):
    with pytest.raises(WeChatError) as caught:
        await wecom.get_external_contact("wm-nobody")
    assert caught.value.errcode == 40096


async def test_a_wrong_secret_is_refused(simulator, redis):
    async with aiohttp.ClientSession() as session:
        bad = WeComClient(session=session, redis=redis, base_url=str(simulator.make_url("")).rstrip("/"),
                          corp_id=SANDBOX_CORP_ID, secret="wrong", retries=0)
        with pytest.raises(WeChatError) as caught:
            await bad.get_corp_tag_list()
    assert caught.value.errcode == 40001
