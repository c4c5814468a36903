"""Login's side effects hang on the "member created" and "unionid known" steps that members.py
runs (filled by app/domain/wiring.py), not on imports back into members.py."""
import pytest

from app.domain import members
from app.models import Member


@pytest.fixture
def steps():
    """Record what the steps are told; removed again after the test."""
    created: list[members.Joined] = []
    unionids: list[tuple[int, str]] = []

    async def on_created(joined: members.Joined) -> bool:
        created.append(joined)
        # A step that changes the member's row says so: login reads the row again.
        await Member.filter(id=joined.member.id).update(name="set by a step")
        return True

    async def on_unionid(member_id: int, unionid: str, now) -> None:
        unionids.append((member_id, unionid))

    members.on_created("test-step", on_created)
    members.on_unionid("test-step", on_unionid)
    yield created, unionids
    members._created[:] = [s for s in members._created if s[0] != "test-step"]
    members._unionid[:] = [s for s in members._unionid if s[0] != "test-step"]


async def test_a_new_member_runs_the_step_once_a_returning_one_never(client, steps):
    created, unionids = steps
    resp = await client.post("/mp/login", json={"code": "sim:o-step", "invite_code": "ABCDEFGH"})
    body = await resp.json()
    assert resp.status == 200 and body["is_new"] is True
    assert [(j.member.openid, j.invite_code) for j in created] == [("o-step", "ABCDEFGH")]
    assert body["member"]["name"] == "set by a step"  # read again after the step changed it
    resp = await client.post("/mp/login", json={"code": "sim:o-step"})
    assert resp.status == 200 and (await resp.json())["is_new"] is False
    assert len(created) == 1 and unionids == []
    # The unionid step runs when a unionid becomes known, for a returning member too, once.
    resp = await client.post("/mp/login", json={"code": "sim:o-step:u-step"})
    member_id = (await resp.json())["member"]["id"]
    await client.post("/mp/login", json={"code": "sim:o-step:u-step"})
    assert unionids == [(member_id, "u-step")] and len(created) == 1


async def test_the_wiring_runs_referral_binding_before_pending_credits():
    from app.domain import wiring

    wiring.install()
    wiring.install()  # twice is once
    names = [name for name, _ in members._created]
    assert names.index("referral") < names.index("pending_payments")
    assert names.count("referral") == 1 and [n for n, _ in members._unionid].count("wecom") == 1
