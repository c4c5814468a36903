"""The ledger: idempotent, oldest lots first, never negative by spending, debt paid first."""
import asyncio
from datetime import datetime, timedelta, timezone

import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from app.domain import points
from app.errors import InsufficientPoints
from app.models import LedgerEntry, Member
from tests.conftest import assert_ledger_consistent

NOW = datetime(2026, 11, 22, 4, 0, tzinfo=timezone.utc)


async def new_member(n: int = 1) -> Member:
    return await Member.create(appid="wx", openid=f"o-{n}", invite_code=f"CODE{n:04d}")


async def test_award_is_idempotent_per_key(db):
    m = await new_member()
    first = await points.award(member_id=m.id, amount=30, reason="task", key="task:1", now=NOW, expiry_months=12)
    again = await points.award(member_id=m.id, amount=30, reason="task", key="task:1", now=NOW, expiry_months=12)
    assert first.created and not again.created and again.entry.id == first.entry.id
    assert again.balance == 30
    assert first.entry.expires_at == datetime(2027, 11, 22, 4, 0, tzinfo=timezone.utc)
    await assert_ledger_consistent()


async def test_spend_uses_oldest_lots_first(db):
    m = await new_member()
    old = await points.award(member_id=m.id, amount=10, reason="a", key="a", now=NOW, expiry_months=12)
    new = await points.award(member_id=m.id, amount=10, reason="b", key="b",
                             now=NOW + timedelta(days=30), expiry_months=12)
    await points.spend(member_id=m.id, amount=15, reason="redeem", key="s1", now=NOW)
    lots = {e.id: e.remaining for e in await LedgerEntry.filter(member_id=m.id, delta__gt=0)}
    assert lots == {old.entry.id: 0, new.entry.id: 5}
    with pytest.raises(InsufficientPoints):
        await points.spend(member_id=m.id, amount=6, reason="redeem", key="s2", now=NOW)
    assert not await LedgerEntry.filter(idempotency_key="s2").exists()
    await assert_ledger_consistent()


async def test_negative_balance_is_paid_back_first(db):
    m = await new_member()
    await points.award(member_id=m.id, amount=100, reason="pay", key="pay:1", now=NOW, expiry_months=12)
    await points.spend(member_id=m.id, amount=80, reason="redeem", key="r1", now=NOW)
    from tortoise.transactions import in_transaction

    async with in_transaction() as conn:
        posting = await points.debit(conn=conn, member_id=m.id, amount=100, reason="refund",
                                     key="refund:1", now=NOW, allow_negative=True)
    assert posting.balance == -80
    await assert_ledger_consistent()
    earn = await points.award(member_id=m.id, amount=50, reason="task", key="t", now=NOW, expiry_months=12)
    assert earn.balance == -30 and earn.entry.remaining == 0
    await assert_ledger_consistent()
    earn = await points.award(member_id=m.id, amount=50, reason="task", key="t2", now=NOW, expiry_months=12)
    assert earn.balance == 20
    assert (await LedgerEntry.get(id=earn.entry.id)).remaining == 20
    await assert_ledger_consistent()


async def test_adjust_manual(db):
    from tortoise.transactions import in_transaction

    async def adjust(delta, key):
        async with in_transaction() as conn:
            return await points.adjust(conn=conn, member_id=m.id, delta=delta, reason="admin", key=key,
                                       now=NOW, expiry_months=12)

    m = await new_member()
    await adjust(40, "admin:1")
    await adjust(-15, "admin:2")
    assert (await Member.get(id=m.id)).points == 25
    with pytest.raises(InsufficientPoints):
        await adjust(-26, "admin:3")
    await assert_ledger_consistent()


async def test_fifty_concurrent_spends_never_overdraw(db):
    m = await new_member()
    await points.award(member_id=m.id, amount=100, reason="pay", key="seed", now=NOW, expiry_months=12)

    async def one(i):
        try:
            await points.spend(member_id=m.id, amount=7, reason="redeem", key=f"spend:{i}", now=NOW)
            return True
        except InsufficientPoints:
            return False

    results = await asyncio.gather(*[one(i) for i in range(50)])
    assert sum(results) == 14  # 14 × 7 = 98 ≤ 100 < 105
    assert (await Member.get(id=m.id)).points == 2
    await assert_ledger_consistent()


async def test_concurrent_duplicates_award_once(db):
    m = await new_member()
    postings = await asyncio.gather(*[
        points.award(member_id=m.id, amount=9, reason="task", key="dup", now=NOW, expiry_months=12)
        for _ in range(30)])
    assert sum(p.created for p in postings) == 1
    assert (await Member.get(id=m.id)).points == 9
    await assert_ledger_consistent()


