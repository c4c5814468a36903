"""Settings from the environment (CONTRACT.md, "Configuration")."""
from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Mapping
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parent.parent

DEFAULT_TEMPLATES = {
    "birthday": "sandbox-tpl-birthday",
    "points_expiry": "sandbox-tpl-points-expiry",
    "tier_upgrade": "sandbox-tpl-tier-upgrade",
    "coupon": "sandbox-tpl-coupon",
}


@dataclass(frozen=True)
class Settings:
    database_url: str = f"sqlite://{ROOT / 'data' / 'members.sqlite3'}"
    redis_url: str | None = None
    # REDIS_URL names one node of a Redis Cluster (the client learns the others from it).
    redis_cluster: bool = False
    # A streaming replica for admin reads (metrics, segments, exports, member search).
    database_replica_url: str | None = None
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    trusted_proxies: tuple[ipaddress.IPv4Network | ipaddress.IPv6Network, ...] = ()
    timezone: str = "Asia/Shanghai"
    wechat_api_base: str = "https://api.weixin.qq.com"
    mp_appid: str | None = None
    mp_secret: str | None = None
    oa_appid: str | None = None
    oa_secret: str | None = None
    oa_token: str | None = None
    oa_aes_key: str | None = None
    # WeChat gives up on a push after 5 s and retries it: past this, the webhook answers
    # `success` and the handler's reply goes out later as a customer-service message.
    oa_reply_timeout: float = 4.0
    pay_mchid: str | None = None
    pay_apiv3_key: str | None = None
    pay_public_key_id: str | None = None
    pay_public_key_path: str | None = None
    pay_v2_key: str | None = None
    pay_api_base: str = "https://api.mch.weixin.qq.com"
    pay_private_key_path: str | None = None
    pay_cert_serial: str | None = None
    # The https origin WeChat calls back (Pay orders' notify_url); never taken from request headers.
    public_base_url: str | None = None
    templates: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_TEMPLATES))
    admin_token: str | None = None
    data_dir: Path = ROOT / "data"
    log_level: str = "INFO"
    # Runs APScheduler inside `serve` as well as in `worker` (one process is enough). From the
    # environment it defaults to on when WORKERS=1 (CONTRACT.md); built by hand (tests), off.
    scheduler_in_serve: bool = False
    # The outbox worker: sends per second (WeChat's limits are per appid), attempts before dead.
    outbox_rate: float = 20.0
    outbox_max_attempts: int = 8
    # 企业微信 customer contact (app/domain/wecom.py): all unset means off, unless sandbox mode.
    wecom_corp_id: str | None = None
    wecom_secret: str | None = None
    wecom_token: str | None = None
    wecom_aes_key: str | None = None
    wecom_api_base: str = "https://qyapi.weixin.qq.com"
    # Seconds any one Redis command, and any one SQL statement, may take before the request
    # answers 503 `unavailable`: a black-holed dependency must not hang requests.
    redis_timeout: float = 1.0
    db_statement_timeout: float = 2.0
    # /partner/* (the brand's mall and tills): the HMAC key; unset, /partner/* answers 503.
    partner_api_key: str | None = None
    # Stored value: most principal a member may hold, in fen (prepaid-card rules: 5,000 yuan).
    wallet_principal_cap_fen: int = 500_000

    @property
    def sandbox(self) -> bool:
        """No mini-program credentials: WeChat is the built-in simulator."""
        return not self.mp_appid

    @property
    def pay_notify_base(self) -> str | None:
        """Where WeChat Pay posts notifications: PUBLIC_BASE_URL; unset, the local server in sandbox
        mode, else None (Pay orders answer 503 pay_not_configured)."""
        if self.public_base_url:
            return self.public_base_url
        return f"http://{self.host}:{self.port}" if self.sandbox else None

    @property
    def tz(self) -> ZoneInfo:
        return ZoneInfo(self.timezone)

    @property
    def appid(self) -> str:
        return self.mp_appid or "wx-sandbox-mp"

    def with_(self, **changes) -> "Settings":
        return replace(self, **changes)

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> "Settings":
        env = os.environ if env is None else env

        def get(name: str) -> str | None:
            value = env.get(name, "").strip()
            return value or None

        templates = dict(DEFAULT_TEMPLATES)
        for kind in templates:
            templates[kind] = get(f"WECHAT_TEMPLATE_{kind.upper()}") or templates[kind]
        proxies = tuple(
            ipaddress.ip_network(p.strip(), strict=False)
            for p in (get("TRUSTED_PROXIES") or "").split(",")
            if p.strip()
        )
        defaults = cls()
        workers = max(1, int(get("WORKERS") or 1))
        # One process is the whole system (jobs and the outbox too); several share them out to
        # `worker`, so a job does not run once per process.
        in_serve = get("SCHEDULER_IN_SERVE") or ("1" if workers == 1 else "0")
        return cls(
            database_url=get("DATABASE_URL") or defaults.database_url,
            redis_url=get("REDIS_URL"),
            redis_cluster=(get("REDIS_CLUSTER") or "0") == "1",
            database_replica_url=get("DATABASE_REPLICA_URL"),
            host=get("HOST") or defaults.host,
            port=int(get("PORT") or defaults.port),
            workers=workers,
            trusted_proxies=proxies,
            timezone=get("APP_TIMEZONE") or defaults.timezone,
            wechat_api_base=(get("WECHAT_API_BASE") or defaults.wechat_api_base).rstrip("/"),
            mp_appid=get("WECHAT_MP_APPID"),
            mp_secret=get("WECHAT_MP_SECRET"),
            oa_appid=get("WECHAT_OA_APPID"),
            oa_secret=get("WECHAT_OA_SECRET"),
            oa_token=get("WECHAT_OA_TOKEN"),
            oa_aes_key=get("WECHAT_OA_AES_KEY"),
            pay_mchid=get("WECHAT_PAY_MCHID"),
            pay_apiv3_key=get("WECHAT_PAY_APIV3_KEY"),
            pay_public_key_id=get("WECHAT_PAY_PUBLIC_KEY_ID"),
            pay_public_key_path=get("WECHAT_PAY_PUBLIC_KEY"),
            pay_v2_key=get("WECHAT_PAY_V2_KEY"),
            pay_api_base=(get("WECHAT_PAY_API_BASE") or defaults.pay_api_base).rstrip("/"),
            pay_private_key_path=get("WECHAT_PAY_PRIVATE_KEY"),
            pay_cert_serial=get("WECHAT_PAY_CERT_SERIAL"),
            public_base_url=(get("PUBLIC_BASE_URL") or "").rstrip("/") or None,
            templates=templates,
            admin_token=get("ADMIN_TOKEN"),
            data_dir=Path(get("DATA_DIR") or defaults.data_dir),
            log_level=(get("LOG_LEVEL") or "INFO").upper(),
            scheduler_in_serve=in_serve.lower() in ("1", "true", "yes"),
            outbox_rate=float(get("OUTBOX_RATE") or defaults.outbox_rate),
            outbox_max_attempts=int(get("OUTBOX_MAX_ATTEMPTS") or defaults.outbox_max_attempts),
            wecom_corp_id=get("WECOM_CORP_ID"),
            wecom_secret=get("WECOM_SECRET"),
            wecom_token=get("WECOM_TOKEN"),
            wecom_aes_key=get("WECOM_AES_KEY"),
            wecom_api_base=(get("WECOM_API_BASE") or defaults.wecom_api_base).rstrip("/"),
            redis_timeout=float(get("REDIS_TIMEOUT") or defaults.redis_timeout),
            db_statement_timeout=float(get("DB_STATEMENT_TIMEOUT") or defaults.db_statement_timeout),
            partner_api_key=get("PARTNER_API_KEY"),
            wallet_principal_cap_fen=int(get("WALLET_PRINCIPAL_CAP_FEN") or defaults.wallet_principal_cap_fen),
        )
