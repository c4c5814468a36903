"""Request ids, access logs and metrics, client IPs, and DomainError → CONTRACT.md's envelope."""
from __future__ import annotations

import ipaddress
import logging
import secrets
import time

from aiohttp import web
from pydantic import ValidationError

from app import keys, metrics
from app.errors import DomainError, dependency_failed
from app.logs import request_id
from handlers.bodies import json_response

log = logging.getLogger("app.http")

_STATUS_CODES = {
    400: "malformed", 401: "unauthenticated", 403: "forbidden", 404: "not_found",
    405: "method_not_allowed", 409: "conflict", 413: "body_too_large", 415: "unsupported_media_type",
    422: "invalid_field", 429: "rate_limited", 503: "unavailable",
}


def envelope(status: int, code: str, message: str, headers: dict | None = None) -> web.Response:
    return json_response({"error": {"code": code, "message": message}}, status=status, headers=headers)


def client_ip(request: web.Request) -> str:
    """The peer address, or the last untrusted hop of X-Forwarded-For behind TRUSTED_PROXIES."""
    peer = request.remote or ""
    proxies = request.app[keys.settings_key].trusted_proxies
    if not proxies or not _trusted(peer, proxies):
        return peer
    hops = [h.strip() for h in request.headers.get("X-Forwarded-For", "").split(",") if h.strip()]
    # Walk from the right: the nearest hop not ours is the client (the left is client-written).
    for hop in reversed(hops):
        if not _trusted(hop, proxies):
            return hop
    return hops[0] if hops else peer


def _trusted(address: str, proxies) -> bool:
    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return False
    return any(ip in net for net in proxies)


def _route_name(request: web.Request) -> str:
    info = request.match_info.route.resource
    return info.canonical if info is not None else "unmatched"


@web.middleware
async def observe(request: web.Request, handler):
    rid = request.headers.get("X-Request-Id", "")
    if not rid or len(rid) > 64 or not rid.replace("-", "").isalnum():
        rid = secrets.token_hex(8)
    token = request_id.set(rid)
    request[keys.client_ip_key] = client_ip(request)
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        response.headers["X-Request-Id"] = rid
        return response
    except web.HTTPException as exc:
        status = exc.status
        exc.headers["X-Request-Id"] = rid
        raise
    finally:
        elapsed = time.perf_counter() - started
        count, latency = _series(request.method, _route_name(request), status)
        count.inc()
        latency.observe(elapsed)
        if log.isEnabledFor(logging.INFO):
            log.info("%s %s %s", request.method, request.path, status, extra={"fields": {
                "status": status, "ms": round(elapsed * 1000, 2), "ip": request.get(keys.client_ip_key)}})
        request_id.reset(token)


_SERIES: dict[tuple[str, str, int], tuple] = {}


def _series(method: str, route: str, status: int) -> tuple:
    """The request counter and latency histogram children of (method, route, status), looked up
    once: `labels()` takes a lock and builds a key each call. Bounded by routes × methods × statuses."""
    key = (method, route, status)
    found = _SERIES.get(key)
    if found is None:
        found = _SERIES[key] = (metrics.REQUESTS.labels(method, route, str(status)),
                                metrics.LATENCY.labels(method, route))
    return found


_ENVELOPED = ("/mp", "/admin", "/partner")
# What a 503 for a dependency that is down asks the client (and WeChat) to wait, in seconds.
RETRY_AFTER = "2"


def unavailable_headers() -> dict[str, str]:
    return {"Retry-After": RETRY_AFTER}


@web.middleware
async def errors(request: web.Request, handler):
    """Every error under /mp and /admin is the envelope; never a stack trace, never a 500 for bad input."""
    enveloped = request.path.startswith(_ENVELOPED) or request.path in ("/healthz",)
    try:
        return await handler(request)
    except DomainError as exc:
        if not enveloped:
            raise web.HTTPBadRequest(text=exc.message) from None
        return envelope(exc.status, exc.code, exc.message, exc.headers)
    except ValidationError as exc:
        err = exc.errors()[0]
        field = ".".join(str(p) for p in err["loc"]) or "body"
        return envelope(422, "invalid_field", f"{field}: {err['msg']}")
    except web.HTTPException as exc:
        if not enveloped or exc.status < 400:
            raise
        code = _STATUS_CODES.get(exc.status, "error")
        message = exc.reason if exc.status != 413 else "request body too large"
        return envelope(exc.status, code, message)
    except Exception as exc:
        if dependency_failed(exc):
            # PostgreSQL or Redis is down or too slow: say so and when to retry; the request's
            # transaction rolled back, so nothing of it stays behind.
            log.warning("dependency unavailable: %s: %s", type(exc).__name__, exc)
            if not enveloped:
                raise web.HTTPServiceUnavailable(text="temporarily unavailable; retry",
                                                 headers=unavailable_headers()) from None
            return envelope(503, "unavailable", "a service we depend on is unavailable; try again shortly",
                            unavailable_headers())
        log.exception("unhandled error")
        if not enveloped:
            raise
        return envelope(500, "internal_error", "something went wrong on our side; it was logged")
