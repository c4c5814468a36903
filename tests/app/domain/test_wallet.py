"""The wallet ledger: lots of principal and bonus, proportional spends, refunds into the lots
taken, recharge reversals that never clamp in silence, bonus expiry; and its invariant."""
import asyncio
from datetime import timedelta

import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st
from tortoise.transactions import in_transaction

from app.domain import wallet
from app.models import Member, Recharge, WalletEntry
from tests.conftest import shanghai

pytestmark = pytest.mark.smoke

NOW = shanghai(2026, 12, 1, 10, 0)


async def member(openid: str = "o-w") -> Member:
    return await Member.create(appid="wx", openid=openid, invite_code=openid[-12:])


async def recharge(m: Member, principal: int, bonus: int, *, n: int, valid_days: int | None = None,
                   now=NOW) -> Recharge:
    row = await Recharge.create(out_trade_no=f"rc-test-{m.id}-{n}", member_id=m.id, principal_fen=principal,
                                bonus_fen=bonus, bonus_valid_days=valid_days, status="paid")
    wallet_id = await wallet.ensure(member_id=m.id)
    async with in_transaction() as conn:
        await wallet.credit(conn=conn, member_id=m.id, wallet_id=wallet_id, principal_fen=principal,
                            bonus_fen=bonus, reason="recharge", key=f"recharge:{row.id}", now=now,
                            bonus_expires_at=now + timedelta(days=valid_days) if valid_days else None,
                            recharge_id=row.id)
    return row


async def spend(m: Member, amount: int, key: str, now=NOW) -> wallet.Taken:
    async with in_transaction() as conn:
        return await wallet.debit(conn=conn, member_id=m.id, amount_fen=amount, reason="spend",
                                  key=f"spend:{key}", now=now)


async def assert_wallets_consistent() -> None:
    assert await wallet.check() == []


def test_split_is_proportional_and_exact():
    assert wallet.split(1100, wallet.Balance(50000, 5000)) == (1000, 100)
    assert wallet.split(1, wallet.Balance(1, 1)) == (1, 0)  # principal first by at most 1 fen
    assert wallet.split(3, wallet.Balance(1, 2)) == (1, 2)
    for amount in range(0, 60):
        p, b = wallet.split(amount, wallet.Balance(37, 23))
        assert p + b == amount and p <= 37 and b <= 23


async def test_spend_takes_in_proportion_and_refund_returns_those_shares(db):
    m = await member()
    await recharge(m, 50000, 5000, n=1)
    taken = await spend(m, 11000, "o1")
    assert (taken.principal_fen, taken.bonus_fen) == (10000, 1000)
    assert await wallet.balance(member_id=m.id) == wallet.Balance(40000, 4000)
    async with in_transaction() as conn:
        await wallet.restore(conn=conn, member_id=m.id, debit_key="spend:o1", principal_fen=5000, bonus_fen=500,
                             reason="unspend", key="unspend:r1", now=NOW)
    assert await wallet.balance(member_id=m.id) == wallet.Balance(45000, 4500)
    with pytest.raises(ValueError):
        async with in_transaction() as conn:
            await wallet.restore(conn=conn, member_id=m.id, debit_key="spend:o1", principal_fen=5001,
                                 bonus_fen=0, reason="unspend", key="unspend:r2", now=NOW)
    await assert_wallets_consistent()


async def test_overdraw_is_409_and_changes_nothing(db):
    m = await member()
    await recharge(m, 1000, 100, n=1)
    with pytest.raises(wallet.InsufficientBalance) as err:
        await spend(m, 1101, "big")
    assert err.value.status == 409 and err.value.code == "insufficient_balance"
    assert await wallet.balance(member_id=m.id) == wallet.Balance(1000, 100)
    assert not await WalletEntry.filter(reason="spend").exists()
    await assert_wallets_consistent()


async def test_refund_of_a_recharge_returns_unspent_principal_and_shows_what_was_spent(db):
    m = await member()
    first = await recharge(m, 50000, 5000, n=1)
    await spend(m, 22000, "o1")  # 20000 principal + 2000 bonus, all from the only recharge
    async with in_transaction() as conn:
        out = await wallet.reverse_recharge(conn=conn, member_id=m.id, recharge_id=first.id, now=NOW)
    assert (out.refund_fen, out.bonus_taken_back_fen) == (30000, 3000)
    assert (out.principal_spent_fen, out.bonus_spent_fen) == (20000, 2000)
    assert await wallet.balance(member_id=m.id) == wallet.Balance(0, 0)
    await assert_wallets_consistent()


