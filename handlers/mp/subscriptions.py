"""Mini-program: what wx.requestSubscribeMessage returned; each acceptance pays for one send."""
from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, Field, StrictStr

from app import keys
from app.domain import messages
from handlers.bodies import parse
from handlers.mp.auth import member_id


class SubscriptionsBody(BaseModel):
    # wx.requestSubscribeMessage takes at most 3 template ids a call; leave room, bound the work.
    accepted: list[StrictStr] = Field(max_length=20)


async def accept(request: web.Request) -> web.Response:
    who = await member_id(request)
    body = await parse(request, SubscriptionsBody)
    quotas = await messages.accept(member_id=who, accepted=body.accepted,
                                   templates=request.app[keys.settings_key].templates)
    return web.json_response({"quotas": quotas})
