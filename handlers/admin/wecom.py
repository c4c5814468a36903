"""Admin, 企业微信: stewards per tier or member, and tier broadcasts."""
from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr

from app import keys
from app.domain import rules, wecom
from app.errors import Unavailable
from handlers.admin.auth import require_admin
from handlers.bodies import parse


class StewardBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tier: StrictStr | None = Field(default=None, max_length=16)
    member_id: StrictInt | None = Field(default=None, ge=1)
    steward: StrictStr | None = Field(max_length=64)


class BroadcastBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    tier: StrictStr = Field(max_length=16)
    text: StrictStr = Field(min_length=1, max_length=wecom.TEXT_MAX)


def _client(request: web.Request):
    client = request.app.get(keys.wecom_key)
    if client is None:
        raise Unavailable("企业微信 is off: set WECOM_CORP_ID and WECOM_SECRET", code="wecom_not_configured")
    return client


async def stewards(request: web.Request) -> web.Response:
    require_admin(request)
    return web.json_response(await wecom.list_stewards(rules=await rules.load()))


async def set_steward(request: web.Request) -> web.Response:
    actor = require_admin(request)
    body = await parse(request, StewardBody)
    listing = await wecom.set_steward(rules=await rules.load(), actor=actor, steward=body.steward,
                                      tier=body.tier, member_id=body.member_id)
    return web.json_response(listing)


async def broadcast(request: web.Request) -> web.Response:
    actor = require_admin(request)
    client = _client(request)
    body = await parse(request, BroadcastBody)
    sent = await wecom.broadcast(client=client, rules=await rules.load(), tier=body.tier, text=body.text,
                                 actor=actor)
    return web.json_response(sent, status=201)