async def test_bonus_expires_principal_never(db):
    m = await member()
    await recharge(m, 10000, 1000, n=1, valid_days=30)
    assert await wallet.expire(now=NOW + timedelta(days=29)) == 0
    assert await wallet.expire(now=NOW + timedelta(days=30)) == 1000
    assert await wallet.expire(now=NOW + timedelta(days=3000)) == 0
    assert await wallet.balance(member_id=m.id) == wallet.Balance(10000, 0)
    await assert_wallets_consistent()


async def test_a_spend_never_takes_expired_bonus(db):
    m = await member()
    await recharge(m, 10000, 1000, n=1, valid_days=30)
    taken = await spend(m, 5000, "late", now=NOW + timedelta(days=31))
    assert (taken.principal_fen, taken.bonus_fen) == (5000, 0)
    await assert_wallets_consistent()


@pytest.mark.postgres
async def test_fifty_concurrent_spends_never_overdraw(db):
    m = await member()
    await recharge(m, 9000, 1000, n=1)  # 10000 fen: room for exactly 33 spends of 300
    results = await asyncio.gather(*(spend(m, 300, f"race-{i}") for i in range(50)), return_exceptions=True)
    ok = [r for r in results if isinstance(r, wallet.Taken)]
    refused = [r for r in results if isinstance(r, wallet.InsufficientBalance)]
    assert len(ok) == 33 and len(refused) == 17, [r for r in results if not isinstance(r, (wallet.Taken, wallet.InsufficientBalance))]
    assert (await wallet.balance(member_id=m.id)).balance_fen == 100
    await assert_wallets_consistent()


@pytest.mark.postgres
async def test_spends_racing_a_recharge_refund(db):
    m = await member()
    row = await recharge(m, 10000, 1000, n=1)

    async def refund():
        async with in_transaction() as conn:
            return await wallet.reverse_recharge(conn=conn, member_id=m.id, recharge_id=row.id, now=NOW)

    results = await asyncio.gather(refund(), *(spend(m, 550, f"r-{i}") for i in range(20)), return_exceptions=True)
    out = results[0]
    spent = sum(r.total_fen for r in results[1:] if isinstance(r, wallet.Taken))
    # Every fen is either spent, refunded or taken back; none vanishes, none is paid twice.
    assert spent + out.refund_fen + out.bonus_taken_back_fen == 11000
    assert out.principal_spent_fen + out.bonus_spent_fen == spent
    assert await wallet.balance(member_id=m.id) == wallet.Balance(0, 0)
    await assert_wallets_consistent()


# -- property: random recharges, spends, refunds and expiries against a model ------------------

operation = st.one_of(
    st.tuples(st.just("recharge"), st.integers(1, 50_000), st.integers(0, 5_000), st.sampled_from([None, 10])),
    st.tuples(st.just("spend"), st.integers(1, 40_000)),
    st.tuples(st.just("unspend"), st.integers(0, 30), st.integers(1, 100)),
    st.tuples(st.just("refund"), st.integers(0, 30)),
    st.tuples(st.just("days"), st.integers(1, 12)),
)


class WalletModel:
    """The wallet as plain Python: lots per side, consumed in the documented order, refunds of a
    spend given back into the lots taken (newest take first), a recharge refund = what is left
    of its own lots."""

    def __init__(self):
        self.lots: list[dict] = []  # {"id", "side", "left", "expires"}
        self.spends: list[dict] = []  # {"key", "uses": [[lot, amount, restored]], "p", "b", "back_p", "back_b"}

    def expire(self, now):
        for lot in self.lots:
            if lot["side"] == "b" and lot["expires"] is not None and lot["expires"] <= now:
                lot["left"] = 0

    def balance(self) -> wallet.Balance:
        return wallet.Balance(sum(x["left"] for x in self.lots if x["side"] == "p"),
                              sum(x["left"] for x in self.lots if x["side"] == "b"))

    def take(self, side, amount, uses):
        if side == "p":
            order = sorted((x for x in self.lots if x["side"] == "p"), key=lambda x: x["n"])
        else:
            bonus = [x for x in self.lots if x["side"] == "b"]
            order = (sorted((x for x in bonus if x["expires"] is not None), key=lambda x: (x["expires"], x["n"]))
                     + sorted((x for x in bonus if x["expires"] is None), key=lambda x: x["n"]))
        for lot in order:
            take = min(lot["left"], amount)
            if take:
                lot["left"] -= take
                amount -= take
                uses.append([lot, take, 0])
        assert amount == 0

    def give(self, uses, side, amount):
        for use in reversed(uses):
            if use[0]["side"] != side:
                continue
            give = min(use[1] - use[2], amount)
            use[2] += give
            use[0]["left"] += give
            amount -= give


