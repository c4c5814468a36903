"""`python -m app serve` with WORKERS=2 on PostgreSQL + Redis: one worker killed with SIGKILL
under retrying check-in and pay-notify traffic. Afterwards `ledger verify` is clean and every
member holds exactly what the 2xx answers promised."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
from pathlib import Path

import aiohttp
import pytest

from bench.harness import free_port, wait_up
from miniprogram_stub.simulator import pay as sim
from tests.conftest import ADMIN_TOKEN, MP_APPID, MP_SECRET
from tests.faults import traffic

pytestmark = [pytest.mark.faults, pytest.mark.postgres]

ROOT = Path(__file__).resolve().parents[2]
MEMBERS = 16
PAYMENTS = 4
DEADLINE = 40.0


def _children(pid: int) -> list[int]:
    found = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        found += [int(p) for p in (task / "children").read_text().split()]
    return found


@pytest.fixture
async def served(migrated, redis_url, simulator, db):
    """The server as production runs it, two workers sharing the port; yields (base URL, pid)."""
    port = free_port()
    env = {**os.environ, "DATABASE_URL": migrated, "REDIS_URL": redis_url, "WORKERS": "2",
           "HOST": "127.0.0.1", "PORT": str(port), "LOG_LEVEL": "ERROR", "ADMIN_TOKEN": ADMIN_TOKEN,
           "WECHAT_API_BASE": str(simulator.make_url("")).rstrip("/"),
           "WECHAT_MP_APPID": MP_APPID, "WECHAT_MP_SECRET": MP_SECRET,
           "WECHAT_PAY_APIV3_KEY": sim.SANDBOX_APIV3_KEY.decode(),
           "WECHAT_PAY_PUBLIC_KEY_ID": sim.SANDBOX_PUBLIC_KEY_ID,
           "WECHAT_PAY_PUBLIC_KEY": str(sim.PLATFORM_PUBLIC_KEY_PATH)}
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "app", "serve", "--no-migrate", env=env,
                                                cwd=ROOT, stdout=asyncio.subprocess.DEVNULL)
    try:
        await wait_up(f"http://127.0.0.1:{port}/healthz", proc, seconds=60)
        for _ in range(100):  # both workers up
            if len(_children(proc.pid)) >= 2:
                break
            await asyncio.sleep(0.1)
        yield f"http://127.0.0.1:{port}", proc.pid
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 15)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()


async def test_a_worker_killed_mid_traffic(served, migrated):
    base, pid = served
    book = traffic.Book()
    timeout = aiohttp.ClientTimeout(total=10)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        async def send(method, path, headers, body):
            async with session.request(method, base + path, headers=headers, data=body) as resp:
                text = await resp.text()
                return resp.status, json.loads(text) if text.startswith("{") else None

        members = []
        for i in range(MEMBERS):
            openid = f"o-kill-{i}"
            status, body = await send("POST", "/mp/login", {}, json.dumps({"code": f"sim:{openid}"}).encode())
            assert status == 200, body
            members.append((body["member"]["id"], body["token"], openid))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + DEADLINE
        killed = []

        async def kill_one():
            await asyncio.sleep(0.4)
            victim = _children(pid)[0]
            os.kill(victim, signal.SIGKILL)
            killed.append(victim)

        async def member_traffic(member_id, token, openid, i):
            await asyncio.sleep(0.03 * i)
            for k in range(PAYMENTS):
                await traffic.pay(book, send, member_id=member_id, openid=openid, appid=MP_APPID,
                                  fen=1000 * (k + 1), deadline=deadline)
                if k == 1:  # on the business day the server names
                    try:
                        status, cal = await send("GET", "/mp/checkin/calendar",
                                                 {"Authorization": f"Bearer {token}"}, None)
                    except (aiohttp.ClientError, ConnectionError):  # it reached the killed worker
                        status, cal = 0, None
                    day = cal["today"] if status == 200 else None
                    if day:
                        await traffic.check_in(book, send, member_id=member_id, token=token, day=day,
                                               deadline=deadline)

        await asyncio.gather(kill_one(), *(member_traffic(*m, i) for i, m in enumerate(members)))
    assert killed and len(_children(pid)) == 1  # one worker left, serving alone
    assert not book.gave_up, sorted(book.gave_up)[:5]
    summary = await traffic.check_against_ledger(book)
    assert summary["applied"] == summary["requests"]  # every request retried to an answer: once each
    print("worker SIGKILL:", summary, dict(book.statuses))
    verify = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "app", "ledger", "verify", "--quiet", cwd=ROOT,
        env={**os.environ, "DATABASE_URL": migrated},
        stdout=asyncio.subprocess.PIPE)
    out, _ = await asyncio.wait_for(verify.communicate(), 60)
    assert verify.returncode == 0 and b"0 broken" in out, out
