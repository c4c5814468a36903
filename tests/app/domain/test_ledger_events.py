"""The ledger tells its subscribers what it posted, inside the posting's transaction; points
imports none of them (pyproject's import contracts), so this is how card sync and the counters
learn of a change."""
from datetime import datetime, timedelta, timezone

import pytest
from tortoise.transactions import in_transaction

from app.domain import expiry, ledger_events, points
from app.models import AuditLog, LedgerEntry, Member, OutboxMessage
from tests.conftest import assert_ledger_consistent

NOW = datetime(2026, 11, 22, 4, 0, tzinfo=timezone.utc)


@pytest.fixture
def heard(db):
    """A subscriber that writes an audit row per posting in the caller's transaction."""
    seen: list[ledger_events.Posted] = []

    async def on_posted(conn, posted):
        seen.append(posted)
        await AuditLog.create(actor="test", action=f"heard.{posted.kind}", target=posted.entry.idempotency_key,
                              before=None, after={"balance": posted.balance}, using_db=conn)

    subscriber = ledger_events.Subscriber(name="test-heard", on_posted=on_posted)
    ledger_events.subscribe(subscriber)
    yield seen
    ledger_events._subscribers.remove(subscriber)


async def new_member(n: int = 1, **fields) -> Member:
    return await Member.create(appid="wx", openid=f"o-{n}", invite_code=f"CODE{n:04d}", **fields)


async def test_every_posting_reaches_the_subscribers_with_the_member_after_it(heard):
    m = await new_member()
    await points.award(member_id=m.id, amount=30, reason="task", key="task:1", now=NOW, expiry_months=12)
    async with in_transaction() as conn:
        await points.debit(conn=conn, member_id=m.id, amount=10, reason="redeem", key="rd:1", now=NOW,
                           keep_lots=True)
    async with in_transaction() as conn:
        await points.restore(conn=conn, member_id=m.id, debit_key="rd:1", amount=10, reason="release",
                             key="release:1", now=NOW)
    assert [(p.kind, p.entry.idempotency_key, p.balance, p.member["points"]) for p in heard] == [
        ("credit", "task:1", 30, 30), ("debit", "rd:1", 20, 20), ("restore", "release:1", 30, 30)]
    assert await AuditLog.filter(action__startswith="heard.").count() == 3
    await assert_ledger_consistent()


async def test_a_subscriber_is_inside_the_posting_s_transaction(heard):
    m = await new_member()
    with pytest.raises(RuntimeError):
        async with in_transaction() as conn:
            await points.credit(conn=conn, member_id=m.id, amount=5, reason="task", key="task:rolled",
                                now=NOW, expiry_months=12)
            raise RuntimeError("the caller fails after the credit")
    # The subscriber's row went with the entry: neither exists.
    assert not await LedgerEntry.filter(idempotency_key="task:rolled").exists()
    assert not await AuditLog.filter(target="task:rolled").exists()


async def test_subscribing_twice_is_once(heard):
    before = len(ledger_events.subscribers())
    ledger_events.subscribe(ledger_events.Subscriber(name="test-heard"))
    assert len(ledger_events.subscribers()) == before
    m = await new_member()
    await points.award(member_id=m.id, amount=1, reason="task", key="task:once", now=NOW, expiry_months=12)
    assert len(heard) == 1


async def test_card_sync_is_subscribed_in_domain_tests_as_in_the_app(db):
    # The db fixture installs app.domain.wiring like create_app: a card holder's change is queued.
    m = await new_member(card_code="C1", card_id="card")
    posting = await points.award(member_id=m.id, amount=7, reason="task", key="task:card", now=NOW,
                                 expiry_months=12)
    assert await OutboxMessage.filter(key=f"card:{posting.entry.id}", channel="card").exists()


async def test_expiry_runs_the_bulk_hooks_in_the_chunk_s_statement(db):
    calls: list[ledger_events.BulkPosted] = []

    def bulk(posted: ledger_events.BulkPosted):
        calls.append(posted)
        pg = posted.dialect == "postgres"
        action, at = ((f"${posted.first_param}::text", f"${posted.first_param + 1}::timestamptz") if pg
                      else (f"?{posted.first_param}", f"?{posted.first_param + 1}"))
        # One audit row per entry just posted, from the relation the chunk names.
        return (f"INSERT INTO audit_log (actor, action, target, created_at) "
                f"SELECT 'test', {action}, 'entry:' || posted.id, {at} FROM {posted.posted}",
                ["bulk." + posted.reason,
                 NOW if posted.dialect == "postgres" else NOW.isoformat(" ")])

    subscriber = ledger_events.Subscriber(name="test-bulk", bulk=bulk)
    ledger_events.subscribe(subscriber)
    try:
        members = [await new_member(n) for n in range(1, 4)]
        for m in members:
            await points.award(member_id=m.id, amount=10, reason="task", key=f"task:{m.id}", now=NOW,
                               expiry_months=12)
        result = await expiry.expire_due(now=NOW + timedelta(days=400), chunk=2)
    finally:
        ledger_events._subscribers.remove(subscriber)
    assert result.lots == 3 and result.chunks == 2 and len(calls) == 2
    expired = await LedgerEntry.filter(reason="expire").values_list("id", flat=True)
    targets = await AuditLog.filter(action="bulk.expire").values_list("target", flat=True)
    assert sorted(targets) == sorted(f"entry:{i}" for i in expired) and len(targets) == 3
    await assert_ledger_consistent()
