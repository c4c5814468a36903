"""Admin: the outbox's dead letters, and sending them again."""
from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, Field, StrictInt

from app import keys
from app.domain import outbox
from handlers.admin.auth import require_admin
from handlers.bodies import parse, query_int


class RetryBody(BaseModel):
    ids: list[StrictInt] = Field(min_length=1, max_length=1000)


async def dead(request: web.Request) -> web.Response:
    require_admin(request)
    limit = query_int(request, "limit", 100, low=1, high=1000)
    return web.json_response({"items": await outbox.list_dead(limit=limit)})


async def retry(request: web.Request) -> web.Response:
    actor = require_admin(request)
    body = await parse(request, RetryBody)
    retried = await outbox.retry_dead(ids=body.ids, now=request.app[keys.clock_key].now(), actor=actor)
    return web.json_response({"retried": retried})
