"""The scheduler (`python -m app worker`) and one job by hand (`python -m app jobs run NAME`).

Both build what jobs need from the app's own cleanup contexts (app/resources.py): Tortoise,
Redis, one ClientSession and the WeChat clients, on a small aiohttp Application that serves
nothing. Every run of a job holds the Redis lock `job:{name}:{day}`, taken without waiting,
so when two workers fire at once one runs and the other skips; the jobs' unique keys make a
later re-run harmless anyway.
"""
from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys
from contextlib import asynccontextmanager
from datetime import date
from typing import AsyncIterator

from aiohttp import web
from redis.exceptions import LockError

from app import keys, resources, sandbox
from app.config import Settings
from app.domain import outbox, wiring
from app.domain.clock import Clock, business_day
from jobs.registry import Job, JobContext, load_all

log = logging.getLogger("jobs.worker")

# A run keeps its lock alive while it works; a crashed worker's lock lapses after this.
LOCK_TIMEOUT = 300
SUMMARY = ("seen", "sent", "skipped", "failed")
# Jobs scan and aggregate in bulk: a statement may take longer than a request's DB_STATEMENT_TIMEOUT.
JOB_STATEMENT_TIMEOUT = 600.0


class FutureDay(ValueError):
    """`--today` later than the business day: a job would act early and irreversibly
    (expire lots that are still valid, downgrade members before their time)."""

    def __init__(self, day: date, business: date) -> None:
        super().__init__(f"--today {day.isoformat()} is later than the business day "
                         f"{business.isoformat()}: a job cannot run for a day that has not come "
                         f"(earlier days are allowed)")
        self.day, self.business = day, business


class UnknownJob(LookupError):
    def __init__(self, name: str, known: list[str]) -> None:
        super().__init__(f"unknown job {name!r}; the jobs are: {', '.join(known)}")
        self.name, self.known = name, known


def resources_app(settings: Settings, clock: Clock | None = None) -> web.Application:
    """An Application with only the resource contexts, in the same order as create_app."""
    wiring.install()  # the ledger's subscribers and the member-created step, as in create_app
    app = web.Application()
    app[keys.settings_key] = settings.with_(
        db_statement_timeout=max(settings.db_statement_timeout, JOB_STATEMENT_TIMEOUT))
    app[keys.clock_key] = clock or Clock()
    for ctx in (resources.orm_ctx, resources.redis_ctx, resources.http_ctx, sandbox.sandbox_ctx,
                resources.wechat_ctx, resources.pay_ctx, resources.wecom_ctx, resources.background_ctx):
        app.cleanup_ctx.append(ctx)
    return app


@asynccontextmanager
async def started(settings: Settings, clock: Clock | None = None) -> AsyncIterator[web.Application]:
    """The resources started (and cleaned up after) without serving HTTP."""
    runner = web.AppRunner(resources_app(settings, clock), handle_signals=False)
    await runner.setup()
    try:
        yield runner.app
    finally:
        await runner.cleanup()


def context(app: web.Application, *, today: date | None = None, **progress) -> JobContext:
    settings, clock = app[keys.settings_key], app[keys.clock_key]
    # The one place a job learns the time: the app's clock (a test's fixed one, else real time).
    now = clock.now()
    return JobContext(settings=settings, redis=app[keys.redis_key], wechat=app[keys.wechat_key],
                      oa_wechat=app.get(keys.oa_wechat_key), pay=app.get(keys.pay_client_key),
                      wecom=app.get(keys.wecom_key), now=now, clock=clock,
                      today=today or business_day(now, settings.tz), **progress)


async def run_locked(job: Job, ctx: JobContext) -> dict:
    """Run `job` under its lock for the day; another holder means this run is skipped."""
    lock = ctx.redis.lock(f"job:{job.name}:{ctx.today.isoformat()}", timeout=LOCK_TIMEOUT)
    if not await lock.acquire(blocking=False):
        log.info("job already running elsewhere", extra={"fields": {"job": job.name}})
        return {**dict.fromkeys(SUMMARY, 0), "locked": 1}

    async def keep_alive() -> None:
        while True:
            await asyncio.sleep(LOCK_TIMEOUT / 3)
            await lock.reacquire()

    watchdog = asyncio.create_task(keep_alive())
    try:
        summary = await job.run(ctx)
    finally:
        watchdog.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watchdog
        with contextlib.suppress(LockError):
            await lock.release()
    return {**dict.fromkeys(SUMMARY, 0), **summary}


