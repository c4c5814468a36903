"""A simulated WeChat platform: the mini-program and official-account HTTP APIs the backend calls.

It is a real aiohttp application, so the backend's client talks HTTP to it exactly as it would
to api.weixin.qq.com: errors are HTTP 200 with `{"errcode", "errmsg"}`, success is the API's
own JSON (or a PNG for `getwxacodeunlimit`). Routes under `/_sim/` are the simulator's control
plane (register login, phone and activation codes; read counts) and exist only here.
"""
from __future__ import annotations

import functools
import hashlib
import json
import math
import struct
import time
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from .merchant import add_merchant_routes
from .state import SimulatorState
from .wecom import add_wecom_routes

state_key = web.AppKey("wechat_simulator_state", SimulatorState)

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

LOGIN_FAILURES = {
    45011: "api minute-quota reach limit  mustslower  retry next minute",
    40226: "invalid user, high risk user",
    40029: "invalid code",
}
SCENE_MAX = 32
# The official account's credentials the simulator also accepts (the OA is its own appid).
SANDBOX_OA_APPID = "wx-sandbox-oa"
SANDBOX_OA_SECRET = "sandbox-oa-secret"
SANDBOX_OA_TOKEN = "sandbox-oa-token"  # the official account's callback token in sandbox mode


def create_simulator_app(*, appid: str = "wx-sandbox-mp", secret: str = "sandbox-secret",
                         token_ttl: int = 7200) -> web.Application:
    """Build the simulator for one appid/secret pair; its state lives under `state_key`.

    Access tokens it issues die after `token_ttl` seconds."""
    app = web.Application(middlewares=[outage_middleware])
    app[state_key] = SimulatorState(appid=appid, secret=secret, token_ttl=token_ttl,
                                    other_apps={SANDBOX_OA_APPID: SANDBOX_OA_SECRET})
    app.add_routes([
        web.get("/sns/jscode2session", jscode2session),
        web.get("/cgi-bin/token", token),
        web.post("/cgi-bin/stable_token", stable_token),
        web.post("/cgi-bin/message/subscribe/send", with_token(subscribe_send)),
        web.post("/wxa/getwxacodeunlimit", with_token(getwxacodeunlimit)),
        web.post("/wxa/business/getuserphonenumber", with_token(getuserphonenumber)),
        web.post("/card/membercard/activate", with_token(membercard_activate)),
        web.post("/card/membercard/updateuser", with_token(membercard_updateuser)),
        web.post("/card/membercard/userinfo/get", with_token(membercard_userinfo)),
        web.post("/card/membercard/activatetempinfo/get", with_token(membercard_activatetempinfo)),
        web.post("/wxa/sec/order/upload_shipping_info", with_token(upload_shipping_info)),
        web.post("/cgi-bin/menu/create", with_token(menu_create)),
        web.post("/cgi-bin/message/custom/send", with_token(custom_send)),
        web.get("/cgi-bin/user/info", with_token(user_info)),
        web.post("/_sim/oa-users", sim_oa_users),
        web.post("/_sim/codes", sim_codes),
        web.post("/_sim/phone-codes", sim_phone_codes),
        web.post("/_sim/activate-tickets", sim_activate_tickets),
        web.get("/_sim/state", sim_state),
    ])
    add_merchant_routes(app)
    add_wecom_routes(app)
    return app


def reply(body: dict[str, Any]) -> web.Response:
    # WeChat sends UTF-8 JSON without \u escapes; clients that log replies see readable Chinese.
    return web.Response(text=json.dumps(body, ensure_ascii=False), content_type="application/json")


def error(errcode: int, errmsg: str) -> web.Response:
    return reply({"errcode": errcode, "errmsg": errmsg})


async def read_json(request: web.Request) -> dict[str, Any] | None:
    """The JSON object body, or None when it is not one (WeChat answers 47001 then)."""
    try:
        body = json.loads(await request.read() or b"null")
    except (ValueError, UnicodeDecodeError):
        return None
    return body if isinstance(body, dict) else None


@web.middleware
async def outage_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """While `state.down`, every WeChat endpoint answers HTTP 503.

    `/_sim/` stays up: it is the test's control plane, not WeChat, and a demo needs it to
    watch an outage happen."""
    if request.app[state_key].down and not request.path.startswith("/_sim/"):
        return web.Response(status=503, text="503 Service Temporarily Unavailable")
    return await handler(request)


