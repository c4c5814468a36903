"""The app factory: `create_app(settings)`; `python -m app serve` only calls it."""
from __future__ import annotations

from aiohttp import web

from app import keys, resources, sandbox
from app.config import Settings
from app.domain import wiring
from app.domain.clock import Clock
from handlers import middlewares, routes  # the outer layer: this module is the composition root
from jobs.worker import scheduler_ctx

MAX_BODY = 64 * 1024


def create_app(settings: Settings | None = None) -> web.Application:
    settings = settings or Settings.from_env()
    wiring.install()  # the ledger's subscribers and the member-created step
    app = web.Application(middlewares=[middlewares.observe, middlewares.errors],
                          client_max_size=MAX_BODY)
    app[keys.settings_key] = settings
    app[keys.clock_key] = Clock()
    for ctx in (resources.orm_ctx, resources.redis_ctx, resources.http_ctx, sandbox.sandbox_ctx,
                resources.wechat_ctx, resources.wecom_ctx, resources.pay_verifier_ctx, resources.pay_ctx,
                resources.background_ctx):
        app.cleanup_ctx.append(ctx)
    if settings.scheduler_in_serve:
        app.cleanup_ctx.append(scheduler_ctx)
    routes.setup(app)
    return app
