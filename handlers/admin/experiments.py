"""Admin: A/B tests of rewards — GET/POST /admin/experiments, POST /admin/experiments/{key}/enroll,
GET /admin/experiments/{key}/results (see app/domain/experiments.py)."""
from __future__ import annotations

from typing import Any

from aiohttp import web
from pydantic import RootModel

from app import keys
from app.domain import experiments
from handlers.admin.auth import require_admin
from handlers.bodies import parse


class ExperimentBody(RootModel[dict[str, Any]]):
    pass  # validated by the domain (experiments.Spec), which names the field on 422


async def listing(request: web.Request) -> web.Response:
    require_admin(request)
    return web.json_response({"items": await experiments.listing()})


async def create(request: web.Request) -> web.Response:
    actor = require_admin(request)
    body = await parse(request, ExperimentBody)
    exp = await experiments.create(body=body.root, actor=actor, now=request.app[keys.clock_key].now())
    return web.json_response(experiments.render(exp), status=201)


async def enroll(request: web.Request) -> web.Response:
    require_admin(request)
    done = await experiments.enroll(key=request.match_info["key"], now=request.app[keys.clock_key].now())
    return web.json_response(done)


async def results(request: web.Request) -> web.Response:
    require_admin(request)
    result = await experiments.results(key=request.match_info["key"], now=request.app[keys.clock_key].now())
    return web.json_response(result)
