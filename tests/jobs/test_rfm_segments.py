"""The rfm_segments job: registered at 03:30, one call into app/domain/segments.py."""
from __future__ import annotations

from datetime import date

import pytest

from app.models import Member, MemberScore
from jobs.registry import JobContext, load_all
from tests.conftest import shanghai

pytestmark = pytest.mark.smoke


async def test_the_job_scores_every_member_and_is_idempotent(db, settings, redis):
    job = load_all()["rfm_segments"]
    assert job.schedule == {"hour": 3, "minute": 30}
    await Member.create(appid="wx", openid="o-new", invite_code="n", created_at=shanghai(2026, 11, 20, 9, 0))
    await Member.create(appid="wx", openid="o-old", invite_code="o", created_at=shanghai(2025, 1, 1, 9, 0))
    ctx = JobContext(settings=settings, redis=redis, wechat=None, now=shanghai(2026, 11, 22, 3, 30),
                     today=date(2026, 11, 22))
    first = await job.run(ctx)
    again = await job.run(ctx)
    assert first == again == {"members": 2, "new": 1, "active": 0, "silent": 1, "high_value": 0}
    assert await MemberScore.all().count() == 2
