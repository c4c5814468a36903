"""Profile completion (a task, once) through the official account's one-click card activation."""
from app.models import Member
from tests.handlers.wechat.test_oa_webhook import (  # noqa: F401 - the same fixtures and helpers
    aes_key, event, member, reply_timeout, say, settings)
from tests.conftest import ADMIN_TOKEN


async def test_card_activation_completes_the_profile_once(client, member, sim_state):  # noqa: F811
    resp = await client.patch("/admin/rules", headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
                              json={"tasks": {"points": {"profile": 20}}})
    assert resp.status == 200
    mp, oa_openid = await member("profile")
    form = {"name": "韩梅梅", "phone": "13900139000", "birthday": "1992-02-29"}
    for code in ("code-1", "code-2"):
        ticket = sim_state.new_activate_ticket(form)
        reply = await say(client, event(oa_openid, "submit_membercard_user_info", CardId="p-card",
                                        UserCardCode=code, ActivateTicket=ticket))
        assert "积分 20" in reply
    assert (await Member.get(id=mp.id)).points == 20
