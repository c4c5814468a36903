"""Typed keys for everything shared on the application (STYLE.md: no module-level singletons)."""
from __future__ import annotations

from typing import TYPE_CHECKING

import aiohttp
from aiohttp import web
from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster

if TYPE_CHECKING:
    from apscheduler.schedulers.asyncio import AsyncIOScheduler

    from app.config import Settings
    from app.wechat.client import WeChatClient
    from app.wechat.pay_client import PayClient

settings_key = web.AppKey("settings", "Settings")
# One Redis server, or a Redis Cluster (REDIS_CLUSTER=1): the app uses only what both offer.
redis_key = web.AppKey("redis", Redis | RedisCluster)
http_key = web.AppKey("http", aiohttp.ClientSession)
wechat_key = web.AppKey("wechat", "WeChatClient")
# The official account has its own appid/secret, hence its own client (menu, card, custom messages).
oa_wechat_key = web.AppKey("oa_wechat", "WeChatClient")
scheduler_key = web.AppKey("scheduler", "AsyncIOScheduler")
background_key = web.AppKey("background", set)
simulator_key = web.AppKey("simulator", web.Application)
simulator_url_key = web.AppKey("simulator_url", str)
# Sandbox mode (app/sandbox.py): the simulator's URLs and keys, None outside sandbox mode.
sandbox_key = web.AppKey("sandbox", object)
# None when WeChat Pay's merchant key is not configured: cash items answer 503 pay_not_configured.
pay_client_key = web.AppKey("pay_client", "PayClient | None")
clock_key = web.AppKey("clock", object)
# The APIv3 notification verifier (app.wechat.pay.PayV3Verifier), or None when pay is not configured.
pay_verifier_key = web.AppKey("pay_verifier", object)
# 企业微信 customer contact (app.wechat.wecom.WeComClient), None when WeCom is off.
wecom_key = web.AppKey("wecom", object)
# The read replica (DATABASE_REPLICA_URL) as a Tortoise client, for admin reads; None: the primary.
replica_key = web.AppKey("replica", object)
client_ip_key = web.RequestKey("client_ip", str)
