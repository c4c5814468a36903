"""Task points (CONTRACT.md "tasks"): profile completion (once), tasks reported by the brand's
systems (`POST /partner/events`: a review after moderation...) and share claims (share.py).

Each task is done once under a unique key (TaskCompletion.key, also the ledger entry's key).
Its points come under the daily cap of 200 non-purchase points and the weekly cap of 200 task
points a Monday-to-Sunday business week, both counted atomically in Redis and backed by the
ledger (antiabuse); a capped task is still done, with fewer (or 0) points.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from zoneinfo import ZoneInfo

from redis.asyncio import Redis
from tortoise.backends.base.client import BaseDBAsyncClient
from tortoise.exceptions import IntegrityError
from tortoise.functions import Count, Sum
from tortoise.transactions import in_transaction

from app.domain import antiabuse, points
from app.domain.clock import business_day
from app.domain.rules import Rules
from app.errors import Conflict, Forbidden, InvalidField, NotFound
from app.models import Campaign, Member, TaskCompletion

PROFILE = "profile"
SHARE = "share"
_EVENT_ID = re.compile(r"^[A-Za-z0-9_.:\-]{1,64}$")


@dataclass(frozen=True)
class TaskResult:
    """One task done: the points the caps let through (`points_awarded` of `wanted`)."""

    key: str
    member_id: int
    kind: str
    points_awarded: int
    wanted: int
    duplicate: bool = False

    @property
    def capped(self) -> bool:
        return self.points_awarded < self.wanted


class CapHold:
    """Reservations of the daily and weekly caps taken during one transaction, so that a
    rollback (a duplicate, an error) gives every one of them back."""

    def __init__(self, *, redis: Redis, day: date) -> None:
        self.redis, self.day = redis, day
        self._held: list[tuple[int, int]] = []

    async def take(self, *, member_id: int, wanted: int, rules: Rules) -> int:
        """Up to `wanted` points for the member under both caps: the daily cap first, then the
        weekly cap on what the daily one granted; the daily share the week refused goes back."""
        daily = await antiabuse.reserve_cap(redis=self.redis, member_id=member_id, day=self.day,
                                            wanted=wanted, cap=rules.points.daily_cap)
        weekly = 0
        try:
            weekly = await antiabuse.reserve_weekly_cap(redis=self.redis, member_id=member_id, day=self.day,
                                                        wanted=daily, cap=rules.tasks.weekly_cap)
        finally:
            if weekly < daily:
                await antiabuse.release_cap(redis=self.redis, member_id=member_id, day=self.day,
                                            amount=daily - weekly)
        if weekly:
            self._held.append((member_id, weekly))
        return weekly

    async def release(self) -> None:
        held, self._held = self._held, []
        for member_id, amount in held:
            await antiabuse.release_cap(redis=self.redis, member_id=member_id, day=self.day, amount=amount)
            await antiabuse.release_weekly_cap(redis=self.redis, member_id=member_id, day=self.day,
                                               amount=amount)


async def complete_in(*, conn: BaseDBAsyncClient, hold: CapHold, rules: Rules, member_id: int, kind: str,
                      key: str, wanted: int, reason: str, now: datetime, note: str = "") -> int:
    """Inside the caller's transaction: mark the task `key` done and credit its points under
    both caps; returns the points granted. Raises IntegrityError when `key` was done before
    (the caller rolls back and calls `hold.release()`)."""
    # The unique key first: a concurrent duplicate waits here, then fails before the caps.
    row = await TaskCompletion.create(key=key, member_id=member_id, kind=kind, wanted=wanted, points=0,
                                      week=antiabuse.week_of(hold.day), created_at=now, using_db=conn)
    granted = await hold.take(member_id=member_id, wanted=wanted, rules=rules)
    if granted:
        await points.credit(conn=conn, member_id=member_id, amount=granted, reason=reason, key=key, now=now,
                            expiry_months=rules.points.expiry_months, capped_on=hold.day,
                            note=("capped" if granted < wanted else note)[:255])
        await TaskCompletion.filter(id=row.id).using_db(conn).update(points=granted)
    return granted


async def _complete(*, redis: Redis, rules: Rules, member_id: int, kind: str, key: str, wanted: int,
                    now: datetime, tz: ZoneInfo, note: str = "") -> TaskResult:
    hold = CapHold(redis=redis, day=business_day(now, tz))
    try:
        async with in_transaction() as conn:
            granted = await complete_in(conn=conn, hold=hold, rules=rules, member_id=member_id, kind=kind,
                                        key=key, wanted=wanted, reason="task", now=now, note=note)
    except IntegrityError:
        await hold.release()
        done = await TaskCompletion.get_or_none(key=key)
        if done is None:
            raise
        return TaskResult(key=key, member_id=done.member_id, kind=done.kind, points_awarded=done.points,
                          wanted=done.wanted, duplicate=True)
    except BaseException:
        await hold.release()
        raise
    return TaskResult(key=key, member_id=member_id, kind=kind, points_awarded=granted, wanted=wanted)


async def _earner(member_id: int) -> Member:
    member = await Member.get_or_none(id=member_id)
    if member is None:
        raise NotFound("member not found", code="member_not_found")
    if member.blacklisted or await antiabuse.is_blacklisted(member_id=member_id):
        raise Forbidden("this member cannot earn points", code="blacklisted")
    return member


def event_kinds(rules: Rules) -> list[str]:
    """The task kinds the brand's systems may report: every configured kind but `profile`."""
    return [kind for kind in rules.tasks.points if kind != PROFILE]


