"""WeChat Pay notifications: APIv3 JSON (`/wechat/pay/notify`) and the v2 XML forms.

APIv3 answers: 204 when recorded (or a repeat, or an event we do not act on); 401
`{"code": "FAIL", "message"}` for a failed check, nothing stored; 400 for a signed body that
is not the shape WeChat sends; 413 over 64 KiB; 500 for a retryable failure (a refund before
its payment: WeChat retries any non-2xx); 503 `pay_not_configured`; 503 with Retry-After when
PostgreSQL or Redis is down or too slow (nothing recorded; the retry applies it).

v2 answers are WeChat's `<xml><return_code>` replies: SUCCESS with HTTP 200; FAIL with HTTP 400
for a bad sign or malformed XML (nothing stored; WeChat only reads return_code, the status is for
our own logs and monitors), 500 for a retryable failure, 503 when not configured or when
PostgreSQL or Redis is down.
"""
from __future__ import annotations

import logging
from datetime import datetime, timedelta, timezone
from typing import Any

from aiohttp import web

from app import keys
from app.domain import payments, recharges, rewards, rules
from app.errors import dependency_failed
from app.wechat.pay import (
    PayNotifyError, PayV3Verifier, decrypt_v2_refund, parse_v2_xml, v2_reply, verify_v2,
)

log = logging.getLogger("app.pay")

_CHINA = timezone(timedelta(hours=8))


class BadResource(Exception):
    """A verified notification whose decrypted resource lacks what we need."""


def _fail(status: int, message: str) -> web.Response:
    return web.json_response({"code": "FAIL", "message": message}, status=status)


async def notify(request: web.Request) -> web.StreamResponse:
    verifier: PayV3Verifier | None = request.app[keys.pay_verifier_key]
    if verifier is None:
        return _fail(503, "pay_not_configured")
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return _fail(413, "body too large")
    clock = request.app[keys.clock_key]
    try:
        # RSA-2048 verification is ~50 µs of CPU: cheaper inline than a thread hop (bench/pay_notify.py).
        note = verifier.parse_notification(headers=request.headers, body=body, now=clock.now().timestamp())
    except PayNotifyError as exc:
        log.warning("pay notify refused: %s", exc.reason)
        return _fail(400 if exc.reason == "malformed" else 401, exc.reason)
    # A verified delivery seen before (WeChat's retry, or ours whose answer was lost) is applied
    # again: transaction_id and refund_id make that change nothing, and answering it 2xx stops
    # WeChat retrying. Refusing the nonce instead kept WeChat retrying for a day.
    try:
        await _apply(request, note.event_type, note.resource)
    except BadResource as exc:
        return _fail(400, f"malformed resource: {exc}")
    except payments.PaymentNotRecorded as exc:
        log.info("pay notify: %s", exc.message)
        return _fail(500, "payment not yet recorded")
    except Exception as exc:
        if dependency_failed(exc):
            return _unavailable(exc)
        log.exception("pay notify failed")
        return _fail(500, "internal error; retry")
    return web.Response(status=204)


def _unavailable(exc: BaseException) -> web.Response:
    """PostgreSQL or Redis is down or too slow: nothing was recorded; WeChat retries a 503."""
    log.warning("pay notify deferred: %s: %s", type(exc).__name__, exc)
    response = _fail(503, "unavailable; retry")
    response.headers["Retry-After"] = "2"
    return response


