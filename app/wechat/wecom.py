"""企业微信 (WeCom) customer contact: the callback's protocol and the async API client.

The callback is the official account's safe mode with the corp id as receiver id, so it
reuses `OACrypto` (signature checked before a byte is decrypted) and the hostile-XML limits
of `parse_xml`. Unlike the official account, URL verification sends an *encrypted* echostr
and expects its plaintext back.

The client is `WeChatClient` with WeCom's token endpoint (`/cgi-bin/gettoken?corpid&corpsecret`):
the token is cached in Redis and refreshed by one process under a Redis lock, exactly as the
official account's, and a call refused for a stale token is retried once.
"""
from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import aiohttp
from redis.asyncio import Redis

from app.wechat.client import TOKEN_MARGIN, TOKEN_MIN_TTL, WeChatClient
from app.wechat.oa import OACrypto, OAProtocolError, _sha1_sorted

__all__ = [
    "INVALID_EXTERNAL_USER", "INVALID_TAG", "TAG_NOT_OWNED", "TIMESTAMP_WINDOW", "WeComClient",
    "WeComCrypto", "WeComEvent", "fresh", "parse_event",
]

# The errcodes the tag code handles itself rather than retrying.
INVALID_EXTERNAL_USER = 40096
INVALID_TAG = 40068
TAG_NOT_OWNED = 301002
# A callback whose timestamp is further than this from our clock is refused (as for the OA).
TIMESTAMP_WINDOW = 300
# At most this many external_userids in one add_msg_template (WeCom's limit is 10,000).
TEMPLATE_MAX_RECIPIENTS = 10_000


def fresh(timestamp: str, *, now: float, window: int = TIMESTAMP_WINDOW) -> bool:
    """True when `timestamp` (unix seconds, digits) is within `window` seconds of `now`."""
    if not timestamp.isdigit() or len(timestamp) > 12:
        return False
    return abs(int(timestamp) - now) <= window


class WeComCrypto(OACrypto):
    """The callback envelope: AES-256-CBC with the corp id as receiver, signed by msg_signature."""

    def __init__(self, token: str, encoding_aes_key: str, corp_id: str) -> None:
        super().__init__(token, encoding_aes_key, corp_id)

    def verify_echostr(self, echostr: str, msg_signature: str, timestamp: str, nonce: str) -> str:
        """URL verification: the plaintext of the encrypted `echostr`, once its signature checks."""
        echostr = (echostr or "").strip()
        if not echostr or echostr.startswith("<"):
            raise OAProtocolError("no echostr")
        expected = _sha1_sorted(self.token, timestamp, nonce, echostr)
        if not hmac.compare_digest(expected.encode(), (msg_signature or "").strip().lower().encode()):
            raise OAProtocolError("bad msg_signature")
        return self.decrypt(echostr, msg_signature, timestamp, nonce).decode("utf-8")


@dataclass(frozen=True, slots=True)
class WeComEvent:
    """One customer-contact push, parsed once. `change_type` is lowercase (`add_external_contact`…)."""

    corp_id: str                 # ToUserName
    create_time: int
    event: str                   # "change_external_contact" for everything handled here
    change_type: str
    staff_userid: str            # UserID: the staff member concerned
    external_userid: str         # ExternalUserID: the customer
    welcome_code: str = ""
    state: str = ""
    raw: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False, repr=False)


def parse_event(fields: Mapping[str, str]) -> WeComEvent:
    """A `WeComEvent` from `parse_xml` output of the decrypted push; ToUserName, an integer
    CreateTime and MsgType "event" are required, else `OAProtocolError`."""
    def get(name: str) -> str:
        return (fields.get(name) or "").strip()

    if get("MsgType").lower() != "event" or not get("ToUserName"):
        raise OAProtocolError("not a WeCom event")
    created = get("CreateTime")
    if not created.isdigit() or len(created) > 12:
        raise OAProtocolError("bad CreateTime")
    return WeComEvent(
        corp_id=get("ToUserName"), create_time=int(created), event=get("Event").lower(),
        change_type=get("ChangeType").lower(), staff_userid=get("UserID"),
        external_userid=get("ExternalUserID"), welcome_code=get("WelcomeCode"), state=get("State"),
        raw=MappingProxyType(dict(fields)),
    )


