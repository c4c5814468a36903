"""`python -m app oa menu push`: create the official account's menu from menu.json.

With WECHAT_OA_APPID/WECHAT_OA_SECRET the menu goes to WECHAT_API_BASE with the account's
own credentials. In sandbox mode (no WECHAT_MP_APPID) there is no server running to host the
simulator, so a simulator is started on loopback for this one call (app/sandbox.py): a dry run
that checks the file and shows what WeChat would receive. Neither: exit 2.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from pathlib import Path

import aiohttp
from redis.asyncio import Redis

from app import sandbox
from app.config import Settings
from app.resources import connect_redis, start_embedded_redis
from app.wechat.client import WeChatClient, WeChatError
from handlers.wechat.menu import load_menu, unrouted_keys


async def push_menu(settings: Settings, file: str | Path) -> int:
    """Create the menu from `file`; 0 on success, 1 when WeChat refuses, 2 on a bad file or
    missing credentials."""
    try:
        menu = load_menu(file)
    except (OSError, ValueError) as exc:
        print(f"menu file {file}: {exc}", file=sys.stderr)
        return 2
    for key in unrouted_keys(menu):
        print(f"warning: no route answers click key {key!r}", file=sys.stderr)
    if not settings.sandbox and not (settings.oa_appid and settings.oa_secret):
        print("WECHAT_OA_APPID and WECHAT_OA_SECRET are required (or run in sandbox mode)", file=sys.stderr)
        return 2
    async with contextlib.AsyncExitStack() as stack:
        redis = await _redis(settings, stack)
        session = await stack.enter_async_context(aiohttp.ClientSession())
        simulated = None
        if settings.sandbox:
            simulated = await stack.enter_async_context(sandbox.simulator())
            base, appid, secret = simulated.base_url, simulated.oa_appid, simulated.oa_secret
        else:
            base, appid, secret = settings.wechat_api_base, settings.oa_appid, settings.oa_secret
        wechat = WeChatClient(session=session, redis=redis, base_url=base, appid=appid, secret=secret)
        try:
            await wechat.create_menu(menu)
        except WeChatError as exc:
            print(f"WeChat refused the menu: {exc}", file=sys.stderr)
            return 1
        if simulated is not None:
            print("sandbox mode: the menu went to a throwaway simulator (dry run); it received:")
            print(json.dumps(simulated.received_menu(), ensure_ascii=False, indent=2))
        else:
            print(f"menu created for {appid}: {len(menu['button'])} buttons")
    return 0


async def _redis(settings: Settings, stack: contextlib.AsyncExitStack) -> Redis:
    """The token cache: the configured Redis (shared with the server), else an embedded one."""
    url = settings.redis_url
    if not url:
        server, url = await start_embedded_redis(settings.data_dir)
        stack.push_async_callback(asyncio.to_thread, server.shutdown)
    client = connect_redis(url, cluster=settings.redis_cluster, timeout=settings.redis_timeout)
    stack.push_async_callback(client.aclose)
    if settings.redis_cluster:
        await client.initialize()
    return client
