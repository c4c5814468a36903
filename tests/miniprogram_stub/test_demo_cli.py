"""`python -m miniprogram_stub demo|pay|refund` against the real app."""
import asyncio
import sys

import pytest

from miniprogram_stub import __main__ as cli
from miniprogram_stub import client as stub
from miniprogram_stub.simulator import pay as sim
from tests.conftest import MP_APPID, assert_ledger_consistent


@pytest.fixture
def settings(settings):
    return settings.with_(pay_apiv3_key=sim.SANDBOX_APIV3_KEY.decode(),
                          pay_public_key_id=sim.SANDBOX_PUBLIC_KEY_ID,
                          pay_public_key_path=str(sim.PLATFORM_PUBLIC_KEY_PATH))


@pytest.fixture
async def no_member_day(client):
    """The demo pays at the wall clock's time: with member day off its figures hold on any day."""
    from app.domain import rules
    from app.models import Rule

    await Rule.filter(key="member_day").update(value={"weekday": 3, "multiplier": 1.0})
    rules.forget()


def base(client) -> str:
    return str(client.make_url("")).rstrip("/")


async def test_demo_prints_what_the_member_sees(client, no_member_day):
    lines: list[str] = []
    code = await stub.run_demo(base=base(client), openid="o-demo", appid=MP_APPID, out=lines.append)
    text = "\n".join(lines)
    assert code == 0, text
    assert "Member card activated" in text and "Checked in" in text
    assert "Paid ¥128.00" in text and "HTTP 204" in text
    # 5 for the check-in, 128 for ¥128: the member's view and the ledger agree.
    assert "133 points" in text
    assert "purchase" in text and "checkin" in text
    await assert_ledger_consistent()


async def test_pay_and_refund_commands(client, login, capsys, no_member_day):
    member = await login("o-cli")
    args = cli.build_parser().parse_args(["pay", "--openid", "o-cli", "--amount", "10000", "--appid", MP_APPID,
                                          "--transaction-id", "4200cli1", "--base", base(client)])
    assert await cli._run(args) == 0
    args = cli.build_parser().parse_args(["refund", "--transaction-id", "4200cli1", "--amount", "5000",
                                          "--total", "10000", "--base", base(client)])
    assert await cli._run(args) == 0
    out = capsys.readouterr().out
    assert "transaction 4200cli1: HTTP 204" in out and "HTTP 204" in out.splitlines()[-1]
    assert (await (await member.get("/mp/me")).json())["points"] == 50
    await assert_ledger_consistent()


async def test_member_client_raises_the_envelope(client):
    async with stub.MiniProgramMember(base=base(client), openid="o-twice") as member:
        await member.login()
        await member.check_in()
        with pytest.raises(stub.ApiError) as caught:
            await member.check_in()
    assert caught.value.status == 409 and caught.value.code == "already_checked_in"


async def test_help():
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "miniprogram_stub", "demo", "--help",
                                                stdout=asyncio.subprocess.PIPE)
    out, _ = await proc.communicate()
    assert proc.returncode == 0 and b"--base" in out
