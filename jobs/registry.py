"""Scheduled jobs by name: what `python -m app jobs list|run` and the worker's scheduler use.

Each module in jobs/ registers its job at import with `register(Job(...))`; `load_all()`
imports them. A job is `async def run(ctx: JobContext) -> dict`, returning its summary
(members seen, sent, skipped, failed) and calling one function in app/domain.
"""
from __future__ import annotations

import importlib
import pkgutil
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any, Awaitable, Callable

_INFRASTRUCTURE = {"registry", "worker"}


@dataclass
class JobContext:
    settings: Any  # app.config.Settings
    redis: Any  # redis.asyncio.Redis
    wechat: Any  # app.wechat.client.WeChatClient
    now: datetime  # when this run started (aware)
    today: date  # the business day it runs for (`--today` by hand)
    total: Callable[[int], None] = field(default=lambda n: None)  # size the progress bar
    advance: Callable[[int], None] = field(default=lambda n: None)  # n more items done
    oa_wechat: Any = None  # the official account's WeChatClient (member-card pushes)
    pay: Any = None  # app.wechat.pay_client.PayClient, when WeChat Pay is configured
    wecom: Any = None  # app.wechat.wecom.WeComClient, None when 企业微信 is off
    clock: Any = None  # the app's Clock (app/domain/clock.py), for a run that needs "now" again

    def moment(self) -> datetime:
        """Now by the app's clock; the run's start when it has none."""
        return self.clock.now() if self.clock is not None else self.now


@dataclass(frozen=True)
class Job:
    name: str
    run: Callable[[JobContext], Awaitable[dict]]
    schedule: dict  # APScheduler cron trigger fields, in the business timezone
    help: str


JOBS: dict[str, Job] = {}


def register(job: Job) -> Job:
    JOBS[job.name] = job
    return job


def load_all() -> dict[str, Job]:
    """Import every job module of this package so each registers itself."""
    import jobs

    for module in pkgutil.iter_modules(jobs.__path__):
        if module.name not in _INFRASTRUCTURE and not module.name.startswith("_"):
            importlib.import_module(f"jobs.{module.name}")
    return JOBS
