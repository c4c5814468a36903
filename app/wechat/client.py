"""Async client for WeChat's server API (mini-program, official account, member card).

One instance per appid. The access token is shared by every process through Redis and
refreshed by one process at a time under a Redis lock; calls rejected for a stale token
are retried once with a fresh one.
"""
from __future__ import annotations

import asyncio
import contextlib
import json as jsonlib
from typing import Any

import aiohttp
from redis.asyncio import Redis
from redis.exceptions import LockError

from app import metrics

# 40001 invalid credential, 42001 expired, 40014 malformed: the cached token is no good.
TOKEN_REJECTED = frozenset({40001, 40014, 42001})
# Refresh a little before WeChat's expiry so a token is never used in its last minutes.
TOKEN_MARGIN = 300
TOKEN_MIN_TTL = 60

# Delete the cached token only if it is still the one WeChat rejected: another process
# may already have stored a fresh one, which must survive.
FORGET_TOKEN = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class WeChatError(Exception):
    """WeChat answered `errcode` ≠ 0 (or could not be reached: see `WeChatUnavailable`)."""

    def __init__(self, errcode: int, errmsg: str) -> None:
        super().__init__(f"WeChat error {errcode}: {errmsg}")
        self.errcode = errcode
        self.errmsg = errmsg


class WeChatUnavailable(WeChatError):
    """WeChat could not be reached: network error, timeout or HTTP 5xx after the retries (errcode -1)."""

    def __init__(self, errmsg: str) -> None:
        super().__init__(-1, errmsg)


