"""What the WeChat simulator remembers: issued codes and tokens, and everything sent to it.

Tests reach this object through `state_key` on the simulator app to script failures
(`fail_next_login`, `down`, `no_quota`, `expire_tokens()`) and to inspect what arrived.
"""
from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any


@dataclass
class Token:
    """An access token WeChat issued; dead after `expires_at` (a `time.monotonic()` value)."""

    value: str
    expires_at: float


@dataclass
class SimulatorState:
    """In-memory state of one simulated WeChat platform (one mini-program appid)."""

    appid: str
    secret: str
    token_ttl: int = 7200
    # One-use login codes: code -> (openid, unionid or None).
    codes: dict[str, tuple[str, str | None]] = field(default_factory=dict)
    used_codes: set[str] = field(default_factory=set)
    phone_codes: dict[str, str] = field(default_factory=dict)
    activate_tickets: dict[str, dict[str, str]] = field(default_factory=dict)
    tokens: dict[str, Token] = field(default_factory=dict)
    token_fetches: int = 0
    # Scripted failures.
    fail_next_login: dict[str, Any] | None = None
    down: bool = False
    no_quota: set[tuple[str, str]] = field(default_factory=set)
    # What the backend sent.
    logins: list[dict[str, Any]] = field(default_factory=list)
    messages: list[dict[str, Any]] = field(default_factory=list)
    wxacodes: list[dict[str, Any]] = field(default_factory=list)
    card_activations: list[dict[str, Any]] = field(default_factory=list)
    card_updates: list[dict[str, Any]] = field(default_factory=list)
    card_bonus: dict[str, int] = field(default_factory=dict)
    card_balance: dict[str, int] = field(default_factory=dict)  # stored value (fen) by card code
    shipping_uploads: list[dict[str, Any]] = field(default_factory=list)  # upload_shipping_info
    menu: dict[str, Any] | None = None
    custom_messages: list[dict[str, Any]] = field(default_factory=list)
    # Official-account followers: OA openid -> unionid (registered by tests and the demo).
    oa_users: dict[str, str | None] = field(default_factory=dict)
    user_info_calls: int = 0
    # Further appid -> secret pairs it issues tokens for (the official account's).
    other_apps: dict[str, str] = field(default_factory=dict)

    def new_code(self, openid: str, unionid: str | None = None) -> str:
        """Register a one-use `wx.login` code for `openid`."""
        code = "c" + secrets.token_hex(12)
        self.codes[code] = (openid, unionid)
        return code

    def take_code(self, code: str) -> tuple[str, str | None] | None:
        """Resolve a login code once; `sim:<openid>[:<unionid>]` is always valid."""
        if code.startswith("sim:"):
            parts = code.split(":")
            if len(parts) in (2, 3) and parts[1]:
                return parts[1], (parts[2] or None) if len(parts) == 3 else None
            return None
        if code in self.used_codes:
            return None
        found = self.codes.pop(code, None)
        if found is not None:
            self.used_codes.add(code)
        return found

    def new_phone_code(self, phone: str) -> str:
        """Register a one-use `getPhoneNumber` code for `phone`."""
        code = "p" + secrets.token_hex(12)
        self.phone_codes[code] = phone
        return code

    def take_phone_code(self, code: str) -> str | None:
        """Resolve a phone code once; `simphone:<11 digits>` is always valid."""
        if code.startswith("simphone:"):
            phone = code.removeprefix("simphone:")
            return phone if len(phone) == 11 and phone.isdigit() else None
        return self.phone_codes.pop(code, None)

    def new_activate_ticket(self, info: dict[str, str]) -> str:
        """Register the form a member filled in the card's one-click activation page."""
        ticket = "t" + secrets.token_hex(12)
        self.activate_tickets[ticket] = info
        return ticket

    def fetch_token(self, *, reuse: bool) -> Token:
        """Count one token fetch and answer it: with `reuse` (stable_token's normal mode) the newest
        live token, else a fresh one. Earlier tokens stay valid until they expire."""
        self.token_fetches += 1
        now = time.monotonic()
        if reuse and self.tokens:
            newest = next(reversed(self.tokens.values()))
            if newest.expires_at > now:
                return newest
        token = Token(secrets.token_urlsafe(24), now + self.token_ttl)
        self.tokens[token.value] = token
        return token

    def check_token(self, value: str | None) -> tuple[int, str]:
        """(0, "ok") for a live token, 42001 for an expired one, 40001 for anything else."""
        token = self.tokens.get(value or "")
        if token is None:
            return 40001, "invalid credential, access_token is invalid or not latest"
        if time.monotonic() >= token.expires_at:
            return 42001, "access_token expired"
        return 0, "ok"

    def expire_tokens(self) -> None:
        """Make every token issued so far answer 42001 from now on."""
        now = time.monotonic()
        for token in self.tokens.values():
            token.expires_at = min(token.expires_at, now)

    def counts(self) -> dict[str, int]:
        """Sizes of what the simulator holds, for the demo and debugging."""
        return {
            "codes": len(self.codes),
            "tokens": len(self.tokens),
            "token_fetches": self.token_fetches,
            "logins": len(self.logins),
            "messages": len(self.messages),
            "wxacodes": len(self.wxacodes),
            "card_activations": len(self.card_activations),
            "card_updates": len(self.card_updates),
            "custom_messages": len(self.custom_messages),
            "menu": int(self.menu is not None),
        }
