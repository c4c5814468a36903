"""企业微信 test world: the app configured for the simulated corp, and signed encrypted pushes.

`encrypt` is written here from WeCom's documentation with `cryptography`, independently of the
app's wechatpy-based WeComCrypto, so a bug shared by both cannot make the tests pass.
"""
from __future__ import annotations

import base64
import hashlib
import itertools
import os
import struct
from datetime import datetime, timedelta

import pytest
from cryptography.hazmat.primitives import padding
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

from app import keys
from miniprogram_stub.simulator.wecom import SANDBOX_CORP_ID, SANDBOX_CORP_SECRET, wecom_state_key
from tests.conftest import shanghai

TOKEN = "wecom-test-token"
AES_KEY = "WeComTestAesKey0123456789abcdefghijklmnopqr"
CORP = SANDBOX_CORP_ID
NOW = shanghai(2026, 12, 1, 10, 0)
_nonces = itertools.count(1000)


@pytest.fixture
def settings(settings):
    return settings.with_(wecom_corp_id=CORP, wecom_secret=SANDBOX_CORP_SECRET, wecom_token=TOKEN,
                          wecom_aes_key=AES_KEY, wecom_api_base=settings.wechat_api_base,
                          outbox_max_attempts=2)


@pytest.fixture
def corp(simulator):
    """The simulated corp's state: customers, tags, every call."""
    return simulator.app[wecom_state_key]


@pytest.fixture
def now(clock):
    clock.travel_to(NOW)
    return clock


def encrypt(plain: str, *, corp_id: str = CORP, key: str = AES_KEY) -> str:
    """WeCom's envelope: base64(AES-256-CBC(random16 + len(msg) BE u32 + msg + corp_id)), IV = key[:16],
    PKCS#7 padded to 32 bytes."""
    raw_key = base64.b64decode(key + "=")
    msg = plain.encode()
    body = os.urandom(16) + struct.pack(">I", len(msg)) + msg + corp_id.encode()
    padder = padding.PKCS7(256).padder()
    padded = padder.update(body) + padder.finalize()
    enc = Cipher(algorithms.AES(raw_key), modes.CBC(raw_key[:16])).encryptor()
    return base64.b64encode(enc.update(padded) + enc.finalize()).decode()


def sign(*parts: str) -> str:
    return hashlib.sha1("".join(sorted(parts)).encode()).hexdigest()


def query(encrypted: str, *, at: datetime = NOW, token: str = TOKEN, nonce: str | None = None) -> dict:
    timestamp = str(int(at.timestamp()))
    nonce = nonce or str(next(_nonces))
    return {"msg_signature": sign(token, timestamp, nonce, encrypted), "timestamp": timestamp, "nonce": nonce}


def event_xml(change: str, *, staff: str, external: str, at: datetime = NOW, welcome_code: str = "",
              corp_id: str = CORP) -> str:
    extra = f"<WelcomeCode><![CDATA[{welcome_code}]]></WelcomeCode>" if welcome_code else ""
    return (f"<xml><ToUserName><![CDATA[{corp_id}]]></ToUserName><FromUserName><![CDATA[sys]]></FromUserName>"
            f"<CreateTime>{int(at.timestamp())}</CreateTime><MsgType><![CDATA[event]]></MsgType>"
            f"<Event><![CDATA[change_external_contact]]></Event><ChangeType><![CDATA[{change}]]></ChangeType>"
            f"<UserID><![CDATA[{staff}]]></UserID><ExternalUserID><![CDATA[{external}]]></ExternalUserID>"
            f"{extra}</xml>")


async def push(client, xml: str, *, at: datetime = NOW, sent_at: datetime | None = None, **kw):
    """POST one encrypted, signed push created at `at` (its timestamp `sent_at`, default `at`)."""
    encrypted = encrypt(xml)
    body = f"<xml><ToUserName><![CDATA[{CORP}]]></ToUserName><Encrypt><![CDATA[{encrypted}]]></Encrypt></xml>"
    return await client.post("/wechat/wecom", params=query(encrypted, at=sent_at or at, **kw), data=body.encode())


async def member(client, openid: str, *, unionid: str | None = None, tier: str | None = None,
                 points: int | None = None) -> int:
    from app.models import Member

    code = f"sim:{openid}:{unionid}" if unionid else f"sim:{openid}"
    resp = await client.post("/mp/login", json={"code": code})
    assert resp.status == 200, await resp.text()
    member_id = (await resp.json())["member"]["id"]
    changes = {k: v for k, v in {"tier": tier, "points": points}.items() if v is not None}
    if changes:
        await Member.filter(id=member_id).update(**changes)
    return member_id


async def add_contact(client, corp, *, staff: str, unionid: str | None, at: datetime = NOW, **kw):
    """A customer adds `staff` in WeCom, and WeCom tells us: (external_userid, the response)."""
    external, code = corp.add_contact(staff=staff, unionid=unionid)
    resp = await push(client, event_xml("add_external_contact", staff=staff, external=external, at=at,
                                        welcome_code=code), at=at, **kw)
    return external, resp


async def drain(client, *, now: datetime = NOW, later: timedelta = timedelta(0)) -> dict:
    """Run the outbox (with the WeCom client) until nothing is due at `now + later`."""
    from app.domain import outbox

    app = client.app
    total: dict = {}
    for _ in range(20):
        done = await outbox.deliver_due(wechat=app[keys.wechat_key], oa_wechat=app[keys.oa_wechat_key],
                                        settings=app[keys.settings_key], now=now + later,
                                        wecom=app[keys.wecom_key])
        for k, v in done.items():
            total[k] = total.get(k, 0) + v
        if not done["claimed"]:
            return total
    raise AssertionError("the outbox did not drain")


async def tier_tags(corp, external: str, staff: str) -> set[str]:
    """The names of the tier tags (our group) the customer carries for `staff`."""
    ours = {tid: name for g in corp.groups.values() if g.name == "会员等级" for tid, name in g.tags.items()}
    return {ours[t] for t in corp.tags_of(external, staff) if t in ours}
