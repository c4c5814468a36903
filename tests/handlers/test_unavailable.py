"""A dependency down or black-holed: 503 `unavailable` with Retry-After, fast, and nothing half-done.

Redis at a closed port and at a listener that accepts and never answers; PostgreSQL behind a
proxy the test cuts, freezes and restores (bench/harness.Forwarder).
"""
from __future__ import annotations

import asyncio
import socket
from urllib.parse import urlsplit

import pytest

from app import keys
from app.models import Checkin, LedgerEntry, Payment
from bench.harness import Forwarder, black_hole
from tests.conftest import ADMIN_TOKEN, assert_ledger_consistent
from tests.handlers.wechat.test_oa_webhook import post as oa_post
from tests.handlers.wechat.test_oa_webhook import text as oa_text
from tests.handlers.wechat.test_pay_notify import signed_payment, v2_payment
from miniprogram_stub.simulator.wechat import SANDBOX_OA_APPID, SANDBOX_OA_SECRET
from miniprogram_stub.simulator import pay as sim

REDIS_TIMEOUT = 0.5
DB_TIMEOUT = 0.5
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}


@pytest.fixture
def settings(settings):
    return settings.with_(
        redis_timeout=REDIS_TIMEOUT, db_statement_timeout=DB_TIMEOUT,
        pay_apiv3_key=sim.SANDBOX_APIV3_KEY.decode(), pay_public_key_id=sim.SANDBOX_PUBLIC_KEY_ID,
        pay_public_key_path=str(sim.PLATFORM_PUBLIC_KEY_PATH), pay_v2_key=sim.SANDBOX_V2_KEY,
        oa_appid=SANDBOX_OA_APPID, oa_secret=SANDBOX_OA_SECRET, oa_token="oa-test-token",
        oa_aes_key="abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _timed(call):
    loop = asyncio.get_running_loop()
    started = loop.time()
    resp = await call
    return resp, loop.time() - started


async def _assert_unavailable(resp, elapsed: float, budget: float) -> None:
    assert resp.status == 503, await resp.text()
    assert int(resp.headers["Retry-After"]) >= 1
    assert elapsed < budget, f"took {elapsed:.2f} s"


async def _assert_envelope(resp) -> None:
    body = await resp.json()
    assert body["error"]["code"] == "unavailable", body


async def _every_entry_point(c, token: str, openid: str, budget: float, *, pay_needs_redis: bool = True) -> str:
    """Check-in, login, /mp/me, pay notify (APIv3 and v2) and an OA push all answer 503 in time."""
    member = {"Authorization": f"Bearer {token}"}
    for call in (c.post("/mp/checkin", headers=member), c.get("/mp/me", headers=member),
                 c.post("/mp/login", json={"code": f"sim:{openid}"})):
        resp, elapsed = await _timed(call)
        await _assert_unavailable(resp, elapsed, budget)
        await _assert_envelope(resp)
    headers, body, tid = signed_payment(openid=openid, fen=1000)
    resp, elapsed = await _timed(c.post("/wechat/pay/notify", data=body, headers=headers))
    if pay_needs_redis:
        await _assert_unavailable(resp, elapsed, budget)
    else:  # exactly-once rests on transaction_id: a payment needs only the database
        assert resp.status == 204, await resp.text()
    resp, elapsed = await _timed(c.post("/wechat/pay/notify/v2", data=v2_payment(openid, 1000, "4200v2down")))
    if pay_needs_redis:
        await _assert_unavailable(resp, elapsed, budget)
    else:
        assert resp.status == 200, await resp.text()
    return tid
    status, _, raw = await oa_post(c, oa_text("o-oa-down", "签到"))
    assert status == 503, raw


@pytest.mark.parametrize("where", ["closed_port", "black_hole"])
async def test_redis_down_is_503_everywhere_in_time(aiohttp_client, client, login, settings, where):
    from app.main import create_app

    m = await login("o-redis-down")
    async with black_hole() as hole:
        port = hole if where == "black_hole" else _closed_port()
        c = await aiohttp_client(create_app(settings.with_(redis_url=f"redis://127.0.0.1:{port}/0")))
        # A command gives up after REDIS_TIMEOUT; a request makes a few before it fails.
        tid = await _every_entry_point(c, m.token, "o-redis-down", budget=4 * REDIS_TIMEOUT + 1,
                                       pay_needs_redis=False)
        # The admin API needs no Redis for a member's record: it keeps answering the truth.
        resp = await c.get(f"/admin/members/{m.id}", headers=ADMIN)
        assert resp.status == 200, await resp.text()
    assert await Checkin.all().count() == 0
    assert sorted(await Payment.all().values_list("transaction_id", flat=True)) == sorted([tid, "4200v2down"])
    assert await LedgerEntry.exclude(reason="purchase").count() == 0
    await assert_ledger_consistent()


@pytest.fixture
async def pg_proxy(settings):
    parts = urlsplit(settings.database_url)
    proxy = Forwarder(parts.hostname, parts.port or 5432)
    await proxy.start()
    yield proxy
    await proxy.close()


@pytest.mark.postgres
@pytest.mark.parametrize("fault", ["cut", "freeze"])
async def test_database_down_is_503_and_nothing_half_done(aiohttp_client, client, login, settings, pg_proxy,
                                                          redis, fault):
    from app.main import create_app

    m = await login("o-pg-down")
    c = await aiohttp_client(create_app(settings.with_(database_url=pg_proxy.url(settings.database_url))))
    assert (await c.get("/mp/me", headers=m.headers)).status == 200
    if fault == "cut":
        await pg_proxy.cut()
    else:
        pg_proxy.freeze()
    # A frozen server costs a statement DB_TIMEOUT + 1 s (the client's own deadline), once or twice.
    budget = 2 * (DB_TIMEOUT + 1) + 1
    await _every_entry_point(c, m.token, "o-pg-down", budget=budget)
    resp, elapsed = await _timed(c.get(f"/admin/members/{m.id}", headers=ADMIN))
    await _assert_unavailable(resp, elapsed, budget)
    await _assert_envelope(resp)
    headers, body, tid = signed_payment(openid="o-pg-down", fen=2000)
    resp = await c.post("/wechat/pay/notify", data=body, headers=headers)
    assert resp.status == 503

    await pg_proxy.restore()
    # Nothing of the failed requests stayed behind: no cap reserved for a check-in that did not
    # happen, and WeChat's retry of the notification is applied (once, by its transaction_id).
    app_redis = c.app[keys.redis_key]
    assert not [k async for k in app_redis.scan_iter("cap:{cap:*}:*")]
    for _ in range(20):  # the pool notices the dead connections and opens new ones
        resp = await c.post("/mp/checkin", headers=m.headers)
        if resp.status != 503:
            break
        await asyncio.sleep(0.2)
    assert resp.status == 200, await resp.text()
    assert (await c.post("/wechat/pay/notify", data=body, headers=headers)).status == 204
    assert await Payment.filter(transaction_id=tid).count() == 1
    me = await (await c.get("/mp/me", headers=m.headers)).json()
    assert me["points"] == 5 + 20  # the check-in, and 1 point a yuan of the 20-yuan payment
    await assert_ledger_consistent()


@pytest.mark.postgres
async def test_checkin_whose_transaction_fails_releases_its_cap(client, login, redis, monkeypatch):
    """The cap was reserved in Redis, then the database went away: 503, the reservation given back."""
    import asyncpg

    from app.domain import checkin, points

    m = await login("o-half")

    async def lost(*args, **kw):
        raise asyncpg.ConnectionDoesNotExistError("connection was closed in the middle of operation")

    monkeypatch.setattr(points, "credit", lost)  # the ORM path (SQLite's)
    monkeypatch.setattr(checkin, "_record", lost)  # PostgreSQL's one statement
    resp = await m.post("/mp/checkin")
    assert resp.status == 503 and resp.headers["Retry-After"]
    await _assert_envelope(resp)
    assert [await redis.hget(k, "v") async for k in redis.scan_iter("cap:{cap:*}:*")] in ([], ["0"])
    assert await Checkin.all().count() == 0
    monkeypatch.undo()
    resp = await m.post("/mp/checkin")
    assert resp.status == 200 and (await resp.json())["points_awarded"] == 5
    await assert_ledger_consistent()
