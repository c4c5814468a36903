"""Admin: put a member or a device on the blacklist, or take it off (audited)."""
from __future__ import annotations

from typing import Literal

from aiohttp import web
from pydantic import BaseModel, Field, StrictStr

from app import keys
from app.domain import blacklist
from handlers.admin.auth import require_admin
from handlers.bodies import parse


class BlacklistBody(BaseModel):
    kind: Literal["member", "device"]
    value: StrictStr | int = Field(union_mode="left_to_right")
    reason: StrictStr = Field("", max_length=255)


async def listing(request: web.Request) -> web.Response:
    require_admin(request)
    return web.json_response({"items": [blacklist.render(r) for r in await blacklist.listing()]})


async def add(request: web.Request) -> web.Response:
    actor = require_admin(request)
    body = await parse(request, BlacklistBody)
    row, created = await blacklist.add(redis=request.app[keys.redis_key], kind=body.kind, value=str(body.value),
                                       reason=body.reason, actor=actor)
    return web.json_response({**blacklist.render(row), "created": created}, status=201 if created else 200)


async def remove(request: web.Request) -> web.Response:
    actor = require_admin(request)
    row = await blacklist.remove(kind=request.match_info["kind"], value=request.match_info["value"], actor=actor)
    return web.json_response({**blacklist.render(row), "removed": True})