class WeComClient(WeChatClient):
    """WeCom's customer-contact API (`WECOM_API_BASE`), token per corp id in Redis."""

    def __init__(self, *, session: aiohttp.ClientSession, redis: Redis, base_url: str, corp_id: str,
                 secret: str, timeout: float = 5.0, retries: int = 2) -> None:
        super().__init__(session=session, redis=redis, base_url=base_url, appid=corp_id, secret=secret,
                         timeout=timeout, retries=retries)
        self.corp_id = corp_id
        # Its own keys: a corp id never collides with an appid, but the prefix says whose it is.
        self._token_key = f"wecom:token:{corp_id}"
        self._lock_key = f"wecom:token-lock:{corp_id}"

    async def _fetch_token(self, *, rejected: str | None) -> str:
        data = await self._call("GET", "/cgi-bin/gettoken", token=False,
                                params={"corpid": self.corp_id, "corpsecret": self._secret})
        token = data["access_token"]
        ttl = max(int(data.get("expires_in", 7200)) - TOKEN_MARGIN, TOKEN_MIN_TTL)
        await self._redis.set(self._token_key, token, ex=ttl)
        return token

    # -- customers -------------------------------------------------------------------------

    async def get_external_contact(self, external_userid: str) -> dict[str, Any]:
        """`{"external_contact": {"external_userid", "name", "unionid"?…}, "follow_user": [{"userid",
        "tags": [{"tag_id"…}]}]}`; 40096 for an unknown customer."""
        return await self._call("GET", "/cgi-bin/externalcontact/get",
                                params={"external_userid": external_userid})

    async def batch_get_by_user(self, *, userids: list[str], cursor: str = "", limit: int = 100) -> dict[str, Any]:
        """One page of the customers of `userids`, each with the follow_info (tag_id list) of the
        staff member it follows; `next_cursor` is empty on the last page."""
        return await self._call("POST", "/cgi-bin/externalcontact/batch/get_by_user",
                                json={"userid_list": userids, "cursor": cursor, "limit": limit})

    # -- tags ------------------------------------------------------------------------------

    async def get_corp_tag_list(self) -> list[dict[str, Any]]:
        """Every corp tag group: `[{"group_id", "group_name", "tag": [{"id", "name"}]}]`."""
        data = await self._call("POST", "/cgi-bin/externalcontact/get_corp_tag_list", json={})
        return list(data.get("tag_group") or [])

    async def add_corp_tag(self, *, group_name: str, tags: list[str], group_id: str | None = None) -> dict[str, Any]:
        """Create tags in a group (a new group named `group_name` when `group_id` is None)."""
        body: dict[str, Any] = {"group_name": group_name, "tag": [{"name": t} for t in tags]}
        if group_id:
            body["group_id"] = group_id
        data = await self._call("POST", "/cgi-bin/externalcontact/add_corp_tag", json=body)
        return data["tag_group"]

    async def mark_tag(self, *, userid: str, external_userid: str, add_tag: list[str],
                       remove_tag: list[str]) -> dict[str, Any]:
        """Tag the customer as seen by staff member `userid` (40096, 40068, 301002: see above)."""
        return await self._call("POST", "/cgi-bin/externalcontact/mark_tag", json={
            "userid": userid, "external_userid": external_userid,
            "add_tag": add_tag, "remove_tag": remove_tag,
        })

    # -- messages --------------------------------------------------------------------------

    async def send_welcome_msg(self, *, welcome_code: str, text: str) -> dict[str, Any]:
        """The welcome message of an add_external_contact event (its code lives 20 seconds)."""
        return await self._call("POST", "/cgi-bin/externalcontact/send_welcome_msg",
                                json={"welcome_code": welcome_code, "text": {"content": text}})

    async def add_msg_template(self, *, sender: str, external_userids: list[str], text: str) -> dict[str, Any]:
        """A mass message from `sender` to its customers: `{"msgid", "fail_list"}`."""
        return await self._call("POST", "/cgi-bin/externalcontact/add_msg_template", json={
            "chat_type": "single", "sender": sender, "external_userid": external_userids,
            "text": {"content": text},
        })