def with_token(handler: Handler) -> Handler:
    """Wrap an endpoint so it first checks `?access_token=`: 40001 unknown, 42001 expired."""
    @functools.wraps(handler)
    async def checked(request: web.Request) -> web.StreamResponse:
        errcode, errmsg = request.app[state_key].check_token(request.query.get("access_token"))
        if errcode:
            return error(errcode, errmsg)
        return await handler(request)
    return checked


def check_credentials(state: SimulatorState, appid: str | None, secret: str | None) -> web.Response | None:
    if appid in state.other_apps:
        return None if secret == state.other_apps[appid] else error(40125, "invalid appsecret")
    if appid != state.appid:
        return error(40013, "invalid appid")
    if secret != state.secret:
        return error(40125, "invalid appsecret")
    return None


async def jscode2session(request: web.Request) -> web.Response:
    """Exchange a `wx.login` code for openid/session_key; one use per code (`sim:` codes excepted)."""
    state = request.app[state_key]
    q = request.query
    failed = check_credentials(state, q.get("appid"), q.get("secret"))
    if failed:
        return failed
    if q.get("grant_type", "authorization_code") != "authorization_code":
        return error(40002, "invalid grant_type")
    if state.fail_next_login is not None:
        scripted, state.fail_next_login = state.fail_next_login, None
        errcode = int(scripted["errcode"])
        return error(errcode, scripted.get("errmsg") or LOGIN_FAILURES.get(errcode, "system error"))
    found = state.take_code(q.get("js_code", ""))
    if found is None:
        return error(40029, LOGIN_FAILURES[40029])
    openid, unionid = found
    session_key = hashlib.sha256(f"{openid}:{time.time_ns()}".encode()).digest()[:16].hex()
    state.logins.append({"openid": openid, "unionid": unionid})
    body: dict[str, Any] = {"openid": openid, "session_key": session_key}
    if unionid:
        body["unionid"] = unionid
    return reply(body)


async def token(request: web.Request) -> web.Response:
    """Legacy `/cgi-bin/token`: every call issues a new token."""
    state = request.app[state_key]
    q = request.query
    if q.get("grant_type") != "client_credential":
        return error(40002, "invalid grant_type")
    failed = check_credentials(state, q.get("appid"), q.get("secret"))
    if failed:
        return failed
    issued = state.fetch_token(reuse=False)
    return reply({"access_token": issued.value, "expires_in": state.token_ttl})


async def stable_token(request: web.Request) -> web.Response:
    """`/cgi-bin/stable_token`: the same token while it lives, unless `force_refresh`."""
    state = request.app[state_key]
    body = await read_json(request)
    if body is None:
        return error(47001, "data format error")
    if body.get("grant_type") != "client_credential":
        return error(40002, "invalid grant_type")
    failed = check_credentials(state, body.get("appid"), body.get("secret"))
    if failed:
        return failed
    issued = state.fetch_token(reuse=not body.get("force_refresh"))
    remaining = max(1, math.ceil(issued.expires_at - time.monotonic()))
    return reply({"access_token": issued.value, "expires_in": remaining})


async def subscribe_send(request: web.Request) -> web.Response:
    """Record a subscription message; 43101 when the member has no quota for that template."""
    state = request.app[state_key]
    body = await read_json(request)
    if body is None or not body.get("touser") or not body.get("template_id") \
            or not isinstance(body.get("data"), dict):
        return error(47001, "data format error")
    if (body["touser"], body["template_id"]) in state.no_quota:
        return error(43101, "user refuse to accept the msg")
    state.messages.append(body)
    return reply({"errcode": 0, "errmsg": "ok", "msgid": len(state.messages)})


async def getwxacodeunlimit(request: web.Request) -> web.Response:
    """A real PNG whose pattern derives from the scene; scenes over 32 characters are 40169."""
    state = request.app[state_key]
    body = await read_json(request)
    if body is None or not isinstance(body.get("scene"), str) or not body["scene"]:
        return error(47001, "data format error")
    scene = body["scene"]
    if len(scene) > SCENE_MAX:
        return error(40169, "invalid length for scene, or the data is not json string")
    try:
        width = int(body.get("width", 430))
    except (TypeError, ValueError):
        return error(47001, "data format error")
    # WeChat clamps the width to 280..1280 rather than refusing it.
    width = min(max(width, 280), 1280)
    state.wxacodes.append({"scene": scene, "page": body.get("page"), "width": width})
    return web.Response(body=render_png(f"{body.get('page') or ''}?{scene}", width),
                        content_type="image/png")


