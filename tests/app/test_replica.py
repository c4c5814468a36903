"""DATABASE_REPLICA_URL: admin reads (metrics, segment exports, member search) go to the read
replica, every write and every read that decides one stays on the primary. Proved on a private
primary and a streaming replica of it on loopback (bench/loopback.pg_replica), with the
replica's replay paused: what the primary has and the replica has not yet shows the split."""
from __future__ import annotations

import asyncio
import csv
import io
from datetime import date

import asyncpg
import pytest

from app.config import Settings
from tests.conftest import ADMIN_TOKEN, reset_state, shanghai

pytestmark = pytest.mark.postgres

ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}", "X-Operator": "dana"}
NOW = shanghai(2026, 11, 22, 10, 0)


@pytest.fixture(scope="module")
def replicated(data_dir):
    from app.__main__ import _migrate
    from bench.loopback import pg_replica

    with pg_replica() as (primary, replica):
        asyncio.run(_migrate(Settings(database_url=primary, data_dir=data_dir), quiet=True))
        yield primary, replica


async def _eventually(check, timeout: float = 15.0):
    for _ in range(int(timeout / 0.05)):
        if await check():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("the replica never caught up")


async def test_admin_reads_come_from_the_replica_and_writes_go_to_the_primary(
        aiohttp_client, settings, replicated, redis_url):
    from app import keys
    from app.domain import segments
    from app.main import create_app

    primary, replica = replicated
    client = await aiohttp_client(create_app(settings.with_(database_url=primary, database_replica_url=replica)))
    await reset_state(redis_url)
    client.app[keys.clock_key].travel_to(NOW)

    async def login(openid: str) -> dict:
        resp = await client.post("/mp/login", json={"code": f"sim:{openid}"})
        assert resp.status == 200, await resp.text()
        return (await resp.json())["member"]

    async def search(q) -> list:
        resp = await client.get(f"/admin/members?q={q}", headers=ADMIN)
        assert resp.status == 200
        return (await resp.json())["items"]

    async def admin_metrics(fen_per_point: int) -> dict:  # a new fen_per_point: past the 60 s cache
        resp = await client.get(f"/admin/metrics?from=2026-11-19&to=2026-11-22&fen_per_point={fen_per_point}",
                                headers=ADMIN)
        assert resp.status == 200, await resp.text()
        return await resp.json()

    async def segment_csv() -> list[str]:
        resp = await client.get("/admin/segments/new.csv", headers=ADMIN)
        assert resp.status == 200
        return [row["openid"] for row in csv.DictReader(io.StringIO(await resp.text()))]

    first = await login("o-replica-1")
    await _eventually(lambda: _found(search, "o-replica-1"))
    caught_up = await admin_metrics(1)
    assert caught_up["replica_lag_seconds"] == 0 and caught_up["members"]["total"] == 1

    standby = await asyncpg.connect(replica)
    try:
        await standby.execute("SELECT pg_wal_replay_pause()")
        # Writes reach the primary (the replica is read-only: any write sent there would fail).
        second = await login("o-replica-2")
        adjusted = await client.post(f"/admin/members/{second['id']}/points", headers=ADMIN,
                                     json={"delta": 40, "reason": "补偿", "idempotency_key": "replica-1"})
        assert adjusted.status == 200, await adjusted.text()
        await segments.recompute(now=NOW, today=date(2026, 11, 22))
        # The admin reads still see the replica's older state ...
        assert await search("o-replica-2") == []
        assert [m["id"] for m in await search("o-replica-1")] == [first["id"]]
        assert await segment_csv() == []

        async def received() -> bool:  # the replica has the new WAL, unreplayed
            return await standby.fetchval("SELECT pg_last_wal_receive_lsn() > pg_last_wal_replay_lsn()")

        await _eventually(received)
        behind = await admin_metrics(2)  # ... and this call built its ended days on the primary
        assert behind["members"]["total"] == 1
        assert behind["replica_lag_seconds"] > 0
        # ... while the primary has it all.
        main = await asyncpg.connect(primary)
        try:
            assert await main.fetchval("SELECT count(*) FROM member") == 2
            assert await main.fetchval("SELECT count(*) FROM metrics_day WHERE built_version = version") == 3
        finally:
            await main.close()
        await standby.execute("SELECT pg_wal_replay_resume()")
    finally:
        await standby.close()

    await _eventually(lambda: _found(search, "o-replica-2"))
    assert sorted(await segment_csv()) == ["o-replica-1", "o-replica-2"]
    now_current = await admin_metrics(3)
    assert now_current["members"]["total"] == 2
    assert now_current["replica_lag_seconds"] == 0


async def _found(search, q) -> bool:
    return bool(await search(q))


async def test_without_a_replica_metrics_say_nothing_of_one(client):
    resp = await client.get("/admin/metrics?from=2026-11-01&to=2026-11-07", headers=ADMIN)
    assert resp.status == 200 and "replica_lag_seconds" not in await resp.json()
