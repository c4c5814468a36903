"""A/B tests of rewards (app/domain/experiments.py): sticky deterministic arms, once per member,
the arm's coupon, the population, and the results against hand-computed fixtures."""
from __future__ import annotations

import asyncio
from datetime import datetime, timedelta, timezone
from zoneinfo import ZoneInfo

import pytest

from app.domain import costs, coupons, experiments, members, payments, rules, stats
from app.errors import Conflict, InvalidField, NotFound
from app.models import AuditLog, Coupon, CostEntry, ExperimentAssignment, Member, MemberScore, Payment

TZ = ZoneInfo("Asia/Shanghai")
NOW = datetime(2026, 11, 23, 10, 0, tzinfo=TZ)


def spec(**over) -> dict:
    body = {
        "key": "repurchase-coupon", "name": "9折券 vs 满减券",
        "arms": [{"key": "discount", "weight": 45, "reward": {"discount_percent": 90, "valid_days": 7}},
                 {"key": "amount", "weight": 45, "reward": {"amount_fen": 1000, "min_spend_fen": 5000,
                                                            "valid_days": 7}},
                 {"key": "holdout", "weight": 10, "holdout": True}],
        "population": {"segment": "silent"}, "metric": {"kind": "repurchase", "days": 14},
        "horizon_days": 30, "starts_at": NOW.isoformat(),
    }
    body.update(over)
    return body


async def new_members(n: int, segment: str | None = None, start: int = 0) -> list[Member]:
    openids = [f"o-exp-{start + i}" for i in range(n)]
    await Member.bulk_create([Member(appid="wx-test-mp", openid=o, invite_code=members.new_invite_code(),
                                     created_at=NOW - timedelta(days=200)) for o in openids])
    made = await Member.filter(openid__in=openids).order_by("id")
    if segment:
        await MemberScore.bulk_create([MemberScore(member_id=m.id, recency=0, frequency=0, monetary=0,
                                                   segment=segment, computed_at=NOW) for m in made])
    return made


@pytest.mark.smoke
def test_the_arm_is_a_deterministic_hash_honouring_the_weights():
    arms = [{"key": "a", "weight": 9}, {"key": "b", "weight": 1}]
    picks = [experiments.arm_for(salt="s1", member_id=m, arms=arms) for m in range(20_000)]
    assert picks == [experiments.arm_for(salt="s1", member_id=m, arms=arms) for m in range(20_000)]
    assert not stats.sample_ratio(sizes=[picks.count("a"), picks.count("b")], weights=[9, 1]).mismatch
    other = [experiments.arm_for(salt="s2", member_id=m, arms=arms) for m in range(20_000)]
    assert other != picks  # the salt reshuffles: experiments are independent of each other


async def test_create_is_validated_and_audited(db):
    exp = await experiments.create(body=spec(), actor="op", now=NOW)
    assert exp.control == "discount" and exp.ends_at == NOW + timedelta(days=30)
    audit = await AuditLog.get(action="experiment.create")
    assert audit.actor == "op" and audit.after["key"] == "repurchase-coupon"
    with pytest.raises(Conflict) as taken:
        await experiments.create(body=spec(), actor="op", now=NOW)
    assert taken.value.code == "experiment_exists"
    bad = [
        (spec(key="x2", arms=[{"key": "h", "weight": 1, "holdout": True,
                              "reward": {"amount_fen": 100, "valid_days": 3}},
                             {"key": "b", "weight": 1, "reward": {"amount_fen": 100, "valid_days": 3}}]), "arms.0"),
        (spec(key="x3", population={"segment": "vip"}), "population"),
        (spec(key="x4", metric={"kind": "clicks", "days": 3}), "metric.kind"),
        (spec(key="x5", control="nope"), "body"),
        (spec(key="x6", arms=[{"key": "a", "weight": 1, "reward": {"valid_days": 3}},
                              {"key": "b", "weight": 1, "holdout": True}]), "arms.0.reward"),
        (spec(key="x7", horizon_days=0), "horizon_days"),
    ]
    for body, where in bad:
        with pytest.raises(InvalidField) as refused:
            await experiments.create(body=body, actor="op", now=NOW)
        assert refused.value.message.startswith(where), (where, refused.value.message)
    assert await AuditLog.filter(action="experiment.create").count() == 1