def render_png(seed: str, size: int, modules: int = 21) -> bytes:
    """A `size`×`size` greyscale PNG of a `modules`×`modules` grid of dark and light cells
    chosen by the SHA-256 stream of `seed`, with a light quiet zone, so equal seeds give
    equal images and different scenes visibly differ."""
    grid = modules + 2  # one quiet-zone cell on each side
    bits = ""
    counter = 0
    while len(bits) < modules * modules:
        digest = hashlib.sha256(f"{seed}#{counter}".encode()).digest()
        bits += "".join(f"{byte:08b}" for byte in digest)
        counter += 1
    cell_of = [x * grid // size for x in range(size)]

    def row_for(cell_row: int) -> bytes:
        dark = [False] * grid
        if 1 <= cell_row <= modules:
            for c in range(modules):
                dark[c + 1] = bits[(cell_row - 1) * modules + c] == "1"
        # Filter byte 0 (None) before each scanline.
        return b"\x00" + bytes(0 if dark[cell] else 255 for cell in cell_of)

    rows = {r: row_for(r) for r in range(grid)}
    raw = b"".join(rows[cell_of[y]] for y in range(size))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", size, size, 8, 0, 0, 0, 0)  # 8-bit greyscale
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw, 9)) \
        + chunk(b"IEND", b"")


async def getuserphonenumber(request: web.Request) -> web.Response:
    """Resolve a `getPhoneNumber` code to a mainland number; unknown or reused codes are 40029."""
    state = request.app[state_key]
    body = await read_json(request)
    if body is None or not isinstance(body.get("code"), str):
        return error(47001, "data format error")
    phone = state.take_phone_code(body["code"])
    if phone is None:
        return error(40029, "invalid code")
    return reply({"errcode": 0, "errmsg": "ok", "phone_info": {
        "phoneNumber": phone, "purePhoneNumber": phone, "countryCode": "86",
        "watermark": {"timestamp": int(time.time()), "appid": state.appid},
    }})


async def membercard_activate(request: web.Request) -> web.Response:
    """Record a member-card activation; `membership_number` and `code` are required."""
    state = request.app[state_key]
    body = await read_json(request)
    if body is None or not body.get("membership_number") or not body.get("code"):
        return error(47001, "data format error")
    state.card_activations.append(body)
    state.card_bonus[body["code"]] = int(body.get("init_bonus") or 0)
    return reply({"errcode": 0, "errmsg": "ok"})


async def membercard_updateuser(request: web.Request) -> web.Response:
    """Record a bonus change: `bonus` sets the balance outright, else `add_bonus` is added; a
    stored-value `balance` (fen) is set outright with its `record_balance`."""
    state = request.app[state_key]
    body = await read_json(request)
    if body is None or not body.get("code") or not body.get("card_id"):
        return error(47001, "data format error")
    code = body["code"]
    try:
        if body.get("balance") is not None:
            state.card_balance[code] = int(body["balance"])
        if body.get("bonus") is not None:
            balance = int(body["bonus"])
        else:
            balance = state.card_bonus.get(code, 0) + int(body.get("add_bonus") or 0)
    except (TypeError, ValueError):
        return error(47001, "data format error")
    state.card_bonus[code] = balance
    state.card_updates.append(body)
    activation = next((a for a in reversed(state.card_activations) if a.get("code") == code), {})
    return reply({"errcode": 0, "errmsg": "ok", "result_bonus": balance,
                  "result_balance": state.card_balance.get(code, 0),
                  "openid": activation.get("openid", f"card-holder-{code}")})


async def membercard_userinfo(request: web.Request) -> web.Response:
    """What a card shows: its current `bonus` (after activation and every update); an unknown
    `code` is WeChat's 40056 invalid serial code."""
    state = request.app[state_key]
    body = await read_json(request)
    if body is None or not body.get("code") or not body.get("card_id"):
        return error(47001, "data format error")
    code = body["code"]
    activation = next((a for a in reversed(state.card_activations) if a.get("code") == code), None)
    if activation is None and code not in state.card_bonus:
        return error(40056, "invalid serial code")
    activation = activation or {}
    return reply({"errcode": 0, "errmsg": "ok", "openid": activation.get("openid", f"card-holder-{code}"),
                  "membership_number": activation.get("membership_number", ""),
                  "bonus": state.card_bonus.get(code, 0), "balance": 0,
                  "user_card_status": "NORMAL", "has_active": True})


async def upload_shipping_info(request: web.Request) -> web.Response:
    """Record shipping information of a paid order: order_key (transaction_id or mchid +
    out_trade_no), logistics_type (3: virtual goods, no shipping_list tracking), payer.openid."""
    state = request.app[state_key]
    body = await read_json(request)
    if body is None or not isinstance(body.get("order_key"), dict) or body.get("logistics_type") not in (1, 2, 3, 4) \
            or not (body.get("payer") or {}).get("openid") or not body.get("shipping_list"):
        return error(47001, "data format error")
    state.shipping_uploads.append(body)
    return reply({"errcode": 0, "errmsg": "ok"})


