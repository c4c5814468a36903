"""PostgreSQL crashed and restarted, Redis killed and restarted empty, under check-in and
pay-notify traffic that retries: afterwards the ledger explains every point, nothing lost,
nothing doubled."""
from __future__ import annotations

import asyncio
import json

import pytest

from app import keys
from app.domain.clock import business_day
from bench.harness import pg_admin
from miniprogram_stub.simulator import pay as sim
from tests.conftest import MP_APPID
from tests.faults import traffic

pytestmark = [pytest.mark.faults, pytest.mark.postgres]

MEMBERS = 10
PAYMENTS = 3
DEADLINE = 40.0  # seconds the traffic may take, faults included


@pytest.fixture
def settings(settings):
    return settings.with_(redis_timeout=0.5, db_statement_timeout=1.0,
                          pay_apiv3_key=sim.SANDBOX_APIV3_KEY.decode(), pay_public_key_id=sim.SANDBOX_PUBLIC_KEY_ID,
                          pay_public_key_path=str(sim.PLATFORM_PUBLIC_KEY_PATH))


def _sender(c) -> traffic.Send:
    async def send(method, path, headers, body):
        async with c.request(method, path, headers=headers, data=body) as resp:
            text = await resp.text()
            return resp.status, json.loads(text) if text.startswith("{") else None
    return send


async def _logged_in(send) -> list[tuple[int, str, str]]:
    members = []
    for i in range(MEMBERS):
        openid = f"o-fault-{i}"
        status, body = await send("POST", "/mp/login", {}, json.dumps({"code": f"sim:{openid}"}).encode())
        assert status == 200, body
        members.append((body["member"]["id"], body["token"], openid))
    return members


async def _traffic(c, members, *, fault) -> traffic.Book:
    """Every member checks in once and pays PAYMENTS times, all at once, while `fault` runs."""
    book, send = traffic.Book(), _sender(c)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    day = business_day(c.app[keys.clock_key].now(), c.app[keys.settings_key].tz).isoformat()

    async def member_traffic(member_id, token, openid, i):
        await asyncio.sleep(0.02 * i)
        await traffic.check_in(book, send, member_id=member_id, token=token, day=day, deadline=deadline)
        for k in range(PAYMENTS):
            await traffic.pay(book, send, member_id=member_id, openid=openid, appid=MP_APPID,
                              fen=1000 * (k + 1), deadline=deadline)

    await asyncio.gather(fault(), *(member_traffic(*m, i) for i, m in enumerate(members)))
    assert not book.gave_up, f"no definitive answer by the deadline: {sorted(book.gave_up)[:5]}"
    return book


async def _private_database(private_postgres) -> str:
    from app.__main__ import _migrate
    from app.config import Settings

    await pg_admin(private_postgres.url, "DROP DATABASE IF EXISTS faults WITH (FORCE)")
    await pg_admin(private_postgres.url, "CREATE DATABASE faults")
    url = private_postgres.url.rsplit("/", 1)[0] + "/faults"
    await _migrate(Settings(database_url=url), quiet=True)
    return url


async def test_postgres_crash_and_restart_under_traffic(aiohttp_client, settings, private_postgres, redis):
    from app.main import create_app

    await redis.flushdb()
    url = await _private_database(private_postgres)
    c = await aiohttp_client(create_app(settings.with_(database_url=url)))
    members = await _logged_in(_sender(c))

    async def crash():
        await asyncio.sleep(0.15)
        await private_postgres.stop()  # immediate: in-flight transactions are cut off
        await asyncio.sleep(1.0)
        await private_postgres.start()

    book = await _traffic(c, members, fault=crash)
    assert book.faults_seen, "the crash did not hit any request"
    summary = await traffic.check_against_ledger(book)
    # Every request was retried to a definitive answer, so each applied exactly once (a few
    # 409 already_checked_in: the attempt whose answer the crash cut off had committed).
    assert summary["applied"] == summary["requests"] == MEMBERS * (1 + PAYMENTS)
    print("postgres crash:", summary, dict(book.statuses))


async def test_redis_killed_and_restarted_empty_under_traffic(aiohttp_client, client, settings, private_redis):
    """Sessions are lost with Redis: members log in again (the client's 401 path); the pay
    nonces and the cap counters are rebuilt (the cap from the ledger)."""
    from app.main import create_app

    c = await aiohttp_client(create_app(settings.with_(redis_url=private_redis.url)))
    send = _sender(c)
    members = await _logged_in(send)
    openids = {f"Bearer {token}": openid for _, token, openid in members}
    current: dict[str, str] = {}  # the Authorization a member started with -> its latest one

    async def relogging(method, path, headers, body):
        first = headers.get("Authorization")
        status, answer = await send(method, path, {"Authorization": current.get(first, first)} if first else headers,
                                    body)
        if status == 401 and first:  # the session went with Redis: the mini-program logs in again
            again, login = await send("POST", "/mp/login", {},
                                      json.dumps({"code": f"sim:{openids[first]}"}).encode())
            if again == 200:
                current[first] = f"Bearer {login['token']}"
            return 503, answer  # and retries
        return status, answer

    async def crash():
        await asyncio.sleep(0.15)
        await private_redis.kill()
        private_redis.restore(None)
        await asyncio.sleep(0.5)
        await private_redis.start()

    book, loop = traffic.Book(), asyncio.get_running_loop()
    deadline = loop.time() + DEADLINE
    day = business_day(c.app[keys.clock_key].now(), c.app[keys.settings_key].tz).isoformat()

    async def member_traffic(member_id, token, openid, i):
        await asyncio.sleep(0.02 * i)
        await traffic.check_in(book, relogging, member_id=member_id, token=token, day=day, deadline=deadline)
        for k in range(PAYMENTS):
            await traffic.pay(book, send, member_id=member_id, openid=openid, appid=MP_APPID,
                              fen=1000 * (k + 1), deadline=deadline)

    await asyncio.gather(crash(), *(member_traffic(*m, i) for i, m in enumerate(members)))
    assert not book.gave_up
    assert book.faults_seen, "the kill did not hit any request"
    summary = await traffic.check_against_ledger(book)
    assert summary["applied"] == summary["requests"] == MEMBERS * (1 + PAYMENTS)
    print("redis kill:", summary, dict(book.statuses))
