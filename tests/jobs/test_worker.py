"""The worker: jobs by hand with --today, one run at a time across workers, the scheduler."""
from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from datetime import date

import pytest

from app.domain import messages
from app.models import OutboxMessage
from jobs import registry, worker
from jobs.registry import Job, JobContext
from tests.conftest import MP_APPID, shanghai


@pytest.fixture
def fake_job():
    """A job that records its runs and takes a little while."""
    runs: list[JobContext] = []

    async def run(ctx: JobContext) -> dict:
        runs.append(ctx)
        ctx.total(3)
        await asyncio.sleep(0.2)
        ctx.advance(3)
        return {"seen": 3, "sent": 2}

    job = registry.register(Job(name="test_fake", run=run, schedule={"hour": 1}, help="test"))
    yield job, runs
    registry.JOBS.pop(job.name, None)


async def test_run_job_once_for_a_given_day(settings, fake_job):
    job, runs = fake_job
    summary = await worker.run_job_once(settings, "test_fake", today=date(2026, 11, 26))
    assert summary == {"seen": 3, "sent": 2, "skipped": 0, "failed": 0, "queued": 0}
    assert [ctx.today for ctx in runs] == [date(2026, 11, 26)]
    assert runs[0].oa_wechat is not None and runs[0].wechat is not None


async def test_two_workers_at_once_make_one_run(settings, redis, fake_job):
    job, runs = fake_job
    today = date(2026, 11, 26)
    contexts = [JobContext(settings=settings, redis=redis, wechat=None, now=shanghai(2026, 11, 26, 9), today=today)
                for _ in range(5)]
    summaries = await asyncio.gather(*(worker.run_locked(job, ctx) for ctx in contexts))
    assert len(runs) == 1
    assert sorted(s.get("locked", 0) for s in summaries) == [0, 1, 1, 1, 1]
    # The lock goes with the run: the next day's run (or a later re-run) is not blocked.
    await worker.run_locked(job, contexts[0])
    assert len(runs) == 2


async def test_deliver_outbox_job_by_hand_sends_the_queue(db, settings, sim_state):
    from app.models import Member

    member = await Member.create(appid=MP_APPID, openid="o-job", invite_code="ijob")
    await messages.accept(member_id=member.id, accepted=[settings.templates["coupon"]], templates=settings.templates)
    await messages.enqueue(member_id=member.id, kind="coupon", period="x", now=shanghai(2026, 1, 1, 9),
                           values={"title": "券", "amount": 20, "expires_on": "2026-12-31"})
    summary = await worker.run_job_once(settings, "deliver_outbox")
    assert (summary["seen"], summary["sent"], summary["failed"]) == (1, 1, 0)
    assert [m["touser"] for m in sim_state.messages] == ["o-job"]
    from tortoise import Tortoise
    from app.db import tortoise_config

    await Tortoise.init(config=tortoise_config(settings.database_url))  # run_job_once closed its own
    assert (await OutboxMessage.get(key=f"coupon:{member.id}:x")).status == "sent"


async def test_the_scheduler_has_every_job_in_the_business_timezone(settings):
    jobs = registry.load_all()
    async with worker.started(settings) as app:
        scheduler = worker.build_scheduler(app, jobs)
        scheduled = {j.id: j for j in scheduler.get_jobs()}
    assert set(scheduled) == set(jobs) and "deliver_outbox" in scheduled
    assert str(scheduled["deliver_outbox"].trigger.timezone) == "Asia/Shanghai"


async def test_run_worker_fires_the_outbox_and_stops_on_request(settings, sim_state, fake_job, monkeypatch):
    job, runs = fake_job
    registry.JOBS["test_fake"] = Job(name="test_fake", run=job.run, schedule={"second": "*"}, help="test")
    stop = asyncio.Event()
    task = asyncio.create_task(worker.run_worker(settings, stop=stop))
    for _ in range(150):  # an every-second job: it runs within ~1 s, or 15 s on a loaded machine
        await asyncio.sleep(0.1)
        if runs:
            break
    stop.set()
    await asyncio.wait_for(task, 10)
    assert runs, "the scheduler never ran the every-second job"


def test_cli_unknown_job_lists_the_names_and_exits_2():
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    done = subprocess.run([sys.executable, "-m", "app", "jobs", "run", "no_such_job"], capture_output=True,
                          text=True, env=env, timeout=60)
    assert done.returncode == 2
    assert "unknown job 'no_such_job'" in done.stderr and "deliver_outbox" in done.stderr


async def test_serve_can_run_the_scheduler_too(aiohttp_client, settings):
    from app import keys
    from app.main import create_app

    client = await aiohttp_client(create_app(settings.with_(scheduler_in_serve=True)))
    scheduler = client.app[keys.scheduler_key]
    assert scheduler.running and scheduler.get_job("deliver_outbox") is not None
