"""A scripted mini-program member, and WeChat Pay's notifications as the simulator signs them.

`MiniProgramMember` does over HTTP what the mini-program does: wx.login → /mp/login with a
`sim:<openid>` code (the simulator accepts it), activate the card, check in, read /mp/me and
/mp/points. `send_payment` / `send_refund` sign a real APIv3 notification with the simulator's
platform key and POST it to /wechat/pay/notify, as WeChat Pay would after a JSAPI payment.
"""
from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any, Callable

import aiohttp

from miniprogram_stub.simulator import pay as sim

SANDBOX_APPID = "wx-sandbox-mp"


class ApiError(Exception):
    """The server answered with CONTRACT.md's error envelope."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


async def _json(resp: aiohttp.ClientResponse) -> Any:
    try:
        body = await resp.json(content_type=None)
    except ValueError:
        body = None
    if resp.status >= 400:
        error = (body or {}).get("error", {}) if isinstance(body, dict) else {}
        raise ApiError(resp.status, error.get("code", "http_error"), error.get("message", resp.reason or ""))
    return body


class MiniProgramMember:
    """One member driving the /mp API; use as `async with MiniProgramMember(base=..., openid=...)`."""

    def __init__(self, *, base: str, openid: str, session: aiohttp.ClientSession | None = None) -> None:
        self.base = base.rstrip("/")
        self.openid = openid
        self.token: str | None = None
        self.member: dict[str, Any] = {}
        self._session = session
        self._own_session = session is None

    async def __aenter__(self) -> "MiniProgramMember":
        if self._session is None:
            self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        return self

    async def __aexit__(self, *exc) -> None:
        if self._own_session and self._session is not None:
            await self._session.close()

    @property
    def _headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    async def _call(self, method: str, path: str, json: dict | None = None) -> Any:
        assert self._session is not None, "use `async with MiniProgramMember(...)`"
        async with self._session.request(method, self.base + path, json=json, headers=self._headers) as resp:
            return await _json(resp)

    async def login(self, *, invite_code: str | None = None, device_id: str | None = None) -> dict[str, Any]:
        """wx.login, then POST /mp/login; keeps the token."""
        body: dict[str, Any] = {"code": f"sim:{self.openid}"}
        if invite_code:
            body["invite_code"] = invite_code
        if device_id:
            body["device_id"] = device_id
        answer = await self._call("POST", "/mp/login", body)
        self.token, self.member = answer["token"], answer["member"]
        return answer

    async def activate_card(self, *, name: str, phone: str, birthday: str) -> dict[str, Any]:
        self.member = await self._call("POST", "/mp/card/activate",
                                       {"name": name, "phone": phone, "birthday": birthday})
        return self.member

    async def check_in(self) -> dict[str, Any]:
        return await self._call("POST", "/mp/checkin")

    async def me(self) -> dict[str, Any]:
        self.member = await self._call("GET", "/mp/me")
        return self.member

    async def points(self, *, limit: int = 20) -> dict[str, Any]:
        return await self._call("GET", f"/mp/points?limit={limit}")

    async def referral(self) -> dict[str, Any]:
        return await self._call("GET", "/mp/referral")


@dataclass(frozen=True)
class Delivery:
    """What the server answered to a notification."""

    status: int
    body: str
    id: str  # the transaction_id or refund_id sent


def new_transaction_id() -> str:
    return "4200" + "".join(secrets.choice("0123456789") for _ in range(24))


async def _post(session: aiohttp.ClientSession | None, url: str, headers: dict, body: bytes) -> tuple[int, str]:
    own = session is None
    session = session or aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
    try:
        async with session.post(url, data=body, headers=headers) as resp:
            return resp.status, await resp.text()
    finally:
        if own:
            await session.close()


async def send_payment(*, base: str, openid: str, amount_fen: int, appid: str = SANDBOX_APPID,
                       transaction_id: str | None = None, session: aiohttp.ClientSession | None = None) -> Delivery:
    """Sign a TRANSACTION.SUCCESS notification (payer_total = amount) and POST it to the server."""
    transaction_id = transaction_id or new_transaction_id()
    resource = sim.transaction_resource(openid=openid, transaction_id=transaction_id,
                                        out_trade_no=f"demo{transaction_id[-12:]}", total_fen=amount_fen,
                                        appid=appid)
    headers, body = sim.build_v3_notification(event_type="TRANSACTION.SUCCESS", resource=resource)
    status, text = await _post(session, base.rstrip("/") + "/wechat/pay/notify", headers, body)
    return Delivery(status=status, body=text, id=transaction_id)


async def send_refund(*, base: str, transaction_id: str, amount_fen: int, total_fen: int | None = None,
                      refund_id: str | None = None, session: aiohttp.ClientSession | None = None) -> Delivery:
    """Sign a REFUND.SUCCESS notification for `transaction_id` and POST it to the server."""
    refund_id = refund_id or "5030" + new_transaction_id()[4:]
    resource = sim.refund_resource(transaction_id=transaction_id, out_trade_no=f"demo{transaction_id[-12:]}",
                                   refund_id=refund_id, out_refund_no=f"r{refund_id[-12:]}",
                                   refund_fen=amount_fen, total_fen=total_fen or amount_fen)
    headers, body = sim.build_v3_notification(event_type="REFUND.SUCCESS", resource=resource)
    status, text = await _post(session, base.rstrip("/") + "/wechat/pay/notify", headers, body)
    return Delivery(status=status, body=text, id=refund_id)


def _yuan(fen: int) -> str:
    return f"¥{fen / 100:.2f}"


async def run_demo(*, base: str, openid: str | None = None, appid: str = SANDBOX_APPID,
                   amount_fen: int = 12_800, out: Callable[[str], None] = print) -> int:
    """Log in, activate the card, check in, pay ¥128, and print what the member sees. 0 on success."""
    openid = openid or f"demo-{secrets.token_hex(4)}"
    async with MiniProgramMember(base=base, openid=openid) as member:
        try:
            login = await member.login()
            me = login["member"]
            out(f"Logged in as member #{me['id']} ({'new' if login['is_new'] else 'returning'}), "
                f"openid {openid}, invite code {me['invite_code']}")
            me = await member.activate_card(name="演示会员", phone="13800138000", birthday="1990-05-20")
            out(f"Member card activated for {me['name']} ({me['phone']})")
            try:
                checkin = await member.check_in()
                out(f"Checked in on {checkin['date']}: +{checkin['points_awarded']} points, "
                    f"streak {checkin['streak']} day(s), balance {checkin['balance']}")
            except ApiError as exc:
                out(f"Check-in: {exc.message} ({exc.code})")
            paid = await send_payment(base=base, openid=openid, amount_fen=amount_fen, appid=appid)
            if paid.status >= 300:
                out(f"Payment of {_yuan(amount_fen)} was refused: HTTP {paid.status} {paid.body}")
                return 1
            out(f"Paid {_yuan(amount_fen)} with WeChat Pay (transaction {paid.id}): HTTP {paid.status}")
            me = await member.me()
            line = f"Now: {me.get('tier_name', me['tier'])} ({me['tier']}) · {me['points']} points · growth {me['growth']}"
            if me.get("next_tier"):
                nxt = me["next_tier"]
                line += f" · {nxt['growth_needed']} growth to {nxt['name']}"
            out(line)
            out("Points ledger (newest first):")
            for item in (await member.points())["items"]:
                out(f"  {item['delta']:+6d}  {item['reason']:<10} {item['created_at'][:19]}"
                    + (f"  expires {item['expires_at'][:10]}" if item.get("expires_at") else ""))
        except ApiError as exc:
            out(f"The server said no: {exc}")
            return 1
        except aiohttp.ClientError as exc:
            out(f"Could not reach {base}: {exc}")
            return 2
    return 0
