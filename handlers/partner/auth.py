"""The brand's systems sign every /partner request (CONTRACT.md): `X-Partner-Timestamp` (unix
seconds, within 5 minutes of our clock) and `X-Partner-Signature`, the hex HMAC-SHA256 with
PARTNER_API_KEY over `timestamp + "\\n" + raw body`. A signature is accepted once (a replay is
refused). Any failure is 401 before the body is parsed, so nothing is stored; unset key: 503."""
from __future__ import annotations

import hashlib
import hmac

from aiohttp import web

from app import keys, metrics
from app.errors import Unauthenticated, Unavailable

WINDOW_SECONDS = 300
MAX_BODY = 64 * 1024


def sign(key: str, timestamp: str, body: bytes) -> str:
    """The signature of one request (also what tests and the brand's client compute)."""
    return hmac.new(key.encode(), timestamp.encode() + b"\n" + body, hashlib.sha256).hexdigest()


def _refuse(reason: str) -> Unauthenticated:
    metrics.PARTNER_REQUESTS_REFUSED.labels(reason=reason).inc()
    return Unauthenticated(f"partner signature refused: {reason}", code="bad_signature")


async def verified_body(request: web.Request) -> bytes:
    """The raw body of a correctly signed, fresh, first-seen request; else 401 (503 when off)."""
    key = request.app[keys.settings_key].partner_api_key
    if not key:
        raise Unavailable("the partner API is off: set PARTNER_API_KEY", code="partner_disabled")
    timestamp = request.headers.get("X-Partner-Timestamp", "")
    signature = request.headers.get("X-Partner-Signature", "").lower()
    if not timestamp.isdigit() or len(timestamp) > 12 or len(signature) != 64:
        raise _refuse("missing")
    now = request.app[keys.clock_key].now().timestamp()
    if abs(now - int(timestamp)) > WINDOW_SECONDS:
        raise _refuse("stale")
    if request.content_length is not None and request.content_length > MAX_BODY:
        raise _refuse("too_large")
    body = await request.content.read(MAX_BODY + 1)
    if len(body) > MAX_BODY:
        raise _refuse("too_large")
    if not hmac.compare_digest(sign(key, timestamp, body), signature):
        raise _refuse("signature")
    # Remembered a little longer than the window it could be replayed within.
    fresh = await request.app[keys.redis_key].set(f"partner:sig:{signature}", 1, nx=True, ex=WINDOW_SECONDS * 2 + 60)
    if not fresh:
        raise _refuse("replayed")
    return body
