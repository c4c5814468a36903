"""Mini-program: the member's points ledger, newest first."""
from aiohttp import web

from app.domain import points
from handlers.bodies import query_int
from handlers.mp.auth import member_id


def render_entry(entry) -> dict:
    return {
        "id": entry.id, "delta": int(entry.delta), "reason": entry.reason,
        "created_at": entry.created_at.isoformat(),
        "expires_at": entry.expires_at.isoformat() if entry.expires_at else None,
    }


async def history(request: web.Request) -> web.Response:
    who = await member_id(request)
    cursor = query_int(request, "cursor", 0, low=0, high=2**62)
    limit = query_int(request, "limit", 20, low=1, high=100)
    rows, next_cursor = await points.history(member_id=who, cursor=cursor or None, limit=limit)
    return web.json_response({"items": [render_entry(e) for e in rows],
                              "next_cursor": str(next_cursor) if next_cursor else None})
