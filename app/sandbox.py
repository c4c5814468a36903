"""Sandbox mode, assembled in one place: with no WECHAT_MP_APPID, every call to WeChat goes to
the simulator (miniprogram_stub/simulator), started here on loopback, and the app is handed its
URLs and keys (`Sandbox`). Nothing else in app/, handlers/ or jobs/ imports the simulator: the
resource contexts and the callbacks read `app[keys.sandbox_key]` (None outside sandbox mode).
"""
from __future__ import annotations

import logging
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import AsyncIterator

from aiohttp import web

from app import keys
from miniprogram_stub.simulator import create_simulator_app, pay, state_key, wecom
from miniprogram_stub.simulator import wechat as sim_wechat

log = logging.getLogger("app.sandbox")


@dataclass(frozen=True)
class Sandbox:
    """What the simulator accepts: its base URL and the credentials of every simulated party."""

    base_url: str
    simulator: web.Application
    mp_appid: str = "wx-sandbox-mp"
    mp_secret: str = "sandbox-secret"
    oa_appid: str = sim_wechat.SANDBOX_OA_APPID
    oa_secret: str = sim_wechat.SANDBOX_OA_SECRET
    oa_token: str = sim_wechat.SANDBOX_OA_TOKEN
    wecom_corp_id: str = wecom.SANDBOX_CORP_ID
    wecom_secret: str = wecom.SANDBOX_CORP_SECRET
    wecom_token: str = wecom.SANDBOX_WECOM_TOKEN
    wecom_aes_key: str = wecom.SANDBOX_WECOM_AES_KEY
    pay_mchid: str = pay.SANDBOX_MCHID
    pay_merchant_serial: str = pay.SANDBOX_MERCHANT_SERIAL
    pay_v2_key: str = pay.SANDBOX_V2_KEY
    pay_apiv3_key: bytes = pay.SANDBOX_APIV3_KEY
    pay_public_key_id: str = pay.SANDBOX_PUBLIC_KEY_ID

    def merchant_private_key(self):
        """The merchant's test key (read from disk: call it in a thread)."""
        return pay.merchant_private_key()

    def platform_public_key(self):
        """WeChat Pay's test platform key (read from disk: call it in a thread)."""
        return pay.platform_public_key()

    def received_menu(self) -> dict | None:
        """The official account menu the simulator was given (`oa menu push` in sandbox mode)."""
        return self.simulator[state_key].menu


@asynccontextmanager
async def simulator() -> AsyncIterator[Sandbox]:
    """The simulator served on a free loopback port while the block runs."""
    runner = web.AppRunner(create_simulator_app(), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # noqa: SLF001 - aiohttp exposes no getter
        yield Sandbox(base_url=f"http://127.0.0.1:{port}", simulator=runner.app)
    finally:
        await runner.cleanup()


async def sandbox_ctx(app: web.Application) -> AsyncIterator[None]:
    """In sandbox mode, start the simulator and hand the app its URLs and keys; else None."""
    if not app[keys.settings_key].sandbox:
        app[keys.sandbox_key] = None
        yield
        return
    async with simulator() as sandbox:
        app[keys.sandbox_key] = sandbox
        app[keys.simulator_key] = sandbox.simulator
        app[keys.simulator_url_key] = sandbox.base_url
        log.info("sandbox mode: WeChat simulator", extra={"fields": {"base": sandbox.base_url}})
        yield
