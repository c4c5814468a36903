"""`python -m miniprogram_stub wecom add-contact`: a customer adds a steward in 企业微信.

Plays both sides against a running server in sandbox mode: the member logs in with a unionid
(so the server can link them), then the simulated corp's callback `add_external_contact` is
sealed with the sandbox WeCom token and AES key and POSTed to `/wechat/wecom`. The customer's
external_userid is `wmsim.<staff>.<unionid>`, which the in-process simulator always knows.
"""
from __future__ import annotations

import secrets
import time
from dataclasses import dataclass

import aiohttp

from app.wechat.oa import parse_xml
from app.wechat.wecom import WeComCrypto
from miniprogram_stub.simulator.wecom import (
    SANDBOX_CORP_ID, SANDBOX_WECOM_AES_KEY, SANDBOX_WECOM_TOKEN, SIM_PREFIX,
)


@dataclass(frozen=True)
class Added:
    status: int
    body: str
    member_id: int | None
    external_userid: str


def sealed_push(xml: str, *, timestamp: int, token: str = SANDBOX_WECOM_TOKEN,
                aes_key: str = SANDBOX_WECOM_AES_KEY, corp_id: str = SANDBOX_CORP_ID) -> tuple[dict, bytes]:
    """(query args, body) of an encrypted, signed WeCom callback carrying `xml`."""
    nonce = secrets.token_hex(8)
    envelope = WeComCrypto(token, aes_key, corp_id).encrypt(xml, nonce, timestamp)
    fields = parse_xml(envelope.encode())
    query = {"msg_signature": fields["MsgSignature"], "timestamp": str(timestamp), "nonce": nonce}
    body = f"<xml><ToUserName><![CDATA[{corp_id}]]></ToUserName><Encrypt><![CDATA[{fields['Encrypt']}]]></Encrypt></xml>"
    return query, body.encode()


async def add_contact(*, base: str, openid: str, staff: str, unionid: str | None = None) -> Added:
    """Log `openid` in with a unionid, then deliver the add_external_contact event for `staff`."""
    base = base.rstrip("/")
    unionid = unionid or f"u-{openid}"
    external = f"{SIM_PREFIX}{staff}.{unionid}"
    now = int(time.time())
    xml = ("<xml><ToUserName><![CDATA[{corp}]]></ToUserName><FromUserName><![CDATA[sys]]></FromUserName>"
           "<CreateTime>{now}</CreateTime><MsgType><![CDATA[event]]></MsgType>"
           "<Event><![CDATA[change_external_contact]]></Event><ChangeType><![CDATA[add_external_contact]]></ChangeType>"
           "<UserID><![CDATA[{staff}]]></UserID><ExternalUserID><![CDATA[{external}]]></ExternalUserID>"
           "<WelcomeCode><![CDATA[sim:{code}]]></WelcomeCode></xml>").format(
        corp=SANDBOX_CORP_ID, now=now, staff=staff, external=external, code=secrets.token_hex(8))
    query, body = sealed_push(xml, timestamp=now)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30)) as session:
        async with session.post(f"{base}/mp/login", json={"code": f"sim:{openid}:{unionid}"}) as resp:
            member_id = (await resp.json())["member"]["id"] if resp.status == 200 else None
        async with session.post(f"{base}/wechat/wecom", params=query, data=body) as resp:
            return Added(status=resp.status, body=await resp.text(), member_id=member_id, external_userid=external)
