"""Mini-program: the member's stored value, the recharge packages, and recharging."""
from __future__ import annotations

from aiohttp import web
from pydantic import BaseModel, StrictInt

from app import keys
from app.domain import recharges, wallet
from handlers.bodies import parse
from handlers.mp.auth import member_id
from handlers.mp.rewards import notify_url


class RechargeBody(BaseModel):
    package_id: StrictInt


async def show(request: web.Request) -> web.Response:
    who = await member_id(request)
    balance = await wallet.balance(member_id=who)
    items = await wallet.history(member_id=who)
    return web.json_response({**wallet.render(balance), "items": [wallet.render_entry(e) for e in items]})


async def packages(request: web.Request) -> web.Response:
    await member_id(request)
    return web.json_response({"items": [recharges.render_package(p) for p in await recharges.packages()]})


async def recharge(request: web.Request) -> web.Response:
    who = await member_id(request)
    body = await parse(request, RechargeBody)
    app = request.app
    started = await recharges.start(member_id=who, package_id=body.package_id, now=app[keys.clock_key].now(),
                                    pay=app[keys.pay_client_key], notify_url=notify_url(request),
                                    cap_fen=app[keys.settings_key].wallet_principal_cap_fen)
    return web.json_response({"recharge": recharges.render(started.recharge), "pay_params": started.pay_params})
