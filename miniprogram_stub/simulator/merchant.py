"""WeChat Pay's merchant API, simulated: `POST /v3/pay/transactions/jsapi` (JSAPI 下单),
`POST /v3/pay/transactions/out-trade-no/{out_trade_no}/close` (关闭订单),
`POST /v3/refund/domestic/refunds` (申请退款) and `GET /v3/bill/tradebill` (申请交易账单, served
from the payments and refunds it processed, downloaded from `/v3/billdownload/file`).

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
    # Prepared trade bills by date (YYYY-MM-DD) -> file path, served instead of the processed trades.
    bill_files: dict[str, str] = field(default_factory=dict)

    def refund_succeeded(self, out_refund_no: str, *, now: float | None = None) -> dict[str, Any]:
        """The refund completes (REFUND.SUCCESS): its success time, for the trade bill."""
        answer = self.refunds[out_refund_no]
        answer["status"] = "SUCCESS"
        answer["success_time"] = rfc3339(time.time() if now is None else now)
        return answer

    def trade_bill(self, bill_date: str) -> str:
        """The trade bill (交易账单, bill_type ALL) of one day in China time, in WeChat's CSV form:
        a header, one line per payment and per refund (each value behind a backtick, amounts in
        yuan), then the summary lines."""
        lines = [",".join(BILL_HEADER)]
        total_paid = total_refund = 0
        count = 0
        for order in self.orders.values():
            when = order.get("success_time")
            if order.get("state") != "SUCCESS" or not when or not when.startswith(bill_date):
                continue
            count += 1
            total_paid += order["amount_fen"]
            lines.append(_bill_line(when, order, status="SUCCESS"))
        for refund in self.refunds.values():
            when = refund.get("success_time")
            if not when or not when.startswith(bill_date):
                continue
            order = self.orders.get(refund["out_trade_no"], {})
            count += 1
            total_refund += refund["amount"]["refund"]
            lines.append(_bill_line(when, order, status="REFUND", refund=refund))
        lines.append("总交易单数,应结订单总金额,退款总金额,充值券退款总金额,手续费总金额,订单总金额,申请退款总金额")
        lines.append(f"`{count},`{_yuan(total_paid)},`{_yuan(total_refund)},`0.00,`0.00,`{_yuan(total_paid)},"
                     f"`{_yuan(total_refund)}")
        return "\r\n".join(lines) + "\r\n"

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
        order["success_time"] = rfc3339(now)
        return transaction_resource(openid=order["openid"], transaction_id=order["transaction_id"],
                                    out_trade_no=out_trade_no, total_fen=order["amount_fen"],
                                    payer_total_fen=payer_total_fen, mchid=order["mchid"],
                                    appid=order["appid"], success_time=rfc3339(now))


merchant_state_key = web.AppKey("wechat_merchant_state", MerchantState)

BILL_HEADER = ("交易时间", "公众账号ID", "商户号", "特约商户号", "设备号", "微信订单号", "商户订单号", "用户标识",
               "交易类型", "交易状态", "付款银行", "货币种类", "应结订单金额", "代金券金额", "微信退款单号",
               "商户退款单号", "退款金额", "充值券退款金额", "退款类型", "退款状态", "商品名称", "商户数据包",
               "手续费", "费率", "订单金额", "申请退款金额", "费率备注")


def _yuan(fen: int) -> str:
    return f"{fen // 100}.{fen % 100:02d}"


def _bill_line(when: str, order: dict[str, Any], *, status: str, refund: dict[str, Any] | None = None) -> str:
    moment = when[:19].replace("T", " ")
    refund = refund or {}
    amount = refund.get("amount", {}).get("refund", 0)
    values = [moment, order.get("appid", ""), order.get("mchid", SANDBOX_MCHID), "0", "",
              order.get("transaction_id", refund.get("transaction_id", "")),
              order.get("out_trade_no", refund.get("out_trade_no", "")), order.get("openid", ""), "JSAPI", status,
              "OTHERS", "CNY", _yuan(order.get("amount_fen", 0)), "0.00", refund.get("refund_id", "0"),
              refund.get("out_refund_no", "0"), _yuan(amount), "0.00", "ORIGINAL" if refund else "",
              "SUCCESS" if refund else "", order.get("description", "").replace(",", " "), "", "0.00", "0.60%",
              _yuan(order.get("amount_fen", 0)), _yuan(amount), ""]
    return ",".join("`" + str(v) for v in values)


def pay_error(status: int, code: str, message: str) -> web.Response:
    return web.Response(status=status, content_type="application/json",
                        text=json.dumps({"code": code, "message": message}, ensure_ascii=False))


def add_merchant_routes(app: web.Application) -> None:
    """Mount WeChat Pay's merchant endpoints on the simulator app."""
    app[merchant_state_key] = MerchantState()
    app.router.add_post("/v3/pay/transactions/jsapi", jsapi_order)
    app.router.add_post("/v3/pay/transactions/out-trade-no/{out_trade_no}/close", close_order)
    app.router.add_post("/v3/refund/domestic/refunds", refund)
    app.router.add_get("/v3/bill/tradebill", trade_bill)
    app.router.add_get("/v3/billdownload/file", bill_download)


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
    raw = await _verified(request)
    if isinstance(raw, web.Response):
        return raw
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


async def _verified_get(request: web.Request) -> web.Response | None:
    state = request.app[merchant_state_key]
    try:
        verify_merchant_request(authorization=request.headers.get("Authorization", ""), method="GET",
                                url_path_with_query=request.raw_path, body=b"", mchid=state.mchid)
    except MerchantAuthError as exc:
        return pay_error(401, "SIGN_ERROR", f"签名错误 ({exc.reason})")
    return None


async def trade_bill(request: web.Request) -> web.Response:
    """申请交易账单: the download_url of one day's bill (400 for a bad date)."""
    refused = await _verified_get(request)
    if refused is not None:
        return refused
    bill_date = request.query.get("bill_date", "")
    try:
        datetime.strptime(bill_date, "%Y-%m-%d")
    except ValueError:
        return pay_error(400, "PARAM_ERROR", "bill_date 格式错误")
    url = request.url.with_path("/v3/billdownload/file").with_query({"token": bill_date})
    return web.json_response({"hash_type": "SHA1", "hash_value": "", "download_url": str(url)})


async def bill_download(request: web.Request) -> web.StreamResponse:
    """The bill file itself, streamed (a prepared one from `bill_files`, else the processed trades)."""
    refused = await _verified_get(request)
    if refused is not None:
        return refused
    state = request.app[merchant_state_key]
    bill_date = request.query.get("token", "")
    if bill_date in state.bill_files:
        return web.FileResponse(state.bill_files[bill_date])
    return web.Response(body=state.trade_bill(bill_date).encode(), content_type="text/csv", charset="utf-8")