operation = st.one_of(
    st.tuples(st.just("award"), st.integers(0, 500)),
    st.tuples(st.just("spend"), st.integers(1, 400)),
    st.tuples(st.just("refund"), st.integers(1, 300)),
    st.tuples(st.just("repeat"), st.integers(0, 50)),
)


@hsettings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=st.lists(operation, min_size=1, max_size=25))
async def test_invariant_after_random_sequences(db, ops):
    from tortoise.transactions import in_transaction

    await LedgerEntry.all().delete()
    await Member.all().delete()
    m = await new_member()
    expected, keys = 0, []
    for n, (kind, amount) in enumerate(ops):
        key = f"{kind}:{n}"
        if kind == "award":
            await points.award(member_id=m.id, amount=amount, reason="t", key=key,
                               now=NOW + timedelta(days=n), expiry_months=12)
            expected += amount
        elif kind == "spend":
            try:
                await points.spend(member_id=m.id, amount=amount, reason="s", key=key, now=NOW)
                expected -= amount
            except InsufficientPoints:
                assert expected < amount
                continue  # refused: nothing was written under this key
        elif kind == "refund":
            async with in_transaction() as conn:
                await points.debit(conn=conn, member_id=m.id, amount=amount, reason="refund",
                                   key=key, now=NOW, allow_negative=True)
            expected -= amount
        elif keys:
            # A retry of an earlier cause changes nothing.
            old = keys[amount % len(keys)]
            await points.award(member_id=m.id, amount=999, reason="t", key=old, now=NOW, expiry_months=12)
        if kind != "repeat":
            keys.append(key)
        assert (await Member.get(id=m.id)).points == expected
    await assert_ledger_consistent()


async def _restore(m, debit_key: str, amount: int, key: str, now: datetime):
    from tortoise.transactions import in_transaction

    async with in_transaction() as conn:
        return await points.restore(conn=conn, member_id=m.id, debit_key=debit_key, amount=amount,
                                    reason="release", key=key, now=now)


async def _hold(m, amount: int) -> None:
    from tortoise.transactions import in_transaction

    async with in_transaction() as conn:
        await points.debit(conn=conn, member_id=m.id, amount=amount, reason="redeem", key="hold", now=NOW, keep_lots=True)


async def test_restore_gives_back_into_the_same_lots_once_and_pays_a_debt_first(db):
    from tortoise.exceptions import IntegrityError

    m = await new_member()
    old = await points.award(member_id=m.id, amount=10, reason="a", key="a", now=NOW, expiry_months=12)
    new = await points.award(member_id=m.id, amount=10, reason="b", key="b", now=NOW + timedelta(days=30),
                             expiry_months=12)
    await _hold(m, 15)
    await points.spend(member_id=m.id, amount=20, reason="refund", key="debt", now=NOW, allow_negative=True)
    assert (await Member.get(id=m.id)).points == -15
    posting = await _restore(m, "hold", 15, "release:1", NOW + timedelta(days=40))
    assert posting.balance == 0  # the debt took the whole return: no lot gains anything
    await assert_ledger_consistent()
    with pytest.raises(IntegrityError):
        await _restore(m, "hold", 15, "release:1", NOW + timedelta(days=40))
    with pytest.raises(ValueError):  # nothing left of the hold to give back
        await _restore(m, "hold", 1, "release:2", NOW + timedelta(days=40))
    await points.award(member_id=m.id, amount=3, reason="c", key="c", now=NOW, expiry_months=12)
    assert {e.id: e.remaining for e in await LedgerEntry.filter(member_id=m.id, delta__gt=0, expires_at__isnull=False)} \
        == {old.entry.id: 0, new.entry.id: 0, (await LedgerEntry.get(idempotency_key="c")).id: 3}
    await assert_ledger_consistent()


async def test_restore_with_an_expired_lot_and_a_debt_keeps_the_invariant(db):
    m = await new_member()
    await points.award(member_id=m.id, amount=10, reason="a", key="a", now=NOW, expiry_months=12)
    await points.award(member_id=m.id, amount=10, reason="b", key="b", now=NOW + timedelta(days=300),
                       expiry_months=12)
    await _hold(m, 15)
    await points.spend(member_id=m.id, amount=8, reason="refund", key="debt", now=NOW, allow_negative=True)
    assert (await Member.get(id=m.id)).points == -3
    # A year on, lot "a" (10 of the hold) has lapsed; lot "b" (5 of it) still runs.
    posting = await _restore(m, "hold", 15, "release:x", NOW + timedelta(days=366))
    assert posting.balance == -3 + 5  # the 10 of lot "a" expire at once
    assert await LedgerEntry.filter(idempotency_key="release:x:expired", delta=-10, reason="expire").exists()
    await assert_ledger_consistent()
