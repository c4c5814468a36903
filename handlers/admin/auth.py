"""Operators: `Authorization: Bearer $ADMIN_TOKEN` on every /admin call (unset: 503)."""
import hmac

from aiohttp import web

from app import keys
from app.errors import Unauthenticated, Unavailable


def require_admin(request: web.Request) -> str:
    """The acting operator's name for audit rows, or 401/503."""
    expected = request.app[keys.settings_key].admin_token
    if not expected:
        raise Unavailable("the admin API is off: set ADMIN_TOKEN", code="admin_disabled")
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected.encode()):
        raise Unauthenticated("admin token missing or wrong", code="unauthenticated")
    # One shared token: operators may name themselves for the audit trail.
    return request.headers.get("X-Operator", "admin")[:64] or "admin"
