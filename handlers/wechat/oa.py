"""`GET/POST /wechat/oa`: the official account's webhook (plain and safe mode).

Before anything is read: the signature, a `timestamp` within 5 minutes of the app's clock, and
a (timestamp, nonce) never seen before (remembered in Redis for the whole window), else 403;
so a signature copied from an access log can be replayed neither later nor at once. With
WECHAT_OA_AES_KEY set a push must come encrypted and its msg_signature must hold (403).

WeChat gives a push 5 seconds, then retries it (3 tries in all, each with a new timestamp,
nonce and signature, but the same MsgId or FromUserName+CreateTime). So a Redis SET NX on the
push's dedup key makes sure a retry never runs a handler twice, and a handler still busy after
`oa_reply_timeout` (4 s) answers `success` now and its reply later as a customer-service message.
Never a 500 to WeChat: a failure is logged and answered `success`; only PostgreSQL or Redis
being down is a 503 (nothing was done, the dedup key is released), so WeChat pushes it again.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging

from aiohttp import web

from app import keys
from app.errors import DomainError, dependency_failed
from app.wechat.oa import (
    MAX_BODY_BYTES, MAX_SKEW_SECONDS, SUCCESS, OACrypto, OAMessage, OAProtocolError, OASignatureError,
    check_signature, fresh_timestamp, parse_message, parse_xml, text_reply,
)
from app.wechat.client import WeChatError
from handlers.wechat.oa_routes import OAContext, router

log = logging.getLogger("app.oa")

DEDUP_TTL = 300
# a (timestamp, nonce) is remembered while its timestamp could still pass the window: a
# timestamp up to 5 minutes ahead stays acceptable until 5 minutes after it
SEEN_TTL = 2 * MAX_SKEW_SECONDS + 60
# how long a retry waits for the first delivery's reply before answering `success`
RETRY_POLL = 0.05


def _token(app: web.Application) -> str | None:
    sandbox = app.get(keys.sandbox_key)  # the simulator's token in sandbox mode (app/sandbox.py)
    return app[keys.settings_key].oa_token or (sandbox.oa_token if sandbox is not None else None)


async def _authentic(request: web.Request) -> None:
    """Refuse (403) a request whose signature is bad, whose timestamp is more than 5 minutes
    from the app's clock, or whose (timestamp, nonce) was seen before; the body is not read."""
    app = request.app
    token = _token(app)
    if token is None:
        raise web.HTTPServiceUnavailable(text="official account token not configured")
    q = request.query
    timestamp, nonce = q.get("timestamp", ""), q.get("nonce", "")
    if not check_signature(token=token, signature=q.get("signature", ""), timestamp=timestamp, nonce=nonce):
        raise web.HTTPForbidden(text="bad signature")
    if not fresh_timestamp(timestamp, now=int(app[keys.clock_key].now().timestamp())):
        raise web.HTTPForbidden(text="stale timestamp")
    if len(nonce) > 64:
        raise web.HTTPForbidden(text="bad nonce")
    # After the signature, so a forger cannot fill this memory; before the body, so a replay
    # is refused unread. GET and POST share it: a logged verification URL is no push either.
    if not await app[keys.redis_key].set(f"oa:seen:{timestamp}:{nonce}", 1, nx=True, ex=SEEN_TTL):
        raise web.HTTPForbidden(text="replayed signature")


async def verify(request: web.Request) -> web.Response:
    """URL verification: echo `echostr` when the signature is good, fresh and new."""
    await _authentic(request)
    return web.Response(text=request.query.get("echostr", ""), content_type="text/plain")