async def record_event(*, event_id: str, member_id: int, kind: str, now: datetime, tz: ZoneInfo,
                       redis: Redis, rules: Rules) -> TaskResult:
    """A task done elsewhere (POST /partner/events: a `review` after moderation): its points
    (rules.tasks.points[kind], 0 out of the box) once per `event_id`, under the daily cap (200)
    and the weekly cap (200 task points a Monday-Sunday business week of `tz`).

    The same event_id again returns the first result with `duplicate` true and changes nothing
    (a retry, however concurrent); with another member or kind it is 409 `event_id_reused`.
    422 `kind` for a kind that is not configured (event_kinds), 422 `event_id` for a malformed
    one (1-64 of A-Z a-z 0-9 _ . : -), 404 member_not_found, 403 blacklisted. The caller checks
    the partner's signature first and resolves `openid` to `member_id`; `now` is when the event
    is recorded (its business day and week). Returns a TaskResult: `points_awarded` of `wanted`
    (`capped` when a cap took some), `duplicate`; the ledger entry's key is `task:event:{event_id}`.
    """
    if not isinstance(event_id, str) or not _EVENT_ID.match(event_id):
        raise InvalidField("event_id", "must be 1 to 64 characters of A-Z a-z 0-9 _ . : -")
    if kind not in event_kinds(rules):
        raise InvalidField("kind", f"must be one of {', '.join(event_kinds(rules)) or 'the configured tasks'}")
    key = f"task:event:{event_id}"
    done = await TaskCompletion.get_or_none(key=key)
    if done is None:
        await _earner(member_id)
        result = await _complete(redis=redis, rules=rules, member_id=member_id, kind=kind, key=key,
                                 wanted=rules.tasks.points[kind], now=now, tz=tz, note=kind)
    else:
        result = TaskResult(key=key, member_id=done.member_id, kind=done.kind, points_awarded=done.points,
                            wanted=done.wanted, duplicate=True)
    if result.member_id != member_id or result.kind != kind:
        raise Conflict("this event_id was recorded for another member or kind", code="event_id_reused")
    return result


def profile_complete(member: Member) -> bool:
    """The card is activated with every field of the form (name, phone, birthday)."""
    return bool(member.card_activated and member.name and member.phone and member.birthday)


async def complete_profile(*, member_id: int, now: datetime, tz: ZoneInfo, redis: Redis,
                           rules: Rules) -> TaskResult | None:
    """Profile completion: rules.tasks.points["profile"] (e.g. 20) once per member when the card is
    activated with every field, under both caps. None when there is nothing to give (not
    complete, 0 points configured, or a blacklisted member)."""
    wanted = rules.tasks.points.get(PROFILE, 0)
    member = await Member.get_or_none(id=member_id)
    if wanted <= 0 or member is None or not profile_complete(member) or member.blacklisted:
        return None
    return await _complete(redis=redis, rules=rules, member_id=member_id, kind=PROFILE,
                           key=f"task:profile:{member_id}", wanted=wanted, now=now, tz=tz)


async def overview(*, member_id: int, now: datetime, tz: ZoneInfo, rules: Rules) -> dict:
    """GET /mp/tasks: each task with its points and what the member did of it this business
    week, and the week's task points against the weekly cap (from the ledger)."""
    today = business_day(now, tz)
    monday = antiabuse.week_of(today)
    member = await Member.get_or_none(id=member_id)
    if member is None:
        raise NotFound("member not found", code="member_not_found")
    week = {kind: (int(n), int(p or 0)) for kind, n, p in
            await TaskCompletion.filter(member_id=member_id, week=monday).group_by("kind")
            .annotate(n=Count("id"), p=Sum("points")).values_list("kind", "n", "p")}
    profile_done = await TaskCompletion.filter(key=f"task:profile:{member_id}").exists()
    share_points = max([int(p) for p in await Campaign.filter(kind="share").values_list("points", flat=True)]
                       or [0])
    items = [{"kind": PROFILE, "points": rules.tasks.points.get(PROFILE, 0), "repeat": "once",
              "done": profile_done or profile_complete(member),
              "done_this_week": week.get(PROFILE, (0, 0))[0], "points_this_week": week.get(PROFILE, (0, 0))[1]}]
    for kind in event_kinds(rules):
        items.append({"kind": kind, "points": rules.tasks.points[kind], "repeat": "each",
                      "done_this_week": week.get(kind, (0, 0))[0], "points_this_week": week.get(kind, (0, 0))[1]})
    items.append({"kind": SHARE, "points": share_points, "repeat": "each",
                  "done_this_week": week.get(SHARE, (0, 0))[0], "points_this_week": week.get(SHARE, (0, 0))[1]})
    total = await antiabuse.weekly_total(member_id=member_id, day=today)
    cap = rules.tasks.weekly_cap
    return {"week": {"start": monday.isoformat(), "end": (monday + timedelta(days=6)).isoformat(),
                     "points": total, "cap": cap, "left": max(0, cap - total)},
            "tasks": items}
