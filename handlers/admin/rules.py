"""Admin: the programme's rules, read and changed (each changed section one audit row)."""
from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import RootModel

from app.domain import rules
from handlers.admin.auth import require_admin
from handlers.bodies import parse


class RulesPatch(RootModel[dict[str, Any]]):
    pass


async def show(request: web.Request) -> web.Response:
    require_admin(request)
    current = await rules.load(fresh=True)
    return web.json_response(current.model_dump(mode="json"))


async def change(request: web.Request) -> web.Response:
    actor = require_admin(request)
    body = await parse(request, RulesPatch)
    updated = await rules.update(body.root, actor=actor)
    return web.json_response(updated.model_dump(mode="json"))
