"""`GET/POST /wechat/wecom`: the 企业微信 customer-contact callback (always encrypted).

Order, for both: the timestamp within 5 minutes of our clock, the msg_signature over the
encrypted text (for a push, read from its `<Encrypt>` by the size- and depth-limited parser
that refuses DTDs and entities), then the signature claimed once in Redis (a replay is
refused), and only then is anything decrypted, parsed as an event or processed. A refusal is 403 (400 for a body that is
not WeCom's XML); a failure while processing is logged and answered `success`, never a 500.
"""
from __future__ import annotations

import logging

from aiohttp import web

from app import keys
from app.domain import rules, wecom
from app.wechat.oa import MAX_BODY_BYTES, SUCCESS, OAProtocolError, check_msg_signature, parse_xml
from app.wechat.wecom import WeComCrypto, fresh, parse_event

log = logging.getLogger("app.wecom")

# A signature is remembered a little longer than the timestamp window that could admit it.
REPLAY_TTL = 600


def _crypto(app: web.Application) -> WeComCrypto:
    settings, sandbox = app[keys.settings_key], app.get(keys.sandbox_key)
    token, aes_key, corp = settings.wecom_token, settings.wecom_aes_key, settings.wecom_corp_id
    if sandbox is not None and not (token or aes_key or corp):  # the simulated corp (app/sandbox.py)
        token, aes_key, corp = sandbox.wecom_token, sandbox.wecom_aes_key, sandbox.wecom_corp_id
    if not (token and aes_key and corp) or app.get(keys.wecom_key) is None:
        raise web.HTTPServiceUnavailable(text="wecom not configured")
    try:
        return WeComCrypto(token, aes_key, corp)
    except ValueError as exc:
        log.error("WECOM_AES_KEY is unusable", extra={"fields": {"reason": str(exc)}})
        raise web.HTTPServiceUnavailable(text="wecom misconfigured") from None


def _fresh(request: web.Request) -> None:
    """403 unless the timestamp is within 5 minutes of our clock (checked before the body is read)."""
    if not fresh(request.query.get("timestamp", ""), now=request.app[keys.clock_key].now().timestamp()):
        raise web.HTTPForbidden(text="stale timestamp")


async def _admit(request: web.Request, crypto: WeComCrypto, encrypted: str) -> None:
    """403 unless fresh, signed over `encrypted` and never seen before."""
    _fresh(request)
    q = request.query
    signature, timestamp, nonce = q.get("msg_signature", ""), q.get("timestamp", ""), q.get("nonce", "")
    if not check_msg_signature(token=crypto.token, msg_signature=signature, timestamp=timestamp,
                               nonce=nonce, encrypt=encrypted):
        raise web.HTTPForbidden(text="bad signature")
    claimed = await request.app[keys.redis_key].set(f"wecom:sig:{request.method}:{signature.lower()}", "1",
                                                    nx=True, ex=REPLAY_TTL)
    if not claimed:
        raise web.HTTPForbidden(text="replayed")


async def verify(request: web.Request) -> web.Response:
    """URL verification: the decrypted `echostr`."""
    crypto = _crypto(request.app)
    q = request.query
    echostr = q.get("echostr", "").strip()
    await _admit(request, crypto, echostr)
    try:
        plain = crypto.verify_echostr(echostr, q.get("msg_signature", ""), q.get("timestamp", ""),
                                      q.get("nonce", ""))
    except OAProtocolError:
        raise web.HTTPForbidden(text="bad echostr") from None
    return web.Response(text=plain, content_type="text/plain")


async def receive(request: web.Request) -> web.Response:
    """One customer-contact push: admit, decrypt, parse, apply."""
    crypto = _crypto(request.app)
    _fresh(request)
    if (request.content_length or 0) > MAX_BODY_BYTES:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY_BYTES, actual_size=request.content_length)
    raw = await request.content.read(MAX_BODY_BYTES + 1)
    try:
        encrypted = parse_xml(raw).get("Encrypt", "").strip()
    except OAProtocolError as exc:
        log.warning("refused WeCom push", extra={"fields": {"reason": exc.reason}})
        raise web.HTTPBadRequest(text="malformed push") from None
    await _admit(request, crypto, encrypted)
    q = request.query
    try:
        event = parse_event(parse_xml(crypto.decrypt(encrypted, q.get("msg_signature", ""),
                                                     q.get("timestamp", ""), q.get("nonce", ""))))
    except OAProtocolError as exc:
        log.warning("refused WeCom push", extra={"fields": {"reason": exc.reason}})
        raise web.HTTPBadRequest(text="malformed push") from None
    app = request.app
    try:
        outcome = await wecom.on_event(client=app[keys.wecom_key], rules=await rules.load(), event=event,
                                       now=app[keys.clock_key].now())
        log.info("wecom event", extra={"fields": {"change": event.change_type, "outcome": outcome}})
    except Exception:
        log.exception("WeCom push failed", extra={"fields": {"change": event.change_type}})
    return web.Response(text=SUCCESS, content_type="text/plain")