async def _apply(request: web.Request, event_type: str, resource: dict[str, Any]) -> None:
    app = request.app
    settings, now = app[keys.settings_key], app[keys.clock_key].now()
    if event_type == "TRANSACTION.SUCCESS":
        if resource.get("trade_state", "SUCCESS") != "SUCCESS":
            log.info("pay notify: trade_state %s ignored", resource.get("trade_state"))
            return
        if resource.get("appid") not in (None, settings.appid):
            log.warning("pay notify: payment for another appid ignored")
            return
        amount = _dict(resource, "amount")
        await payments.record_payment(
            redis=app[keys.redis_key], rules=await rules.load(), appid=settings.appid,
            transaction_id=_text(resource, "transaction_id"), out_trade_no=_text(resource, "out_trade_no", ""),
            openid=_text(_dict(resource, "payer"), "openid"), total_fen=_fen(amount, "total"),
            payer_total_fen=_fen(amount, "payer_total", amount.get("total")),
            paid_at=_rfc3339(resource.get("success_time"), now), now=now, tz=settings.tz)
        await _redemption_paid(app, resource.get("out_trade_no"), resource.get("transaction_id"), now)
        if str(resource.get("out_trade_no", "")).startswith("rc"):  # a stored-value recharge
            await recharges.on_paid(out_trade_no=resource["out_trade_no"], transaction_id=resource["transaction_id"],
                                    mchid=str(resource.get("mchid", "")),
                                    paid_at=_rfc3339(resource.get("success_time"), now), now=now)
    elif event_type == "REFUND.SUCCESS":
        if resource.get("refund_status", "SUCCESS") != "SUCCESS":
            return
        amount = _dict(resource, "amount")
        await payments.record_refund(
            rules=await rules.load(), refund_id=_text(resource, "refund_id"),
            transaction_id=_text(resource, "transaction_id"),
            refund_fen=_fen(amount, "payer_refund", amount.get("refund")), now=now)
        if str(resource.get("out_trade_no", "")).startswith("rc"):  # a recharge: its stored value goes
            await recharges.on_refunded(out_trade_no=resource["out_trade_no"], refund_id=resource["refund_id"],
                                        refund_fen=_fen(amount, "refund"), now=now)
    else:
        log.info("pay notify: event %s acknowledged, not acted on", event_type)


async def _redemption_paid(app: web.Application, out_trade_no: Any, transaction_id: Any, now: datetime) -> None:
    # "rd…" orders are points-mall redemptions (app/domain/rewards.py): the payment completes them,
    # once (on_paid is conditional), and a retried notification completes one a failure left pending;
    # one that arrives after the hold was released is refunded.
    if isinstance(out_trade_no, str) and out_trade_no.startswith("rd"):
        await rewards.on_paid(out_trade_no=out_trade_no, transaction_id=str(transaction_id), now=now,
                              pay=app[keys.pay_client_key])


def _dict(data: dict, name: str) -> dict:
    value = data.get(name)
    if not isinstance(value, dict):
        raise BadResource(f"{name} is not an object")
    return value


def _text(data: dict, name: str, default: str | None = None) -> str:
    value = data.get(name, default)
    if not isinstance(value, str) or (default is None and not value) or len(value) > 64:
        raise BadResource(f"{name} is not a string of 1-64 characters")
    return value


def _fen(data: dict, name: str, default: Any = None) -> int:
    value = data.get(name, default)
    if isinstance(value, str) and value.isdigit() and len(value) < 16:
        value = int(value)
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 10**13:
        raise BadResource(f"{name} is not an amount in fen")
    return value


def _rfc3339(value: Any, default: datetime) -> datetime:
    if value is None:
        return default
    try:
        moment = datetime.fromisoformat(value)
    except (TypeError, ValueError):
        raise BadResource("success_time is not RFC 3339") from None
    return moment if moment.tzinfo else moment.replace(tzinfo=_CHINA)


# -- v2 -----------------------------------------------------------------------------------------

def _v2_key(request: web.Request) -> str | None:
    settings = request.app[keys.settings_key]
    if settings.pay_v2_key:
        return settings.pay_v2_key
    if settings.sandbox:
        from miniprogram_stub.simulator.pay import SANDBOX_V2_KEY

        return SANDBOX_V2_KEY
    return None


def _xml(ok: bool, message: str, status: int) -> web.Response:
    return web.Response(text=v2_reply(ok, message), status=status, content_type="application/xml")