class WeChatClient:
    """WeChat's HTTP API over a shared `aiohttp.ClientSession`, with the token cached in Redis."""

    def __init__(self, *, session: aiohttp.ClientSession, redis: Redis, base_url: str, appid: str,
                 secret: str, timeout: float = 5.0, retries: int = 2) -> None:
        self._session = session
        self._redis = redis
        self._base_url = base_url.rstrip("/")
        self.appid = appid
        self._secret = secret
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._retries = retries
        self._token_key = f"wechat:token:{appid}"
        self._lock_key = f"wechat:token-lock:{appid}"

    # -- mini-program ---------------------------------------------------------------------

    async def code2session(self, code: str) -> dict[str, Any]:
        """Exchange a `wx.login` code for `{"openid", "session_key", "unionid"?}`; a bad code raises
        WeChatError (40029 invalid, 45011 rate limited, 40226 risky user)."""
        data = await self._call("GET", "/sns/jscode2session", token=False, params={
            "appid": self.appid, "secret": self._secret, "js_code": code,
            "grant_type": "authorization_code",
        })
        session = {"openid": data["openid"], "session_key": data["session_key"]}
        if data.get("unionid"):
            session["unionid"] = data["unionid"]
        return session

    async def send_subscribe_message(self, *, openid: str, template_id: str, data: dict[str, Any],
                                     page: str | None = None) -> dict[str, Any]:
        """Send one subscription message (it spends one of the member's acceptances).

        `data` values may be plain values, wrapped here as `{"value": str(v)}`; 43101 (no
        acceptance left) raises WeChatError like any other refusal."""
        body: dict[str, Any] = {
            "touser": openid,
            "template_id": template_id,
            "data": {k: v if isinstance(v, dict) else {"value": str(v)} for k, v in data.items()},
        }
        if page:
            body["page"] = page
        return await self._call("POST", "/cgi-bin/message/subscribe/send", json=body)

    async def get_wxacode_unlimit(self, *, scene: str, page: str | None = None, width: int = 430) -> bytes:
        """The PNG of a mini-program code carrying `scene` (at most 32 characters, else 40169)."""
        body: dict[str, Any] = {"scene": scene, "width": width}
        if page:
            body["page"] = page
        image = await self._call("POST", "/wxa/getwxacodeunlimit", json=body, raw=True)
        if not isinstance(image, bytes):
            # errcode 0 but JSON instead of an image: nothing usable came back.
            raise WeChatError(-2, "getwxacodeunlimit answered JSON without an image")
        return image

    async def get_phone_number(self, code: str) -> str:
        """The member's phone number (digits without country code) for a `getPhoneNumber` code."""
        data = await self._call("POST", "/wxa/business/getuserphonenumber", json={"code": code})
        return data["phone_info"]["purePhoneNumber"]

    # -- member card (official account) ----------------------------------------------------

    async def membercard_activate(self, **body: Any) -> dict[str, Any]:
        """Activate a member card: `membership_number`, `code`, `card_id`, optional `init_bonus` …"""
        return await self._call("POST", "/card/membercard/activate", json=body)

    async def membercard_updateuser(self, **body: Any) -> dict[str, Any]:
        """Update a card's points: `code`, `card_id`, `add_bonus` or `bonus`, `record_bonus`;
        answers `{"result_bonus", "openid", …}`."""
        return await self._call("POST", "/card/membercard/updateuser", json=body)

    async def membercard_userinfo(self, *, code: str, card_id: str) -> dict[str, Any]:
        """What the member's card shows (`card/membercard/userinfo/get`): `{"bonus", "openid",
        "membership_number", "user_card_status", …}`."""
        return await self._call("POST", "/card/membercard/userinfo/get",
                                json={"code": code, "card_id": card_id})

    async def upload_shipping_info(self, **body: Any) -> dict[str, Any]:
        """发货信息录入 (`/wxa/sec/order/upload_shipping_info`): required for a paid order of the
        mini-program, virtual goods included (logistics_type 3)."""
        return await self._call("POST", "/wxa/sec/order/upload_shipping_info", json=body)

    async def membercard_activatetempinfo(self, activate_ticket: str) -> dict[str, str]:
        """`{"name", "phone", "birthday"}` from the member's one-click activation form
        (a field the form lacks comes back as an empty string)."""
        data = await self._call("POST", "/card/membercard/activatetempinfo/get",
                                json={"activate_ticket": activate_ticket})
        fields = {f.get("name"): f.get("value", "")
                  for f in data.get("info", {}).get("common_field_list", [])}
        return {
            "name": fields.get("USER_FORM_INFO_FLAG_NAME", ""),
            "phone": fields.get("USER_FORM_INFO_FLAG_MOBILE", ""),
            "birthday": fields.get("USER_FORM_INFO_FLAG_BIRTHDAY", ""),
        }

    # -- official account ----------------------------------------------------------------

    async def create_menu(self, menu: dict[str, Any]) -> dict[str, Any]:
        """Replace the official account's custom menu with `menu` (`{"button": [...]}`)."""
        return await self._call("POST", "/cgi-bin/menu/create", json=menu)

    async def get_user_info(self, openid: str) -> dict[str, Any]:
        """A follower's profile by their official-account openid: `{"subscribe", "openid",
        "unionid"?, ...}`; `unionid` is there when the account is bound to the open platform."""
        return await self._call("GET", "/cgi-bin/user/info", params={"openid": openid, "lang": "zh_CN"})

    async def send_custom_text(self, *, openid: str, content: str) -> dict[str, Any]:
        """Send a customer-service text message (allowed within 48 h of the member's last message)."""
        return await self._call("POST", "/cgi-bin/message/custom/send", json={
            "touser": openid, "msgtype": "text", "text": {"content": content},
        })

    # -- access token ----------------------------------------------------------------------

    async def access_token(self) -> str:
        """The appid's access token: from Redis while it lives (WeChat's expires_in − 300 s,
        at least 60 s), else fetched by exactly one process under a Redis lock."""
        return await self._token(rejected=None)

    async def _token(self, *, rejected: str | None) -> str:
        cached = await self._cached_token()
        if cached and cached != rejected:
            return cached
        lock = self._redis.lock(self._lock_key, timeout=10, blocking_timeout=10)
        if not await lock.acquire():
            raise WeChatUnavailable("timed out waiting for the access-token lock")
        try:
            # Whoever held the lock before us has probably just stored a fresh token.
            cached = await self._cached_token()
            if cached and cached != rejected:
                return cached
            return await self._fetch_token(rejected=rejected)
        finally:
            # The lock may have expired during a slow fetch; the token is stored either way.
            with contextlib.suppress(LockError):
                await lock.release()

    async def _cached_token(self) -> str | None:
        value = await self._redis.get(self._token_key)
        if isinstance(value, bytes):
            return value.decode()
        return value

    async def _fetch_token(self, *, rejected: str | None) -> str:
        body = {"grant_type": "client_credential", "appid": self.appid, "secret": self._secret,
                "force_refresh": False}
        data = await self._call("POST", "/cgi-bin/stable_token", json=body, token=False)
        if data["access_token"] == rejected:
            # stable_token's normal mode hands back a live token even if WeChat just refused
            # it (credentials reset); only a forced refresh (20 a day) replaces it.
            data = await self._call("POST", "/cgi-bin/stable_token",
                                    json={**body, "force_refresh": True}, token=False)
        token = data["access_token"]
        ttl = max(int(data.get("expires_in", 7200)) - TOKEN_MARGIN, TOKEN_MIN_TTL)
        await self._redis.set(self._token_key, token, ex=ttl)
        return token

    async def _forget_token(self, token: str) -> None:
        await self._redis.eval(FORGET_TOKEN, 1, self._token_key, token)

    # -- transport -------------------------------------------------------------------------

    async def _call(self, method: str, path: str, **kw: Any) -> dict[str, Any] | bytes:
        """`_call_once`, counted in wechat_api_calls_total by path and outcome (ok, refused,
        unavailable) for the operators' dashboard."""
        try:
            data = await self._call_once(method, path, **kw)
        except WeChatUnavailable:
            metrics.WECHAT_CALLS.labels(path, "unavailable").inc()
            raise
        except WeChatError:
            metrics.WECHAT_CALLS.labels(path, "refused").inc()
            raise
        metrics.WECHAT_CALLS.labels(path, "ok").inc()
        return data

    async def _call_once(self, method: str, path: str, *, json: dict[str, Any] | None = None,
                         params: dict[str, Any] | None = None, token: bool = True,
                         raw: bool = False) -> dict[str, Any] | bytes:
        """One API call: adds the access token, retries once with a fresh token when WeChat
        rejects it (40001/40014/42001), raises WeChatError for errcode ≠ 0. With `raw`, a
        non-JSON answer comes back as bytes."""
        rejected: str | None = None
        for attempt in range(2):
            query = dict(params or {})
            if token:
                query["access_token"] = await self._token(rejected=rejected)
            data = await self._request(method, path, json=json, params=query, raw=raw)
            if isinstance(data, bytes):
                return data
            errcode = int(data.get("errcode") or 0)
            if token and errcode in TOKEN_REJECTED and attempt == 0:
                rejected = query["access_token"]
                await self._forget_token(rejected)
                continue
            if errcode:
                raise WeChatError(errcode, str(data.get("errmsg", "")))
            return data
        raise AssertionError("unreachable: the second attempt returns or raises")

    async def _request(self, method: str, path: str, *, json: dict[str, Any] | None,
                       params: dict[str, Any], raw: bool) -> dict[str, Any] | bytes:
        """Send one HTTP request, retrying network errors, timeouts and 5xx `retries` times.

        A retried POST may have reached WeChat the first time; WeChat's send APIs carry no
        idempotency key, so a rare duplicate is the price of not losing the call."""
        # WeChat shows \u escapes literally in menus and messages: send real UTF-8.
        body = jsonlib.dumps(json, ensure_ascii=False).encode() if json is not None else None
        headers = {"Content-Type": "application/json; charset=utf-8"} if body is not None else None
        url = self._base_url + path
        failure = "no attempt made"
        for attempt in range(self._retries + 1):
            if attempt:
                await asyncio.sleep(0.05 * 2 ** (attempt - 1))
            try:
                async with self._session.request(method, url, params=params, data=body,
                                                  headers=headers, timeout=self._timeout) as resp:
                    if resp.status >= 500:
                        failure = f"HTTP {resp.status} from {path}"
                        continue
                    content = await resp.read()
                    content_type = resp.headers.get("Content-Type", "")
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                failure = f"{type(exc).__name__} calling {path}: {exc}"
                continue
            if resp.status != 200:
                raise WeChatUnavailable(f"HTTP {resp.status} from {path}")
            # jscode2session answers JSON as text/plain, so sniff the body as well as the type.
            if raw and "json" not in content_type and not content.lstrip().startswith(b"{"):
                return content
            try:
                data = jsonlib.loads(content)
            except (ValueError, UnicodeDecodeError):
                raise WeChatUnavailable(f"unreadable answer from {path}") from None
            if not isinstance(data, dict):
                raise WeChatUnavailable(f"unexpected answer from {path}")
            return data
        raise WeChatUnavailable(failure)
