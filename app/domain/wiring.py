"""The domain assembled: who listens to the ledger and what follows a new member.

`install()` fills the ledger's subscribers (app/domain/ledger_events.py) and the members'
"member created" / "unionid known" steps (app/domain/members.py). Every process that runs
domain code calls it once before: `create_app`, the worker's resources app (jobs run, card
reconcile, the worker) and the tests' `db` fixture. Installing twice changes nothing.

A new consumer of the ledger (stored value, costs...) or a new effect of joining (a new-member
pack) is added here, never by importing it into points.py or members.py.
"""
from __future__ import annotations

from app import metrics
from app.domain import (campaigns, card, costs, coupons, experiments, ledger_events, members, payments, referral,
                        tiers, wecom)


async def _count_posting(conn, posted: ledger_events.Posted) -> None:
    # points_issued_total / points_spent_total by reason; a restore's lapse was never counted
    # (it is not an earning nor a member's spend), and is not now.
    if posted.kind in ("credit", "restore"):
        metrics.POINTS_ISSUED.labels(reason=posted.entry.reason).inc(int(posted.entry.delta))
    elif posted.kind == "debit":
        metrics.POINTS_SPENT.labels(reason=posted.entry.reason).inc(-int(posted.entry.delta))


def _count_bulk(done: ledger_events.BulkDone) -> None:
    metrics.POINTS_SPENT.labels(reason=done.reason).inc(done.points)


async def _start_trial(joined: members.Joined) -> bool:
    # 0元升级 (rule trial_tier), when enabled: first, so a pending payment credited next counts in it.
    return bool(await tiers.start_trial(member_id=joined.member.id, rules=joined.rules, now=joined.now))


async def _bind_referral(joined: members.Joined) -> bool:
    if joined.invite_code:
        await referral.bind(invitee=joined.member, invite_code=joined.invite_code, source="login",
                            now=joined.now)
    return False


async def _credit_pending_payments(joined: members.Joined) -> bool:
    # Orders paid before the payer was a member are credited now (once: pay:{transaction_id}).
    # The registering INSERT says whether any wait (PostgreSQL): most new members have none.
    if not getattr(joined.member, "_payments_waiting", True):
        return False
    return bool(await payments.credit_pending(member=joined.member, now=joined.now, tz=joined.tz,
                                              redis=joined.redis, rules=joined.rules))


async def _give_new_member_pack(joined: members.Joined) -> bool:
    # 新人礼包 (rule new_member_pack): once per member, a grant under a unique key.
    return bool(await campaigns.give_new_member_pack(member_id=joined.member.id, now=joined.now, rules=joined.rules))


async def _link_wecom(member_id: int, unionid: str, now) -> None:
    # 企业微信 customers waiting for this unionid are linked now.
    await wecom.link_member(member_id=member_id, unionid=unionid, now=now)


def install() -> None:
    """Subscribe card sync and the points counters to the ledger; hang referral binding and
    pending payment credits and the new-member pack on a new member, 企业微信 linking on a known unionid. In this order:
    the order they ran in before they were subscribers."""
    ledger_events.subscribe(ledger_events.Subscriber(name="card", on_posted=card.on_posted, bulk=card.on_bulk))
    ledger_events.subscribe(ledger_events.Subscriber(name="metrics", on_posted=_count_posting,
                                                     after_bulk=_count_bulk))
    costs.install()  # points spent in the mall and stored-value bonus spent are benefit costs
    coupons.on_redeemed(experiments.note_redeemed)
    members.on_created("trial_tier", _start_trial)
    members.on_created("referral", _bind_referral)
    members.on_created("pending_payments", _credit_pending_payments)
    members.on_created("new_member_pack", _give_new_member_pack)
    members.on_unionid("wecom", _link_wecom)