@pytest.mark.smoke
async def test_an_assignment_is_sticky_and_grants_its_arms_coupon_once(db):
    exp = await experiments.create(body=spec(), actor="op", now=NOW)
    ms = await new_members(40)
    first = [await experiments.assign(key=exp.key, member_id=m.id, now=NOW + timedelta(hours=1)) for m in ms]
    again = [await experiments.assign(key=exp.key, member_id=m.id, now=NOW + timedelta(days=2)) for m in ms]
    assert [(a.id, a.arm, a.assigned_at) for a in first] == [(a.id, a.arm, a.assigned_at) for a in again]
    for a, m in zip(first, ms):
        assert a.arm == experiments.arm_for(salt=exp.salt, member_id=m.id, arms=exp.arms)
        assert (a.coupon_id is None) == (a.arm == "holdout")
    assert await Coupon.all().count() == sum(a.arm != "holdout" for a in first)
    coupon = await Coupon.filter(issue_key=f"exp:{exp.key}:{ms[0].id}").prefetch_related("template").first()
    if coupon is not None:
        assert coupon.expires_at - coupon.valid_from == timedelta(days=7)
    # before the start and after the horizon a new member is not assigned
    late = (await new_members(1, start=100))[0]
    assert await experiments.assign(key=exp.key, member_id=late.id, now=NOW + timedelta(days=30)) is None
    assert await experiments.assign(key=exp.key, member_id=late.id, now=NOW - timedelta(seconds=1)) is None
    with pytest.raises(NotFound):
        await experiments.assign(key="nope", member_id=late.id, now=NOW)


@pytest.mark.postgres
async def test_concurrent_assignments_of_one_member_store_one_row_and_one_coupon(db):
    exp = await experiments.create(body=spec(arms=[
        {"key": "a", "weight": 1, "reward": {"amount_fen": 500, "valid_days": 7}},
        {"key": "b", "weight": 1, "reward": {"amount_fen": 500, "valid_days": 3}}]), actor="op", now=NOW)
    m = (await new_members(1))[0]
    got = await asyncio.gather(*(experiments.assign(key=exp.key, member_id=m.id, now=NOW + timedelta(minutes=i))
                                 for i in range(30)), return_exceptions=True)
    assert not [g for g in got if isinstance(g, Exception)], got
    assert len({g.id for g in got}) == 1 and len({g.arm for g in got}) == 1
    assert await ExperimentAssignment.all().count() == 1
    assert await Coupon.all().count() == 1
    assert (await ExperimentAssignment.get()).coupon_id == (await Coupon.get()).id


async def test_enroll_assigns_the_segment_once(db):
    exp = await experiments.create(body=spec(), actor="op", now=NOW)
    await new_members(120, segment="silent")
    first = await experiments.enroll(key=exp.key, now=NOW + timedelta(hours=1))
    second = await experiments.enroll(key=exp.key, now=NOW + timedelta(hours=2))
    assert first == {"population": 120, "assigned": 120} and second == {"population": 120, "assigned": 0}
    sizes = {arm: await ExperimentAssignment.filter(arm=arm).count() for arm in ("discount", "amount", "holdout")}
    assert sum(sizes.values()) == 120 and all(sizes.values())
    assert await Coupon.all().count() == sizes["discount"] + sizes["amount"]


async def test_a_campaign_population_is_who_holds_its_coupons(db):
    exp = await experiments.create(body=spec(key="camp", population={"campaign": "spring"}), actor="op", now=NOW)
    ms = await new_members(3)
    tpl = await coupons.template(key="spring", name="春季券", amount_fen=500)
    await coupons.issue(member_id=ms[0].id, template=tpl, issue_key=f"campaign:spring:{ms[0].id}", now=NOW)
    await coupons.issue(member_id=ms[1].id, template=tpl, issue_key=f"share:spring:{ms[1].id}:x", now=NOW)
    await coupons.issue(member_id=ms[2].id, template=tpl, issue_key=f"campaign:autumn:{ms[2].id}", now=NOW)
    assert await experiments.population_ids(exp) == [ms[0].id, ms[1].id]


async def _arms(exp, member_ids: dict[str, list[int]], at: datetime) -> None:
    await ExperimentAssignment.bulk_create([ExperimentAssignment(experiment_id=exp.id, member_id=m, arm=arm,
                                                                 assigned_at=at)
                                            for arm, ids in member_ids.items() for m in ids])


