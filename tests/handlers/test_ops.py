"""/healthz, /metrics and request ids."""
import socket
from urllib.parse import urlsplit

import pytest

from bench.harness import Forwarder


@pytest.mark.smoke
async def test_healthz_ok_and_request_id(client):
    resp = await client.get("/healthz")
    assert resp.status == 200
    assert await resp.json() == {"status": "ok", "checks": {"database": "ok", "redis": "ok"}}
    assert len(resp.headers["X-Request-Id"]) == 16
    echoed = await client.get("/healthz", headers={"X-Request-Id": "abc-123"})
    assert echoed.headers["X-Request-Id"] == "abc-123"
    forged = await client.get("/healthz", headers={"X-Request-Id": "bad id\\r\\n"})
    assert forged.headers["X-Request-Id"] != "bad id\\r\\n"


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_healthz_503_when_redis_is_down(aiohttp_client, settings):
    from app.main import create_app

    c = await aiohttp_client(create_app(settings.with_(redis_url=f"redis://127.0.0.1:{_closed_port()}/0")))
    resp = await c.get("/healthz")
    body = await resp.json()
    assert resp.status == 503 and body["status"] == "degraded"
    assert body["checks"]["database"] == "ok" and body["checks"]["redis"].startswith("down")


@pytest.mark.postgres
async def test_healthz_503_when_the_database_is_down(aiohttp_client, settings, redis_url):
    from app.main import create_app

    parts = urlsplit(settings.database_url)
    proxy = Forwarder(parts.hostname, parts.port or 5432)
    await proxy.start()
    c = await aiohttp_client(create_app(settings.with_(database_url=proxy.url(settings.database_url))))
    assert (await c.get("/healthz")).status == 200
    await proxy.cut()
    resp = await c.get("/healthz")
    body = await resp.json()
    assert resp.status == 503 and body["checks"]["database"].startswith("down")
    assert body["checks"]["redis"] == "ok"


@pytest.mark.smoke
async def test_prometheus_metrics(client, login):
    m = await login()
    await m.post("/mp/checkin")
    text = await (await client.get("/metrics")).text()
    assert 'http_requests_total{method="POST",route="/mp/checkin",status="200"}' in text
    assert 'http_request_duration_seconds_count{method="POST",route="/mp/login"}' in text
    assert 'points_issued_total{reason="checkin"}' in text


def _sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample of the Prometheus text, None when absent."""
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    series = f"{name}{{{want}}}" if labels else name
    for line in text.splitlines():
        if not line.startswith("#") and line.rsplit(" ", 1)[0] == series:
            return float(line.rsplit(" ", 1)[1])
    return None


async def test_metrics_count_wechat_calls_and_outbox_depth(client, login):
    from app.models import Member, OutboxMessage

    before = _sample(await (await client.get("/metrics")).text(), "wechat_api_calls_total",
                     outcome="ok", path="/sns/jscode2session") or 0
    m = await login()
    member = await Member.get(id=m.id)
    for i, status in enumerate(("pending", "pending", "dead", "sent")):
        await OutboxMessage.create(key=f"t:{i}", channel="card", kind="bonus", member=member, status=status)
    text = await (await client.get("/metrics")).text()
    assert _sample(text, "wechat_api_calls_total", outcome="ok", path="/sns/jscode2session") == before + 1
    assert _sample(text, "outbox_messages", channel="card", status="pending") == 2
    assert _sample(text, "outbox_messages", channel="card", status="dead") == 1
    # a channel that emptied reads 0, not its last value
    await OutboxMessage.filter(status="dead").update(status="sent")
    text = await (await client.get("/metrics")).text()
    assert _sample(text, "outbox_messages", channel="card", status="dead") == 0


async def test_metrics_count_cap_hits(client, login, clock):
    from app.domain import antiabuse
    from tests.conftest import shanghai

    clock.travel_to(shanghai(2026, 11, 26, 10, 0))
    text = await (await client.get("/metrics")).text()
    before = _sample(text, "points_cap_hits_total") or 0
    m = await login()
    from app import keys

    redis = client.app[keys.redis_key]
    day = shanghai(2026, 11, 26, 10, 0).date()
    assert await antiabuse.reserve_cap(redis=redis, member_id=m.id, day=day, wanted=150, cap=200) == 150
    assert _sample(await (await client.get("/metrics")).text(), "points_cap_hits_total") == before
    assert await antiabuse.reserve_cap(redis=redis, member_id=m.id, day=day, wanted=80, cap=200) == 50
    assert _sample(await (await client.get("/metrics")).text(), "points_cap_hits_total") == before + 1