async def receive(request: web.Request) -> web.Response:
    """One push: verify, decrypt (safe mode), parse, deduplicate, route, reply."""
    await _authentic(request)
    settings = request.app[keys.settings_key]
    q = request.query
    encrypted = q.get("encrypt_type", "").lower() == "aes"
    if settings.oa_aes_key and not encrypted:
        # safe mode: a plaintext push is not what WeChat sends, whoever signed its URL
        raise web.HTTPForbidden(text="plaintext push refused in safe mode")
    if (request.content_length or 0) > MAX_BODY_BYTES:
        raise web.HTTPRequestEntityTooLarge(max_size=MAX_BODY_BYTES, actual_size=request.content_length)
    raw = await request.read()
    crypto = None
    try:
        if encrypted:
            crypto = _crypto(request.app)
            raw = crypto.decrypt(raw, q.get("msg_signature", ""), q.get("timestamp", ""), q.get("nonce", ""))
        msg = parse_message(parse_xml(raw))
    except OASignatureError:
        log.warning("refused OA push", extra={"fields": {"reason": "bad msg_signature"}})
        raise web.HTTPForbidden(text="bad msg_signature") from None
    except OAProtocolError as exc:
        log.warning("refused OA push", extra={"fields": {"reason": exc.reason}})
        raise web.HTTPBadRequest(text="malformed push") from None

    try:
        content = await _answer(request.app, msg)
    except Exception as exc:
        if dependency_failed(exc):
            # PostgreSQL or Redis is down: nothing was done, so ask WeChat to push it again.
            log.warning("OA push deferred: %s", type(exc).__name__, extra={"fields": {"dedup": msg.dedup_key}})
            raise web.HTTPServiceUnavailable(text="temporarily unavailable; retry",
                                             headers={"Retry-After": "2"}) from None
        log.exception("OA push failed", extra={"fields": {"dedup": msg.dedup_key}})
        content = None
    if not content:
        return web.Response(text=SUCCESS, content_type="text/plain")
    now = int(request.app[keys.clock_key].now().timestamp())
    reply = text_reply(msg, content, now=now)
    if crypto is not None:
        try:
            reply = crypto.encrypt(reply, q.get("nonce", ""), q.get("timestamp", "") or now)
        except OAProtocolError as exc:
            # the push was handled; only its reply cannot be wrapped (an odd nonce)
            log.warning("OA reply not encrypted", extra={"fields": {"reason": exc.reason}})
            return web.Response(text=SUCCESS, content_type="text/plain")
    return web.Response(text=reply, content_type="application/xml")


def _crypto(app: web.Application) -> OACrypto:
    settings, sandbox = app[keys.settings_key], app.get(keys.sandbox_key)
    if not settings.oa_aes_key:
        raise OAProtocolError("safe mode push but WECHAT_OA_AES_KEY is not set")
    try:
        appid = settings.oa_appid or (sandbox.oa_appid if sandbox is not None else "")
        return OACrypto(_token(app), settings.oa_aes_key, appid)
    except ValueError as exc:
        log.error("WECHAT_OA_AES_KEY is unusable", extra={"fields": {"reason": str(exc)}})
        raise web.HTTPServiceUnavailable(text="safe mode misconfigured") from None


async def _answer(app: web.Application, msg: OAMessage) -> str | None:
    """The reply text for `msg`, running its handler once across WeChat's retries."""
    redis, settings = app[keys.redis_key], app[keys.settings_key]
    key = f"oa:push:{msg.dedup_key}"
    if not await redis.set(key, "running", nx=True, ex=DEDUP_TTL):
        return await _await_first(redis, key, timeout=settings.oa_reply_timeout)

    late = asyncio.Event()  # set once this request has given up waiting
    task = asyncio.create_task(_run(app, msg, late))
    background = app[keys.background_key]
    background.add(task)
    task.add_done_callback(background.discard)
    await asyncio.wait({task}, timeout=settings.oa_reply_timeout)
    if task.done():
        try:
            content = task.result()
        except Exception:
            # A dependency failed (_run re-raises only those): forget this delivery, so that
            # WeChat's retry runs the handler again instead of waiting for this one.
            with contextlib.suppress(Exception):
                await redis.delete(key)
            raise
        await redis.set(key, "done:" + (content or ""), ex=DEDUP_TTL)
        return content
    # _run checks `late` after its handler returns, with no await in between: it either
    # finished before this line (task.done() above) or will see the flag and send the reply.
    late.set()
    await redis.set(key, "late", ex=DEDUP_TTL)
    return None


async def _await_first(redis, key: str, *, timeout: float) -> str | None:
    """A retry: the first delivery's reply if it comes within `timeout`, else nothing."""
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        state = await redis.get(key)
        if state is None or state == "late":
            return None
        if state.startswith("done:"):
            return state[len("done:"):] or None
        if asyncio.get_running_loop().time() >= deadline:
            return None
        await asyncio.sleep(RETRY_POLL)


async def _run(app: web.Application, msg: OAMessage, late: asyncio.Event) -> str | None:
    """Route `msg`; a DomainError is the reply text; if the webhook answered already, the reply
    goes out as a customer-service message."""
    ctx = OAContext(app=app, now=app[keys.clock_key].now())
    try:
        content = await router.dispatch(msg, ctx)
    except DomainError as exc:
        content = exc.message
    except Exception as exc:
        if dependency_failed(exc) and not late.is_set():
            raise  # the webhook answers 503 and WeChat pushes again
        log.exception("OA handler failed", extra={"fields": {"dedup": msg.dedup_key}})
        content = None
    if not late.is_set() or not content:
        return content
    try:
        await app[keys.oa_wechat_key].send_custom_text(openid=msg.from_user, content=content)
    except WeChatError as exc:
        log.warning("late OA reply not delivered", extra={"fields": {"errcode": exc.errcode}})
    return content