async def _pay(redis, member_id: int, when: datetime, n: int, refunded: int = 0) -> None:
    """Through the real payment (and refund) path, whose transactions keep the conversions."""
    member = await Member.get(id=member_id)
    current = await rules.load(fresh=True)
    await payments.record_payment(redis=redis, rules=current, appid=member.appid, transaction_id=f"t-exp-{n}",
                                  out_trade_no=f"o-{n}", openid=member.openid, total_fen=10_000,
                                  payer_total_fen=10_000, paid_at=when, now=when, tz=TZ)
    if refunded:
        await payments.record_refund(rules=current, refund_id=f"r-exp-{n}", transaction_id=f"t-exp-{n}",
                                     refund_fen=refunded, now=when + timedelta(hours=1))


async def test_repurchase_results_against_a_hand_computed_fixture(db, redis):
    exp = await experiments.create(body=spec(arms=[
        {"key": "control", "weight": 1, "reward": {"amount_fen": 1000, "valid_days": 7}},
        {"key": "treated", "weight": 1, "reward": {"discount_percent": 90, "valid_days": 7}}]), actor="op", now=NOW)
    ms = [m.id for m in await new_members(200)]
    control, treated = ms[:100], ms[100:]
    at = NOW + timedelta(hours=1)
    await _arms(exp, {"control": control, "treated": treated}, at)
    n = 0
    for m in control[:10]:  # 10 of 100 repurchase within 14 days
        n += 1
        await _pay(redis, m, at + timedelta(days=3), n)
    for m in treated[:20]:  # 20 of 100: one of them twice (counted once)
        n += 1
        await _pay(redis, m, at + timedelta(days=13, hours=23), n)
    await _pay(redis, treated[0], at + timedelta(days=1), 999)
    # not conversions: after 14 days, before the assignment, and a fully refunded order
    await _pay(redis, control[50], at + timedelta(days=14, seconds=1), 1001)
    await _pay(redis, control[51], at - timedelta(minutes=1), 1002)
    await _pay(redis, treated[60], at + timedelta(days=2), 1003, refunded=10_000)
    # the treated arm's coupons: 6 redeemed at 10 % of 150 yuan = 15 yuan each → 90 yuan
    for i, m in enumerate(treated[:6]):
        await costs.record(conn=None, kind="coupon", amount_fen=1500, key=f"c:{i}", now=at, member_id=m,
                           experiment=exp.key, arm="treated")
    got = await experiments.results(key=exp.key, now=NOW + timedelta(days=60))
    c, t = got["arms"]
    assert (c["arm"], c["members"], c["conversions"], c["rate"], c["control"]) == ("control", 100, 10, 0.1, True)
    assert (t["members"], t["conversions"], t["rate"]) == (100, 20, 0.2)
    # lift 0.1; se = √(0.2·0.8/100 + 0.1·0.9/100) = 0.05; CI 0.1 ± 0.098 = (0.002, 0.198)
    # pooled 0.15: se₀ = √(0.15·0.85·0.02) = 0.0504975; z = 1.980295 (z² = 3.92157); p = 0.047670
    assert t["lift"] == pytest.approx(0.1) and t["lift_ci"] == pytest.approx([0.002002, 0.197998], abs=1e-6)
    assert t["z"] == pytest.approx(1.980295, abs=1e-6) and t["p_value"] == pytest.approx(0.047670, abs=1e-6)
    assert t["relative_lift"] == pytest.approx(1.0)
    assert (t["cost_fen"], t["cost_per_conversion_fen"], t["cost_per_member_fen"]) == (9000, 450.0, 90.0)
    assert c["cost_fen"] == 0 and c["cost_per_conversion_fen"] == 0.0
    assert got["sample_ratio"]["mismatch"] is False and got["sample_ratio"]["chi2"] == 0
    assert got["complete"] is True
    # as of two days after: only what happened by then
    early = await experiments.results(key=exp.key, now=at + timedelta(days=3, minutes=1))
    assert [a["conversions"] for a in early["arms"]] == [10, 1] and early["complete"] is False


