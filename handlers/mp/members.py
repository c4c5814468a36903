"""Mini-program: login, the member, the member card."""
from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field

from app import keys
from app.domain import members, rules, tasks
from app.domain.clock import business_day
from handlers.bodies import json_response, parse
from handlers.mp.auth import member_id


class LoginBody(BaseModel):
    model_config = ConfigDict(str_strip_whitespace=True)
    code: str = Field(min_length=1, max_length=128)
    invite_code: str | None = Field(None, max_length=16)
    device_id: str | None = Field(None, max_length=64)


class ActivateBody(BaseModel):
    name: str = Field(max_length=64)
    phone: str = Field(max_length=20)
    birthday: str = Field(max_length=10)


async def login(request: web.Request) -> web.Response:
    body = await parse(request, LoginBody)
    settings, now = request.app[keys.settings_key], request.app[keys.clock_key].now()
    current = await rules.load()
    result = await members.login(
        wechat=request.app[keys.wechat_key], redis=request.app[keys.redis_key], rules=current,
        appid=settings.appid, code=body.code, invite_code=body.invite_code,
        device_id=body.device_id, ip=request.get(keys.client_ip_key), now=now, tz=settings.tz)
    return json_response({
        "token": result.token, "expires_in": result.expires_in, "is_new": result.is_new,
        "member": members.render(result.member, today=business_day(now, settings.tz), rules=current),
    })


async def me(request: web.Request) -> web.Response:
    member = await members.get(await member_id(request))
    today = business_day(request.app[keys.clock_key].now(), request.app[keys.settings_key].tz)
    return json_response(members.render(member, today=today, rules=await rules.load()))


async def activate_card(request: web.Request) -> web.Response:
    who = await member_id(request)
    body = await parse(request, ActivateBody)
    now, tz = request.app[keys.clock_key].now(), request.app[keys.settings_key].tz
    today = business_day(now, tz)
    member = await members.activate_card(member_id=who, name=body.name, phone=body.phone,
                                         birthday=body.birthday, today=today)
    current = await rules.load()
    # Every field is required here, so an activation is a completed profile (a task, once).
    if await tasks.complete_profile(member_id=who, now=now, tz=tz, redis=request.app[keys.redis_key],
                                    rules=current):
        member = await members.get(who)
    return json_response(members.render(member, today=today, rules=current))
