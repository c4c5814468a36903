"""Mini-program: share links of a campaign, and a friend's claim of one (社交裂变券)."""
from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, Field, StrictStr

from app import keys
from app.domain import rules, share
from handlers.bodies import parse
from handlers.mp.auth import member_id
from handlers.mp.coupons import render_coupon


class LinkBody(BaseModel):
    campaign: StrictStr = Field(min_length=1, max_length=32)


async def create(request: web.Request) -> web.Response:
    who = await member_id(request)
    body = await parse(request, LinkBody)
    link = await share.make_link(member_id=who, campaign_key=body.campaign,
                                 now=request.app[keys.clock_key].now())
    return web.json_response({"token": link.token, "share_path": share.share_path(link.token),
                              "campaign": body.campaign})


async def claim(request: web.Request) -> web.Response:
    who = await member_id(request)
    now = request.app[keys.clock_key].now()
    result = await share.claim(token=request.match_info["token"], friend_id=who, now=now,
                               tz=request.app[keys.settings_key].tz, redis=request.app[keys.redis_key],
                               rules=await rules.load())
    return web.json_response({**render_coupon(result.coupon, now=now), "rewarded": result.rewarded,
                              "points_awarded": result.friend_points})
