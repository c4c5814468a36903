"""WeChat Pay's merchant API, simulated: `POST /v3/pay/transactions/jsapi` (JSAPI 下单).

The merchant's Authorization header is checked as WeChat checks it (pay.verify_merchant_request:
the sandbox merchant serial, SANDBOX_MCHID, RSA-SHA256 over the request); errors are WeChat
Pay's shape, HTTP 4xx with `{"code", "message"}`. Every order placed is kept in `MerchantState`
under `merchant_state_key` on the simulator app, for tests and the demo to pay it.
"""
from __future__ import annotations

import json
import secrets
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from .pay import SANDBOX_MCHID, MerchantAuthError, verify_merchant_request


@dataclass
class MerchantState:
    """Orders by out_trade_no, and a scripted failure for the next order."""

    mchid: str = SANDBOX_MCHID
    orders: dict[str, dict[str, Any]] = field(default_factory=dict)
    fail_next_order: dict[str, Any] | None = None  # {"status": 400, "code": ..., "message": ...}


merchant_state_key = web.AppKey("wechat_merchant_state", MerchantState)


def pay_error(status: int, code: str, message: str) -> web.Response:
    return web.Response(status=status, content_type="application/json",
                        text=json.dumps({"code": code, "message": message}, ensure_ascii=False))


def add_merchant_routes(app: web.Application) -> None:
    """Mount WeChat Pay's merchant endpoints on the simulator app."""
    app[merchant_state_key] = MerchantState()
    app.router.add_post("/v3/pay/transactions/jsapi", jsapi_order)


async def jsapi_order(request: web.Request) -> web.Response:
    """Place a JSAPI order: signed by the merchant, all fields present, amount > 0; the same
    out_trade_no again answers the same prepay_id if the order is the same, else 400."""
    state = request.app[merchant_state_key]
    raw = await request.read()
    try:
        verify_merchant_request(authorization=request.headers.get("Authorization", ""), method="POST",
                                url_path_with_query=request.path_qs, body=raw, mchid=state.mchid)
    except MerchantAuthError as exc:
        return pay_error(401, "SIGN_ERROR", f"签名错误 ({exc.reason})")
    if state.fail_next_order is not None:
        scripted, state.fail_next_order = state.fail_next_order, None
        return pay_error(int(scripted.get("status", 400)), scripted.get("code", "SYSTEM_ERROR"),
                         scripted.get("message", "系统错误"))
    try:
        body = json.loads(raw)
        amount = int(body["amount"]["total"])
        order = {
            "appid": str(body["appid"]), "mchid": str(body["mchid"]),
            "description": str(body["description"]), "out_trade_no": str(body["out_trade_no"]),
            "notify_url": str(body["notify_url"]), "amount_fen": amount,
            "openid": str(body["payer"]["openid"]),
        }
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return pay_error(400, "PARAM_ERROR", "参数错误")
    if amount <= 0 or not order["out_trade_no"] or not order["openid"]:
        return pay_error(400, "PARAM_ERROR", "参数错误")
    if order["mchid"] != state.mchid:
        return pay_error(400, "MCH_NOT_EXISTS", "商户号不存在")
    known = state.orders.get(order["out_trade_no"])
    if known is not None:
        if {k: known[k] for k in order} != order:
            return pay_error(400, "OUT_TRADE_NO_USED", "商户订单号重复")
        return web.json_response({"prepay_id": known["prepay_id"]})
    order["prepay_id"] = "wx" + secrets.token_hex(16)
    order["state"] = "NOTPAY"
    state.orders[order["out_trade_no"]] = order
    return web.json_response({"prepay_id": order["prepay_id"]})
