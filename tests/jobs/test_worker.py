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


async def test_a_today_later_than_the_business_day_is_refused(settings, db):
    """`--today` tomorrow would expire valid lots and downgrade members early: refused, nothing done."""
    from app.domain import points
    from app.domain.clock import Clock
    from app.models import LedgerEntry, Member

    clock = Clock(shanghai(2026, 11, 22, 0, 10))  # business day 2026-11-22
    member = await Member.create(appid=MP_APPID, openid="o-future", invite_code="ifuture")
    await points.award(member_id=member.id, amount=30, reason="task", key="lot", now=shanghai(2025, 11, 23, 9),
                       expiry_months=12)  # expires 2026-11-23 09:00, tomorrow
    with pytest.raises(worker.FutureDay) as refused:
        await worker.run_job_once(settings, "expire_points", today=date(2026, 11, 24), clock=clock)
    assert "2026-11-24 is later than the business day 2026-11-22" in str(refused.value)
    from tortoise import Tortoise
    from app.db import tortoise_config

    await Tortoise.init(config=tortoise_config(settings.database_url))  # run_job_once closed its own
    assert (await Member.get(id=member.id)).points == 30
    assert not await LedgerEntry.filter(reason="expire").exists()
    # the business day itself and earlier days are allowed
    for day in (date(2026, 11, 22), date(2026, 11, 1)):
        summary = await worker.run_job_once(settings, "expire_points", today=day, clock=clock)
        assert summary["lots"] == 0 and summary["failed"] == 0
    await Tortoise.init(config=tortoise_config(settings.database_url))
    assert (await Member.get(id=member.id)).points == 30


def test_cli_refuses_a_later_today_with_exit_2():
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "REDIS_URL")}
    done = subprocess.run([sys.executable, "-m", "app", "jobs", "run", "downgrade_inactive",
                           "--today", "9999-12-31"], capture_output=True, text=True, timeout=60, env=env)
    assert done.returncode == 2, done.stdout + done.stderr
    assert "--today 9999-12-31 is later than the business day" in done.stderr
    assert done.stdout == ""


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


async def test_serve_alone_delivers_what_a_job_queued(aiohttp_client, settings, sim_state, redis_url):
    """SCHEDULER_IN_SERVE: the birthday job fires inside serve and serve's own outbox delivery
    (every 5 s) takes its message to WeChat: no second process. Jobs read the app's clock."""
    from app import keys
    from app.main import create_app
    from app.models import Member
    from tests.conftest import reset_state

    client = await aiohttp_client(create_app(settings.with_(scheduler_in_serve=True)))
    await reset_state(redis_url)
    app = client.app
    app[keys.clock_key].travel_to(shanghai(2026, 11, 28, 9, 0))  # 3 days before the birthday
    member = await Member.create(appid=MP_APPID, openid="o-serve", invite_code="iserve",
                                 birthday=date(1990, 12, 1))
    await messages.accept(member_id=member.id, accepted=[settings.templates["birthday"]],
                          templates=settings.templates)
    jobs = registry.load_all()
    # As the scheduler fires it at 09:00 (a task of its own, kept by background_ctx).
    await asyncio.create_task(worker._scheduled(app, jobs["birthday_gifts"]))
    assert (await OutboxMessage.get(member_id=member.id)).kind == "birthday"
    for _ in range(150):  # the every-5-seconds delivery, or 15 s on a loaded machine
        await asyncio.sleep(0.1)
        if sim_state.messages:
            break
    assert [(m["touser"], m["template_id"]) for m in sim_state.messages] == [("o-serve", settings.templates["birthday"])]
    for _ in range(50):
        if (await OutboxMessage.get(member_id=member.id)).status == "sent":
            break
        await asyncio.sleep(0.1)
    assert (await OutboxMessage.get(member_id=member.id)).status == "sent"


async def test_jobs_run_prints_what_it_queued_and_what_was_sent(db, migrated, redis_url, data_dir):
    """By hand in sandbox mode: the job's summary, then its queued messages delivered at once."""
    from app.config import DEFAULT_TEMPLATES
    from app.models import Member

    member = await Member.create(appid="wx-sandbox-mp", openid="o-hand", invite_code="ihand",
                                 birthday=date(1990, 12, 1))
    await messages.accept(member_id=member.id, accepted=[DEFAULT_TEMPLATES["birthday"]],
                          templates=DEFAULT_TEMPLATES)
    env = {k: v for k, v in os.environ.items() if not k.startswith("WECHAT_")}
    env.update(DATABASE_URL=migrated, REDIS_URL=redis_url, DATA_DIR=str(data_dir))
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "app", "jobs", "run", "birthday_gifts", "--today", "2026-11-28", env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 120)
    assert proc.returncode == 0, err.decode()
    lines = out.decode().splitlines()
    assert lines[0].startswith("seen=1 sent=1 skipped=0 failed=0")
    assert lines[1] == "outbox: queued 1; sent 1, skipped 0, retried 0, failed 0"
    assert (await OutboxMessage.get(member_id=member.id)).status == "sent"
