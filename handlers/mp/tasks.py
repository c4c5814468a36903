"""Mini-program: the member's tasks and this week's task points against the weekly cap."""
from __future__ import annotations

from aiohttp import web

from app import keys
from app.domain import rules, tasks
from handlers.mp.auth import member_id


async def overview(request: web.Request) -> web.Response:
    who = await member_id(request)
    body = await tasks.overview(member_id=who, now=request.app[keys.clock_key].now(),
                                tz=request.app[keys.settings_key].tz, rules=await rules.load())
    return web.json_response(body)
