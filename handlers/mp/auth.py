"""Who is calling: the member behind `Authorization: Bearer <token>` from /mp/login."""
from aiohttp import web

from app import keys
from app.domain import members


async def member_id(request: web.Request) -> int:
    header = request.headers.get("Authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        token = ""
    return await members.session_member_id(redis=request.app[keys.redis_key], token=token.strip())
