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

from aiohttp import web

from app import keys
from app.domain import payments
from app.errors import dependency_failed
from app.wechat.pay import (
    PayNotifyError, PayV3Verifier, decrypt_v2_refund, parse_v2_xml, v2_reply, verify_v2,
)

log = logging.getLogger("app.pay")


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
    app = request.app
    settings, now = app[keys.settings_key], clock.now()
    try:
        await payments.on_notification(event_type=note.event_type, resource=note.resource,
                                       redis=app[keys.redis_key], pay=app[keys.pay_client_key],
                                       appid=settings.appid, now=now, tz=settings.tz)
    except payments.MalformedNotification as exc:
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


# -- v2 -----------------------------------------------------------------------------------------

def _v2_key(request: web.Request) -> str | None:
    settings, sandbox = request.app[keys.settings_key], request.app.get(keys.sandbox_key)
    if settings.pay_v2_key:
        return settings.pay_v2_key
    return sandbox.pay_v2_key if sandbox is not None else None  # the simulator's (app/sandbox.py)


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
    except (payments.MalformedNotification, ValueError) as exc:
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
    app, now = request.app, request.app[keys.clock_key].now()
    settings = app[keys.settings_key]
    return await _v2_run(payments.on_v2_payment(params=params, redis=app[keys.redis_key],
                                                pay=app[keys.pay_client_key], appid=settings.appid,
                                                now=now, tz=settings.tz))


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
    return await _v2_run(payments.on_v2_refund(info=info, now=request.app[keys.clock_key].now()))