async def test_a_broken_split_is_flagged(db):
    exp = await experiments.create(body=spec(arms=[
        {"key": "a", "weight": 1, "reward": {"amount_fen": 1000, "valid_days": 7}},
        {"key": "b", "weight": 1, "reward": {"amount_fen": 1000, "valid_days": 3}}]), actor="op", now=NOW)
    ms = [m.id for m in await new_members(1000)]
    await _arms(exp, {"a": ms[:560], "b": ms[560:]}, NOW)  # 560/440: χ² = 14.4, p = 0.000148
    got = await experiments.results(key=exp.key, now=NOW + timedelta(days=1))
    assert got["sample_ratio"]["chi2"] == 14.4 and got["sample_ratio"]["mismatch"] is True


async def test_redemption_within_the_window_is_the_conversion(db):
    costs.install()
    exp = await experiments.create(body=spec(key="validity", metric={"kind": "redemption", "days": 3}, arms=[
        {"key": "d7", "weight": 1, "reward": {"amount_fen": 1000, "valid_days": 7}},
        {"key": "d3", "weight": 1, "reward": {"amount_fen": 1000, "valid_days": 3}}]), actor="op", now=NOW)
    ms = await new_members(30)
    at = NOW + timedelta(hours=1)
    assigned = [await experiments.assign(key=exp.key, member_id=m.id, now=at) for m in ms]
    by_arm: dict[str, list] = {"d7": [], "d3": []}
    for a in assigned:
        by_arm[a.arm].append(a)
    assert by_arm["d7"] and by_arm["d3"]
    inside = by_arm["d7"][0]
    late = by_arm["d7"][1] if len(by_arm["d7"]) > 1 else None
    for a, when in ((inside, at + timedelta(days=2)), (by_arm["d3"][0], at + timedelta(hours=5))):
        coupon = await Coupon.get(id=a.coupon_id)
        await coupons.redeem(code=coupon.code, operator="shop", now=when)
    if late is not None:  # redeemed on day 4: valid still (7 days), but outside the 3-day metric
        coupon = await Coupon.get(id=late.coupon_id)
        await coupons.redeem(code=coupon.code, operator="shop", now=at + timedelta(days=4))
    got = await experiments.results(key=exp.key, now=at + timedelta(days=10))
    arms = {a["arm"]: a for a in got["arms"]}
    assert arms["d7"]["conversions"] == 1 and arms["d3"]["conversions"] == 1
    # each redemption's cost is tagged with its arm: the late one costs, though it did not convert
    assert arms["d7"]["cost_fen"] == 1000 * (2 if late else 1) and arms["d3"]["cost_fen"] == 1000
    assert await CostEntry.filter(experiment="validity").count() == (3 if late else 2)


@pytest.mark.smoke
async def test_a_refund_moves_the_conversion_to_the_next_order_or_takes_it_away(db, redis):
    exp = await experiments.create(body=spec(arms=[
        {"key": "a", "weight": 1, "reward": {"amount_fen": 1000, "valid_days": 7}},
        {"key": "b", "weight": 1, "reward": {"amount_fen": 1000, "valid_days": 3}}]), actor="op", now=NOW)
    m = (await new_members(1))[0]
    at = NOW + timedelta(hours=1)
    await experiments.assign(key=exp.key, member_id=m.id, now=at)
    await _pay(redis, m.id, at + timedelta(days=2), 1)
    await _pay(redis, m.id, at + timedelta(days=5), 2)
    stamp = lambda: ExperimentAssignment.get(member_id=m.id).values_list("converted_at", flat=True)  # noqa: E731
    assert await stamp() == (at + timedelta(days=2)).astimezone(timezone.utc)
    current = await rules.load(fresh=True)
    await payments.record_refund(rules=current, refund_id="r-1", transaction_id="t-exp-1", refund_fen=10_000,
                                 now=at + timedelta(days=6))
    assert await stamp() == (at + timedelta(days=5)).astimezone(timezone.utc)
    await payments.record_refund(rules=current, refund_id="r-2a", transaction_id="t-exp-2", refund_fen=4_000,
                                 now=at + timedelta(days=6))
    assert await stamp() is not None  # a partial refund leaves a paid order
    await payments.record_refund(rules=current, refund_id="r-2b", transaction_id="t-exp-2", refund_fen=6_000,
                                 now=at + timedelta(days=6))
    assert await stamp() is None
    got = await experiments.results(key=exp.key, now=at + timedelta(days=30))
    assert sum(a["conversions"] for a in got["arms"]) == 0