async def membercard_activatetempinfo(request: web.Request) -> web.Response:
    """The form a member filled on WeChat's one-click activation page, by `activate_ticket`."""
    state = request.app[state_key]
    body = await read_json(request)
    if body is None or not body.get("activate_ticket"):
        return error(47001, "data format error")
    info = state.activate_tickets.get(body["activate_ticket"])
    if info is None:
        return error(40029, "invalid activate_ticket")
    fields = [
        {"name": "USER_FORM_INFO_FLAG_MOBILE", "value": info.get("phone", "")},
        {"name": "USER_FORM_INFO_FLAG_NAME", "value": info.get("name", "")},
        {"name": "USER_FORM_INFO_FLAG_BIRTHDAY", "value": info.get("birthday", "")},
    ]
    return reply({"errcode": 0, "errmsg": "ok", "info": {"common_field_list": fields}})


async def menu_create(request: web.Request) -> web.Response:
    """Replace the official account's menu; a body without a `button` list is 47001."""
    state = request.app[state_key]
    body = await read_json(request)
    if body is None or not isinstance(body.get("button"), list):
        return error(47001, "data format error")
    state.menu = body
    return reply({"errcode": 0, "errmsg": "ok"})


async def custom_send(request: web.Request) -> web.Response:
    """Record a customer-service message (`touser`, `msgtype`, and the message itself)."""
    state = request.app[state_key]
    body = await read_json(request)
    if body is None or not body.get("touser") or not body.get("msgtype"):
        return error(47001, "data format error")
    state.custom_messages.append(body)
    return reply({"errcode": 0, "errmsg": "ok"})


async def user_info(request: web.Request) -> web.Response:
    """`/cgi-bin/user/info`: a follower registered through `/_sim/oa-users`, else 40003."""
    state = request.app[state_key]
    state.user_info_calls += 1
    openid = request.query.get("openid", "")
    if openid not in state.oa_users:
        return error(40003, "invalid openid")
    body: dict[str, Any] = {"subscribe": 1, "openid": openid, "language": "zh_CN",
                            "subscribe_time": int(time.time())}
    if state.oa_users[openid]:
        body["unionid"] = state.oa_users[openid]
    return reply(body)


async def sim_oa_users(request: web.Request) -> web.Response:
    """Control plane: register an official-account follower `oa_openid` (and its `unionid`)."""
    body = await read_json(request)
    if body is None or not isinstance(body.get("oa_openid"), str) or not body["oa_openid"]:
        return web.json_response({"error": "oa_openid required"}, status=400)
    unionid = body.get("unionid")
    request.app[state_key].oa_users[body["oa_openid"]] = unionid if isinstance(unionid, str) else None
    return web.json_response({"oa_openid": body["oa_openid"], "unionid": unionid})


async def sim_codes(request: web.Request) -> web.Response:
    """Control plane: register a one-use login code for `openid` (and optional `unionid`)."""
    body = await read_json(request)
    if body is None or not isinstance(body.get("openid"), str) or not body["openid"]:
        return web.json_response({"error": "openid required"}, status=400)
    code = request.app[state_key].new_code(body["openid"], body.get("unionid"))
    return web.json_response({"code": code})


async def sim_phone_codes(request: web.Request) -> web.Response:
    """Control plane: register a one-use phone-number code for an 11-digit `phone`."""
    body = await read_json(request)
    phone = body.get("phone") if body else None
    if not isinstance(phone, str) or len(phone) != 11 or not phone.isdigit():
        return web.json_response({"error": "phone must be 11 digits"}, status=400)
    return web.json_response({"code": request.app[state_key].new_phone_code(phone)})


async def sim_activate_tickets(request: web.Request) -> web.Response:
    """Control plane: register a card activation form (`name`, `phone`, `birthday`)."""
    body = await read_json(request)
    if body is None:
        return web.json_response({"error": "JSON object required"}, status=400)
    info = {k: str(body.get(k, "")) for k in ("name", "phone", "birthday")}
    return web.json_response({"activate_ticket": request.app[state_key].new_activate_ticket(info)})


async def sim_state(request: web.Request) -> web.Response:
    """Control plane: counts of what the simulator holds and has received."""
    state = request.app[state_key]
    return web.json_response({**state.counts(), "down": state.down})
