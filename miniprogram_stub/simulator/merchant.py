"""WeChat Pay's merchant API, simulated: `POST /v3/pay/transactions/jsapi` (JSAPI 下单),
`POST /v3/pay/transactions/out-trade-no/{out_trade_no}/close` (关闭订单) and
`POST /v3/refund/domestic/refunds` (申请退款).

The merchant's Authorization header is checked as WeChat checks it (pay.verify_merchant_request:
the sandbox merchant serial, SANDBOX_MCHID, RSA-SHA256 over the request); errors are WeChat
Pay's shape, HTTP 4xx with `{"code", "message"}`. Every order placed is kept in `MerchantState`
under `merchant_state_key` on the simulator app, for tests and the demo to pay it
(`MerchantState.pay`: refused for a closed, expired or paid order, as WeChat refuses it).
"""
from __future__ import annotations

import json
import secrets
import time
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from aiohttp import web

from .pay import SANDBOX_MCHID, MerchantAuthError, rfc3339, transaction_resource, verify_merchant_request


class OrderNotPayable(Exception):
    """The payer cannot pay this order: `reason` is ORDER_CLOSED, ORDER_EXPIRED, ORDERPAID or ORDER_NOT_EXIST."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class MerchantState:
    """Orders by out_trade_no, and a scripted failure for the next order."""

    mchid: str = SANDBOX_MCHID
    orders: dict[str, dict[str, Any]] = field(default_factory=dict)
    fail_next_order: dict[str, Any] | None = None  # {"status": 400, "code": ..., "message": ...}
    # Refunds by out_refund_no, and the close requests received (out_trade_no each).
    refunds: dict[str, dict[str, Any]] = field(default_factory=dict)
    closes: list[str] = field(default_factory=list)
    fail_next_refund: dict[str, Any] | None = None

    def pay(self, out_trade_no: str, *, now: float | None = None, transaction_id: str | None = None,
            payer_total_fen: int | None = None) -> dict[str, Any]:
        """The payer pays the order: SUCCESS, and the TRANSACTION.SUCCESS resource WeChat would
        notify. A closed, expired (past time_expire) or already paid order is refused."""
        order = self.orders.get(out_trade_no)
        if order is None:
            raise OrderNotPayable("ORDER_NOT_EXIST")
        if order["state"] == "CLOSED":
            raise OrderNotPayable("ORDER_CLOSED")
        if order["state"] == "SUCCESS":
            raise OrderNotPayable("ORDERPAID")
        now = time.time() if now is None else now
        if order.get("time_expire") and datetime.fromisoformat(order["time_expire"]).timestamp() <= now:
            raise OrderNotPayable("ORDER_EXPIRED")
        order["state"] = "SUCCESS"
        order["transaction_id"] = transaction_id or "4200" + secrets.token_hex(12)
        return transaction_resource(openid=order["openid"], transaction_id=order["transaction_id"],
                                    out_trade_no=out_trade_no, total_fen=order["amount_fen"],
                                    payer_total_fen=payer_total_fen, mchid=order["mchid"],
                                    appid=order["appid"], success_time=rfc3339(now))


merchant_state_key = web.AppKey("wechat_merchant_state", MerchantState)


def pay_error(status: int, code: str, message: str) -> web.Response:
    return web.Response(status=status, content_type="application/json",
                        text=json.dumps({"code": code, "message": message}, ensure_ascii=False))


def add_merchant_routes(app: web.Application) -> None:
    """Mount WeChat Pay's merchant endpoints on the simulator app."""
    app[merchant_state_key] = MerchantState()
    app.router.add_post("/v3/pay/transactions/jsapi", jsapi_order)
    app.router.add_post("/v3/pay/transactions/out-trade-no/{out_trade_no}/close", close_order)
    app.router.add_post("/v3/refund/domestic/refunds", refund)


async def _verified(request: web.Request) -> bytes | web.Response:
    state = request.app[merchant_state_key]
    raw = await request.read()
    try:
        verify_merchant_request(authorization=request.headers.get("Authorization", ""), method="POST",
                                url_path_with_query=request.raw_path, body=raw, mchid=state.mchid)
    except MerchantAuthError as exc:
        return pay_error(401, "SIGN_ERROR", f"签名错误 ({exc.reason})")
    return raw


async def close_order(request: web.Request) -> web.Response:
    """Close an unpaid order (204): its payment is refused from then on. A paid order: 400 ORDERPAID."""
    state = request.app[merchant_state_key]
    raw = await _verified(request)
    if isinstance(raw, web.Response):
        return raw
    try:
        if str(json.loads(raw)["mchid"]) != state.mchid:
            return pay_error(400, "MCH_NOT_EXISTS", "商户号不存在")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return pay_error(400, "PARAM_ERROR", "参数错误")
    out_trade_no = request.match_info["out_trade_no"]
    state.closes.append(out_trade_no)
    order = state.orders.get(out_trade_no)
    if order is None:
        return pay_error(404, "ORDER_NOT_EXIST", "订单不存在")
    if order["state"] == "SUCCESS":
        return pay_error(400, "ORDERPAID", "订单已支付")
    order["state"] = "CLOSED"
    return web.Response(status=204)


async def refund(request: web.Request) -> web.Response:
    """Refund (part of) a paid order, once per out_refund_no (the same again answers the same
    refund); refunds of an order never exceed what was paid (400 NOT_ENOUGH)."""
    state = request.app[merchant_state_key]
    raw = await _verified(request)
    if isinstance(raw, web.Response):
        return raw
    if state.fail_next_refund is not None:
        scripted, state.fail_next_refund = state.fail_next_refund, None
        return pay_error(int(scripted.get("status", 500)), scripted.get("code", "SYSTEM_ERROR"),
                         scripted.get("message", "系统错误"))
    try:
        body = json.loads(raw)
        out_refund_no = str(body["out_refund_no"])
        amount, total = int(body["amount"]["refund"]), int(body["amount"]["total"])
        transaction_id, out_trade_no = body.get("transaction_id"), body.get("out_trade_no")
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        return pay_error(400, "PARAM_ERROR", "参数错误")
    known = state.refunds.get(out_refund_no)
    if known is not None:
        return web.json_response(known)
    order = next((o for o in state.orders.values()
                  if o.get("state") == "SUCCESS" and (o.get("transaction_id") == transaction_id
                                                       or o["out_trade_no"] == out_trade_no)), None)
    if order is None:
        return pay_error(404, "RESOURCE_NOT_EXISTS", "订单不存在")
    refunded = sum(r["amount"]["refund"] for r in state.refunds.values()
                   if r["out_trade_no"] == order["out_trade_no"])
    if amount <= 0 or total != order["amount_fen"] or refunded + amount > total:
        return pay_error(400, "NOT_ENOUGH" if refunded + amount > total else "PARAM_ERROR", "退款金额错误")
    answer = {"refund_id": "5030" + secrets.token_hex(12), "out_refund_no": out_refund_no,
              "transaction_id": order["transaction_id"], "out_trade_no": order["out_trade_no"],
              "status": "PROCESSING", "amount": {"refund": amount, "total": total, "currency": "CNY"}}
    state.refunds[out_refund_no] = answer
    return web.json_response(answer)


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
            "time_expire": str(body["time_expire"]) if body.get("time_expire") else None,
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
