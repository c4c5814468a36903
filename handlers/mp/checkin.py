"""Mini-program: check-in, make-up, the calendar."""
from __future__ import annotations

from datetime import date

from aiohttp import web
from pydantic import BaseModel

from app import keys
from app.domain import checkin, rules
from app.domain.clock import business_day
from app.errors import InvalidField
from handlers.bodies import json_response, parse
from handlers.mp.auth import member_id


class MakeupBody(BaseModel):
    date: str


async def check_in(request: web.Request) -> web.Response:
    who = await member_id(request)
    settings = request.app[keys.settings_key]
    result = await checkin.check_in(redis=request.app[keys.redis_key], rules=await rules.load(),
                                    member_id=who, now=request.app[keys.clock_key].now(), tz=settings.tz)
    return json_response({
        "date": result.day.isoformat(), "streak": result.streak,
        "points_awarded": result.points_awarded, "balance": result.balance, "capped": result.capped,
    })


async def make_up(request: web.Request) -> web.Response:
    who = await member_id(request)
    body = await parse(request, MakeupBody)
    try:
        day = date.fromisoformat(body.date)
    except ValueError:
        raise InvalidField("date", "must be YYYY-MM-DD") from None
    settings = request.app[keys.settings_key]
    result = await checkin.make_up(rules=await rules.load(), member_id=who, day=day,
                                   now=request.app[keys.clock_key].now(), tz=settings.tz)
    return json_response(result)


async def calendar(request: web.Request) -> web.Response:
    who = await member_id(request)
    settings, now = request.app[keys.settings_key], request.app[keys.clock_key].now()
    month = request.query.get("month") or business_day(now, settings.tz).strftime("%Y-%m")
    result = await checkin.calendar_month(rules=await rules.load(), member_id=who, month=month,
                                          now=now, tz=settings.tz)
    return json_response(result)
