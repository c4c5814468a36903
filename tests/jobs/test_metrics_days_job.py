"""The metrics_days job: hourly at :20, one call into app/domain/metrics_days.py (`refresh`)."""
from __future__ import annotations

from datetime import date

import pytest

from app.domain import metrics_days
from app.models import Checkin, Member, MetricsDay
from jobs.registry import JobContext, load_all
from tests.conftest import shanghai

@pytest.mark.postgres
async def test_the_job_builds_each_ended_day_once_and_rebuilds_a_changed_one(db, settings, redis):
    job = load_all()["metrics_days"]
    assert job.schedule == {"minute": 20}
    member = await Member.create(appid="wx", openid="o-1", invite_code="i1",
                                 created_at=shanghai(2026, 1, 5, 9, 0))
    await Checkin.create(member=member, day=date(2026, 11, 20))
    advanced = []
    ctx = JobContext(settings=settings, redis=redis, wechat=None, now=shanghai(2026, 11, 22, 0, 20),
                     today=date(2026, 11, 22), advance=advanced.append)
    days = 366 + 31
    assert await job.run(ctx) == {"days": days, "current": 0, "built": days}
    assert sum(advanced) == days and await MetricsDay.filter(built_version=0).count() == 0
    stored = await MetricsDay.get(day=date(2026, 11, 20))
    assert list(metrics_days.decode(stored.checked_in)) == [member.id]
    assert (await MetricsDay.get(day=date(2026, 1, 5))).new_members == 1
    assert not await MetricsDay.filter(day=date(2026, 11, 22)).exists()  # today is not over

    await Checkin.create(member=member, day=date(2026, 11, 19), makeup=True)
    assert await job.run(ctx) == {"days": days, "current": days - 1, "built": 1}
    assert await job.run(ctx) == {"days": days, "current": days, "built": 0}


@pytest.mark.smoke
@pytest.mark.sqlite
async def test_on_sqlite_the_job_stores_nothing(db, settings, redis):
    ctx = JobContext(settings=settings, redis=redis, wechat=None, now=shanghai(2026, 11, 22, 0, 20),
                     today=date(2026, 11, 22))
    assert await load_all()["metrics_days"].run(ctx) == {"days": 0, "current": 0, "built": 0}
    assert await MetricsDay.all().count() == 0
