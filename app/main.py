"""The app factory: `create_app(settings)`; `python -m app serve` only calls it."""
from __future__ import annotations

from aiohttp import web

from app import keys, resources
from app.config import Settings
from app.domain import costs
from app.domain.clock import Clock

MAX_BODY = 64 * 1024


def create_app(settings: Settings | None = None) -> web.Application:
    from handlers import middlewares, routes  # the outer layer, assembled here only

    settings = settings or Settings.from_env()
    app = web.Application(middlewares=[middlewares.observe, middlewares.errors],
                          client_max_size=MAX_BODY)
    app[keys.settings_key] = settings
    app[keys.clock_key] = Clock()
    for ctx in (resources.orm_ctx, resources.redis_ctx, resources.http_ctx,
                resources.wechat_ctx, resources.wecom_ctx, resources.pay_verifier_ctx, resources.pay_ctx,
                resources.background_ctx):
        app.cleanup_ctx.append(ctx)
    if settings.scheduler_in_serve:
        from jobs.worker import scheduler_ctx  # the outer layer too: jobs call into the domain

        app.cleanup_ctx.append(scheduler_ctx)
    routes.setup(app)
    costs.install()  # the points mall's spends leave cost entries
    return app
