"""The command line: --help everywhere, and `ledger verify` finding a broken member."""
import os
import subprocess
import sys

import pytest

from app.__main__ import build_parser
from app.config import Settings

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "app", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, **(env or {})})


@pytest.mark.parametrize("argv", [[], ["serve"], ["migrate"], ["worker"], ["jobs"], ["jobs", "run"],
                                  ["ledger", "verify"], ["card", "reconcile"],
                                  ["oa", "menu", "push"]])
def test_every_command_has_help(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args([*argv, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: python -m app" in out and len(out) > 150


async def test_ledger_verify_reports_broken_members(db, migrated, redis_url):
    from datetime import datetime, timezone

    from app.domain import points
    from app.models import Member

    good = await Member.create(appid="wx", openid="o-good", invite_code="GOODCODE")
    bad = await Member.create(appid="wx", openid="o-bad", invite_code="BADCODE1")
    now = datetime(2026, 11, 22, tzinfo=timezone.utc)
    for m in (good, bad):
        await points.award(member_id=m.id, amount=50, reason="task", key=f"t:{m.id}", now=now, expiry_months=12)
    env = {"DATABASE_URL": migrated}
    ok = run("ledger", "verify", "--quiet", env=env)
    assert ok.returncode == 0, ok.stderr
    assert "checked 2 members: 0 broken" in ok.stdout
    # A balance changed behind the ledger's back is found and named.
    await Member.filter(id=bad.id).update(points=999)
    broken = run("ledger", "verify", "--quiet", env=env)
    assert broken.returncode == 1
    assert f"member {bad.id}: balance 999, entries 50, unspent lots 50" in broken.stdout
    assert "checked 2 members: 1 broken" in broken.stdout


def test_sandbox_admin_token_is_made_once_and_kept_owner_only(tmp_path):
    from app.__main__ import sandbox_admin_token

    settings = Settings(data_dir=tmp_path / "data")
    token = sandbox_admin_token(settings)
    assert len(token) >= 32
    assert sandbox_admin_token(settings) == token  # a restart keeps the dashboard link
    assert (tmp_path / "data" / "admin_token").stat().st_mode & 0o777 == 0o600


async def test_make_run_serve_makes_an_admin_token_and_prints_the_dashboard(tmp_path, migrated, redis_url):
    """Sandbox mode, ADMIN_TOKEN unset: `serve --sandbox-admin-token` (make run) makes a token,
    prints the dashboard URL with it, and the admin API takes it."""
    import asyncio
    import re

    import aiohttp

    from bench.harness import free_port

    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("WECHAT_") and k != "ADMIN_TOKEN"}
    env.update(DATABASE_URL=migrated, REDIS_URL=redis_url, DATA_DIR=str(tmp_path), PORT=str(port),
               HOST="127.0.0.1", SCHEDULER_IN_SERVE="0", LOG_LEVEL="WARNING")
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "app", "serve", "--no-migrate",
                                                "--sandbox-admin-token", cwd=ROOT, env=env,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    try:
        banner = ""
        while "dashboard:" not in banner:
            line = await asyncio.wait_for(proc.stdout.readline(), 60)
            assert line, f"serve exited: {banner}"
            banner += line.decode()
        found = re.search(rf"dashboard: http://127\.0\.0\.1:{port}/admin/#token=(\S+)", banner)
        assert found, banner
        token = found.group(1)
        assert (tmp_path / "admin_token").read_text().strip() == token
        async with aiohttp.ClientSession() as http:
            for _ in range(100):
                try:
                    async with http.get(f"http://127.0.0.1:{port}/healthz") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientError:
                    pass
                await asyncio.sleep(0.2)
            async with http.get(f"http://127.0.0.1:{port}/admin/rules",
                                headers={"Authorization": f"Bearer {token}"}) as resp:
                assert resp.status == 200
            async with http.get(f"http://127.0.0.1:{port}/admin/rules",
                                headers={"Authorization": "Bearer wrong"}) as resp:
                assert resp.status == 401
    finally:
        proc.terminate()
        await asyncio.wait_for(proc.wait(), 20)


async def test_ledger_verify_checks_wallets_too(db, migrated, redis_url):
    from datetime import datetime, timezone

    from tortoise.transactions import in_transaction

    from app.domain import wallet
    from app.models import Member, Wallet

    m = await Member.create(appid="wx", openid="o-wallet", invite_code="WALLET01")
    wallet_id = await wallet.ensure(member_id=m.id)
    async with in_transaction() as conn:
        await wallet.credit(conn=conn, member_id=m.id, wallet_id=wallet_id, principal_fen=50000, bonus_fen=5000,
                            reason="recharge", key="recharge:test", now=datetime(2026, 12, 1, tzinfo=timezone.utc))
    env = {"DATABASE_URL": migrated}
    ok = run("ledger", "verify", "--quiet", env=env)
    assert ok.returncode == 0 and "checked their wallets: 0 broken" in ok.stdout, ok.stdout + ok.stderr
    await Wallet.filter(id=wallet_id).update(bonus_fen=9999)
    broken = run("ledger", "verify", "--quiet", env=env)
    assert broken.returncode == 1
    assert f"member {m.id}: wallet bonus 9999 fen, entries 5000, unspent lots 5000" in broken.stdout
