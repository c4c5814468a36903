"""`python -m app oa menu push`: create the official account's menu from menu.json.

With WECHAT_OA_APPID/WECHAT_OA_SECRET the menu goes to WECHAT_API_BASE with the account's
own credentials. In sandbox mode (no WECHAT_MP_APPID) there is no server running to host the
simulator, so a simulator is started on loopback for this one call: a dry run that checks
the file and shows what WeChat would receive. Neither: exit 2.
"""
from __future__ import annotations

import asyncio
import contextlib
import json
import sys
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web
from redis.asyncio import Redis

from app.config import Settings
from app.wechat.client import WeChatClient, WeChatError
from handlers.wechat.oa_routes import router

MAX_BUTTONS, MAX_SUB_BUTTONS = 3, 5


def load_menu(path: str | Path) -> dict[str, Any]:
    """The menu in `path`, checked against WeChat's shape: 1–3 buttons, each a click (with a
    key) or a view (with a url), or a group of 1–5 such buttons. ValueError says what is wrong."""
    menu = json.loads(Path(path).read_text(encoding="utf-8"))
    buttons = menu.get("button") if isinstance(menu, dict) else None
    if not isinstance(buttons, list) or not 1 <= len(buttons) <= MAX_BUTTONS:
        raise ValueError(f"menu needs a 'button' list of 1 to {MAX_BUTTONS}")
    for button in buttons:
        subs = button.get("sub_button") if isinstance(button, dict) else None
        if subs is not None:
            if not isinstance(subs, list) or not 1 <= len(subs) <= MAX_SUB_BUTTONS:
                raise ValueError(f"'{button.get('name')}': sub_button needs 1 to {MAX_SUB_BUTTONS}")
            for sub in subs:
                _check_leaf(sub)
        else:
            _check_leaf(button)
    return menu


def _check_leaf(button: Any) -> None:
    if not isinstance(button, dict) or not button.get("name"):
        raise ValueError("every button needs a name")
    kind = button.get("type")
    if kind == "click":
        if not button.get("key"):
            raise ValueError(f"'{button['name']}': a click button needs a key")
    elif kind == "view":
        if not str(button.get("url", "")).startswith(("http://", "https://")):
            raise ValueError(f"'{button['name']}': a view button needs an http(s) url")
    elif kind not in ("miniprogram", "scancode_push", "scancode_waitmsg", "location_select"):
        raise ValueError(f"'{button['name']}': unsupported button type {kind!r}")


def unrouted_keys(menu: dict[str, Any]) -> list[str]:
    """Click keys of `menu` that no OA route answers (they would fall to the fallback)."""
    from app.wechat.oa import OAMessage

    keys = [b.get("key") for top in menu["button"] for b in (top.get("sub_button") or [top])
            if b.get("type") == "click"]
    missing = []
    for key in keys:
        probe = OAMessage(to_user="gh", from_user="o", create_time=0, msg_type="event",
                          event="click", event_key=key)
        if router.resolve(probe) is router._fallback:  # noqa: SLF001 - the router has no public probe
            missing.append(key)
    return missing


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
        if settings.sandbox:
            base, appid, secret, state = await _sandbox(stack)
        else:
            base, appid, secret, state = settings.wechat_api_base, settings.oa_appid, settings.oa_secret, None
        wechat = WeChatClient(session=session, redis=redis, base_url=base, appid=appid, secret=secret)
        try:
            await wechat.create_menu(menu)
        except WeChatError as exc:
            print(f"WeChat refused the menu: {exc}", file=sys.stderr)
            return 1
        if state is not None:
            print("sandbox mode: the menu went to a throwaway simulator (dry run); it received:")
            print(json.dumps(state.menu, ensure_ascii=False, indent=2))
        else:
            print(f"menu created for {appid}: {len(menu['button'])} buttons")
    return 0


async def _redis(settings: Settings, stack: contextlib.AsyncExitStack) -> Redis:
    """The token cache: the configured Redis (shared with the server), else an embedded one."""
    from app.resources import connect_redis, start_embedded_redis

    url = settings.redis_url
    if not url:
        server, url = await start_embedded_redis(settings.data_dir)
        stack.push_async_callback(asyncio.to_thread, server.shutdown)
    client = connect_redis(url, cluster=settings.redis_cluster)
    stack.push_async_callback(client.aclose)
    if settings.redis_cluster:
        await client.initialize()
    return client


async def _sandbox(stack: contextlib.AsyncExitStack):
    from miniprogram_stub.simulator import create_simulator_app, state_key
    from miniprogram_stub.simulator.wechat import SANDBOX_OA_APPID, SANDBOX_OA_SECRET

    runner = web.AppRunner(create_simulator_app(), access_log=None)
    await runner.setup()
    stack.push_async_callback(runner.cleanup)
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # noqa: SLF001 - aiohttp exposes no getter
    return f"http://127.0.0.1:{port}", SANDBOX_OA_APPID, SANDBOX_OA_SECRET, runner.app[state_key]