@given(ops=st.lists(operation, min_size=1, max_size=25))
@hsettings(max_examples=40, deadline=None, suppress_health_check=list(HealthCheck))
async def test_random_operations_keep_the_invariant_and_refund_what_the_model_says(db, ops):
    m = await member(f"o-prop-{await Member.all().count()}")
    model, now, n = WalletModel(), NOW, 0
    for op in ops:
        if op[0] == "recharge":
            n += 1
            row = await recharge(m, op[1], op[2], n=n, valid_days=op[3], now=now)
            expires = now + timedelta(days=op[3]) if op[3] else None
            model.lots.append({"id": row.id, "n": 2 * n, "side": "p", "left": op[1], "expires": None})
            if op[2]:
                model.lots.append({"id": row.id, "n": 2 * n + 1, "side": "b", "left": op[2], "expires": expires})
        elif op[0] == "spend":
            before = model.balance()
            key = f"s{len(model.spends)}-{m.id}"
            if op[1] > before.balance_fen:
                with pytest.raises(wallet.InsufficientBalance):
                    await spend(m, op[1], key, now=now)
                continue
            taken = await spend(m, op[1], key, now=now)
            assert (taken.principal_fen, taken.bonus_fen) == wallet.split(op[1], before)
            uses: list = []
            model.take("p", taken.principal_fen, uses)
            model.take("b", taken.bonus_fen, uses)
            model.spends.append({"key": f"spend:{key}", "uses": uses, "p": taken.principal_fen,
                                 "b": taken.bonus_fen, "back_p": 0, "back_b": 0})
        elif op[0] == "unspend" and model.spends:
            s = model.spends[op[1] % len(model.spends)]
            give_p = (s["p"] - s["back_p"]) * op[2] // 100
            give_b = (s["b"] - s["back_b"]) * op[2] // 100
            if not (give_p or give_b):
                continue
            async with in_transaction() as conn:
                await wallet.restore(conn=conn, member_id=m.id, debit_key=s["key"], principal_fen=give_p,
                                     bonus_fen=give_b, reason="unspend",
                                     key=f"un{s['key']}:{s['back_p']}:{s['back_b']}", now=now)
            s["back_p"], s["back_b"] = s["back_p"] + give_p, s["back_b"] + give_b
            model.give(s["uses"], "p", give_p)
            model.give(s["uses"], "b", give_b)
        elif op[0] == "refund" and model.lots:
            target = model.lots[op[1] % len(model.lots)]["id"]
            if any(x.get("refunded") for x in model.lots if x["id"] == target):
                continue
            async with in_transaction() as conn:
                out = await wallet.reverse_recharge(conn=conn, member_id=m.id, recharge_id=target, now=now)
            model.expire(now)
            mine = {x["side"]: x for x in model.lots if x["id"] == target}
            assert out.refund_fen == mine["p"]["left"]
            assert out.bonus_taken_back_fen == (mine["b"]["left"] if "b" in mine else 0)
            for lot in mine.values():
                lot["left"], lot["refunded"] = 0, True
        elif op[0] == "days":
            now += timedelta(days=op[1])
        await wallet.expire(now=now)
        model.expire(now)
        assert await wallet.balance(member_id=m.id) == model.balance()
        assert await wallet.check() == []


async def test_bonus_spent_is_told_to_subscribers_inside_the_spend(db):
    told = []

    async def subscriber(*, conn, member_id, bonus_fen, key, now):
        told.append((member_id, bonus_fen, key))

    wallet.on_bonus_spent(subscriber)
    try:
        m = await member()
        await recharge(m, 50000, 5000, n=1)
        await spend(m, 11000, "o-cost")
        with pytest.raises(wallet.InsufficientBalance):
            await spend(m, 10**9, "o-too-much")
    finally:
        wallet._BONUS_SPENT.remove(subscriber)
    assert told == [(m.id, 1000, "spend:o-cost:bonus")]