async def _v2_params(request: web.Request) -> tuple[str, dict[str, str]] | web.Response:
    key = _v2_key(request)
    if key is None:
        return _xml(False, "pay_not_configured", 503)
    try:
        body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        return _xml(False, "body too large", 413)
    try:
        return key, parse_v2_xml(body)
    except PayNotifyError as exc:
        return _xml(False, exc.reason, 400)


async def _v2_run(call) -> web.Response:
    try:
        await call
    except (BadResource, ValueError) as exc:
        return _xml(False, f"malformed: {exc}", 400)
    except payments.PaymentNotRecorded:
        return _xml(False, "payment not yet recorded", 500)
    except Exception as exc:
        if dependency_failed(exc):
            log.warning("v2 pay notify deferred: %s: %s", type(exc).__name__, exc)
            response = _xml(False, "unavailable; retry", 503)
            response.headers["Retry-After"] = "2"
            return response
        log.exception("v2 pay notify failed")
        return _xml(False, "internal error; retry", 500)
    return _xml(True, "OK", 200)


async def notify_v2(request: web.Request) -> web.Response:
    parsed = await _v2_params(request)
    if isinstance(parsed, web.Response):
        return parsed
    key, params = parsed
    if params.get("return_code") != "SUCCESS":
        return _xml(True, "OK", 200)  # a communication notice: nothing signed, nothing to record
    try:
        verify_v2(params, key)
    except PayNotifyError as exc:
        log.warning("v2 pay notify refused: %s", exc.reason)
        return _xml(False, exc.reason, 400)
    if params.get("result_code") != "SUCCESS":
        return _xml(True, "OK", 200)  # a failed payment: nothing to award
    settings, now = request.app[keys.settings_key], request.app[keys.clock_key].now()
    if params.get("appid") not in (None, settings.appid):
        return _xml(True, "OK", 200)

    async def record() -> None:
        total = _fen(params, "total_fee")
        await payments.record_payment(
            redis=request.app[keys.redis_key], rules=await rules.load(), appid=settings.appid,
            transaction_id=_text(params, "transaction_id"), out_trade_no=_text(params, "out_trade_no", ""),
            openid=_text(params, "openid"), total_fen=total, payer_total_fen=_fen(params, "cash_fee", total),
            paid_at=_time_end(params.get("time_end"), now), now=now, tz=settings.tz, source="v2")
        await _redemption_paid(request.app, params.get("out_trade_no"), params.get("transaction_id"), now)

    return await _v2_run(record())


async def refund_notify_v2(request: web.Request) -> web.Response:
    parsed = await _v2_params(request)
    if isinstance(parsed, web.Response):
        return parsed
    key, params = parsed
    if params.get("return_code") != "SUCCESS":
        return _xml(True, "OK", 200)
    try:
        # Refund notifications carry no sign: req_info's encryption with our key is the proof.
        info = decrypt_v2_refund(params.get("req_info", ""), key)
    except PayNotifyError as exc:
        log.warning("v2 refund notify refused: %s", exc.reason)
        return _xml(False, exc.reason, 400)
    if info.get("refund_status") != "SUCCESS":
        return _xml(True, "OK", 200)
    now = request.app[keys.clock_key].now()

    async def record() -> None:
        await payments.record_refund(
            rules=await rules.load(), refund_id=_text(info, "refund_id"),
            transaction_id=_text(info, "transaction_id"), refund_fen=_fen(info, "refund_fee"), now=now,
            against_total=True)  # refund_fee is a share of total_fee, not of cash_fee

    return await _v2_run(record())


def _time_end(value: Any, default: datetime) -> datetime:
    if not value:
        return default
    try:
        return datetime.strptime(value, "%Y%m%d%H%M%S").replace(tzinfo=_CHINA)
    except (TypeError, ValueError):
        raise BadResource("time_end is not yyyyMMddHHmmss") from None
