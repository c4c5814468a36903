"""A small decorator router for official-account pushes (aiogram's Router, in 60 lines).

    router = Router()

    @router.text("签到", "checkin")
    async def on_text_checkin(msg, ctx): ...

Routes are tried in registration order; the first match wins; the fallback goes last.
A handler is `async def (msg: OAMessage, ctx) -> str | None`: a reply text, or None for none.
"""
from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from app.wechat.oa import OAMessage

Handler = Callable[[OAMessage, Any], Awaitable[str | None]]
Match = Callable[[OAMessage], bool]

# ASCII-only lowering: "CheckIn" == "checkin", while CJK and full-width forms stay as sent
_ASCII_LOWER = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")


def _norm(text: str) -> str:
    return text.strip().translate(_ASCII_LOWER)


class Router:
    """Routes an `OAMessage` to one handler by (msg_type, event, key or text)."""

    def __init__(self) -> None:
        self._routes: list[tuple[Match, Handler]] = []
        self._fallback: Handler | None = None

    def _add(self, match: Match) -> Callable[[Handler], Handler]:
        def register(handler: Handler) -> Handler:
            self._routes.append((match, handler))
            return handler
        return register

    def text(self, *words: str) -> Callable[[Handler], Handler]:
        """Text messages equal to one of `words` after strip, ASCII case ignored."""
        wanted = frozenset(_norm(w) for w in words)
        return self._add(lambda m: m.msg_type == "text" and _norm(m.content) in wanted)

    def click(self, *keys: str) -> Callable[[Handler], Handler]:
        """Menu CLICK events whose EventKey is one of `keys` (exact)."""
        wanted = frozenset(keys)
        return self._add(lambda m: m.event == "click" and m.event_key in wanted)

    def event(self, *names: str) -> Callable[[Handler], Handler]:
        """Events by name, any case: `subscribe`, `scan`, `user_get_card`, …"""
        wanted = frozenset(n.lower() for n in names)
        return self._add(lambda m: m.msg_type == "event" and m.event in wanted)

    def message(self, *msg_types: str) -> Callable[[Handler], Handler]:
        """Any push whose MsgType is one of `msg_types` (`image`, `voice`, `text`, …)."""
        wanted = frozenset(t.lower() for t in msg_types)
        return self._add(lambda m: m.msg_type in wanted)

    def fallback(self, handler: Handler) -> Handler:
        """The handler for anything no route matched; one per router, the last set wins."""
        self._fallback = handler
        return handler

    def include(self, other: Router) -> None:
        """Append `other`'s routes after ours; its fallback is used only if we have none."""
        self._routes.extend(other._routes)
        if self._fallback is None:
            self._fallback = other._fallback

    def resolve(self, msg: OAMessage) -> Handler | None:
        """The first registered route matching `msg`, else the fallback, else None."""
        for match, handler in self._routes:
            if match(msg):
                return handler
        return self._fallback

    async def dispatch(self, msg: OAMessage, ctx: Any) -> str | None:
        """Run the resolved handler; None when nothing matched or it has no reply.
        Exceptions propagate: the HTTP handler logs them and answers `success`."""
        handler = self.resolve(msg)
        return None if handler is None else await handler(msg, ctx)