async def run_job_once(settings: Settings, name: str, *, today: date | None = None,
                       clock: Clock | None = None, deliver: bool = True) -> dict:
    """`python -m app jobs run NAME [--today]`: one run, a progress bar on stderr, its summary.

    `today` may be the business day or an earlier one, never a later one (FutureDay). What
    the run queued in the outbox is then delivered at once (`deliver`), so a hand run needs
    no second process; the summary gains `queued` and `delivered` (the outbox's counts).
    """
    from tqdm import tqdm

    jobs = load_all()
    if name not in jobs:
        raise UnknownJob(name, sorted(jobs))
    clock = clock or Clock()
    business = business_day(clock.now(), settings.tz)
    if today is not None and today > business:
        raise FutureDay(today, business)  # before anything starts: nothing is touched
    async with started(settings, clock) as app:
        before = await outbox.last_id()
        with tqdm(total=0, desc=name, unit="item", file=sys.stderr, leave=False) as bar:
            def total(n: int) -> None:
                bar.total = n
                bar.refresh()

            summary = await run_locked(jobs[name], context(app, today=today, total=total, advance=bar.update))
        queued = await outbox.queued_since(before)
        if not deliver or name == "deliver_outbox" or not queued:
            return {**summary, "queued": queued}
        delivered = await run_locked(jobs["deliver_outbox"], context(app))
        return {**summary, "queued": queued,
                "delivered": {k: delivered.get(k, 0) for k in ("sent", "skipped", "retried", "failed", "locked")}}


async def _scheduled(app: web.Application, job: Job) -> None:
    task = asyncio.current_task()
    # Shutdown waits a little for runs in flight (background_ctx) before closing the database.
    app[keys.background_key].add(task)
    task.add_done_callback(app[keys.background_key].discard)
    try:
        summary = await run_locked(job, context(app))
        log.info("job done", extra={"fields": {"job": job.name, **summary}})
    except Exception:
        log.exception("job failed", extra={"fields": {"job": job.name}})


def build_scheduler(app: web.Application, jobs: dict[str, Job] | None = None):
    """An AsyncIOScheduler in the business timezone with every job on its cron schedule."""
    from apscheduler.schedulers.asyncio import AsyncIOScheduler
    from apscheduler.triggers.cron import CronTrigger

    tz = app[keys.settings_key].tz
    scheduler = AsyncIOScheduler(timezone=tz)
    for job in (jobs or load_all()).values():
        # One run at a time per process; a tick missed while busy is dropped, not queued.
        scheduler.add_job(_scheduled, CronTrigger(timezone=tz, **job.schedule), args=[app, job],
                          id=job.name, name=job.name, max_instances=1, coalesce=True,
                          misfire_grace_time=60)
    return scheduler


async def scheduler_ctx(app: web.Application) -> AsyncIterator[None]:
    """The scheduler inside `serve` (SCHEDULER_IN_SERVE=1); after the resources it uses."""
    if not app[keys.settings_key].scheduler_in_serve:
        yield
        return
    scheduler = build_scheduler(app)
    scheduler.start()
    app[keys.scheduler_key] = scheduler
    yield
    scheduler.shutdown(wait=False)


async def run_worker(settings: Settings, *, stop: asyncio.Event | None = None) -> None:
    """`python -m app worker`: every job on its schedule until SIGINT/SIGTERM (or `stop`)."""
    jobs = load_all()
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
    async with started(settings) as app:
        scheduler = build_scheduler(app, jobs)
        scheduler.start()
        log.info("worker started", extra={"fields": {"jobs": sorted(jobs), "tz": settings.timezone}})
        try:
            await stop.wait()
        finally:
            scheduler.shutdown(wait=False)
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.remove_signal_handler(sig)
