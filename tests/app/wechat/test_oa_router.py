"""The OA decorator router: which handler a push reaches."""
from __future__ import annotations

from app.wechat.oa import OAMessage
from app.wechat.oa_router import Router


def msg(msg_type: str = "text", *, content: str = "", event: str = "", event_key: str = "") -> OAMessage:
    return OAMessage(to_user="gh_1", from_user="o1", create_time=1, msg_type=msg_type,
                     event=event, event_key=event_key, content=content)


def build() -> tuple[Router, list[str]]:
    router, seen = Router(), []

    @router.text("签到", "CheckIn")
    async def on_text_checkin(m, ctx):
        seen.append("text_checkin")
        return f"checked in {ctx['who']}"

    @router.click("CHECKIN")
    async def on_click_checkin(m, ctx):
        seen.append("click_checkin")
        return "clicked"

    @router.event("Subscribe", "scan")
    async def on_subscribe(m, ctx):
        seen.append("subscribe")
        return None

    @router.event("click")
    async def on_any_click(m, ctx):
        return "any click"

    @router.message("image")
    async def on_image(m, ctx):
        return "image"

    @router.message("text")
    async def on_any_text(m, ctx):
        return "text"

    @router.fallback
    async def on_other(m, ctx):
        return "fallback"

    return router, seen


async def test_text_matches_after_strip_and_ascii_case():
    router, seen = build()
    assert await router.dispatch(msg(content="签到"), {"who": "a"}) == "checked in a"
    assert await router.dispatch(msg(content="  checkin \n"), {"who": "b"}) == "checked in b"
    assert await router.dispatch(msg(content="CHECKIN"), {"who": "c"}) == "checked in c"
    assert await router.dispatch(msg(content="签到吧"), {}) == "text"
    assert seen == ["text_checkin"] * 3


async def test_text_route_ignores_non_ascii_case_folding():
    router = Router()

    @router.text("ǅ")
    async def on_x(m, ctx):
        return "x"

    assert router.resolve(msg(content="ǆ")) is None
    assert router.resolve(msg(content="ǅ")) is on_x


async def test_first_registered_match_wins():
    router, _ = build()
    # a CHECKIN click matches click("CHECKIN") and event("click"); the first one registered wins
    assert await router.dispatch(msg("event", event="click", event_key="CHECKIN"), {}) == "clicked"
    assert await router.dispatch(msg("event", event="click", event_key="OTHER"), {}) == "any click"
    # text("签到") is before message("text")
    assert router.resolve(msg(content="签到")).__name__ == "on_text_checkin"


async def test_click_key_is_exact_and_needs_a_click_event():
    router, _ = build()
    assert await router.dispatch(msg("event", event="click", event_key="checkin"), {}) == "any click"
    assert await router.dispatch(msg("event", event="view", event_key="CHECKIN"), {}) == "fallback"
    assert await router.dispatch(msg("text", content="CHECKIN"), {"who": "t"}) == "checked in t"


async def test_events_and_message_types():
    router, seen = build()
    assert await router.dispatch(msg("event", event="subscribe"), {}) is None
    assert await router.dispatch(msg("event", event="scan", event_key="i=A"), {}) is None
    assert seen == ["subscribe", "subscribe"]
    assert await router.dispatch(msg("image"), {}) == "image"
    assert await router.dispatch(msg("voice"), {}) == "fallback"
    assert await router.dispatch(msg("event", event="unsubscribe"), {}) == "fallback"


async def test_no_route_and_no_fallback_is_none():
    router = Router()
    assert router.resolve(msg(content="x")) is None
    assert await router.dispatch(msg(content="x"), {}) is None


async def test_fallback_is_last_even_when_registered_first():
    router = Router()

    @router.fallback
    async def on_other(m, ctx):
        return "fallback"

    @router.message("text")
    async def on_text(m, ctx):
        return "text"

    assert await router.dispatch(msg(content="x"), {}) == "text"
    assert await router.dispatch(msg("image"), {}) == "fallback"


async def test_include_appends_routes_and_keeps_our_fallback():
    cards, main = Router(), Router()

    @cards.event("user_get_card")
    async def on_user_get_card(m, ctx):
        return "card"

    @cards.message("text")
    async def on_cards_text(m, ctx):
        return "cards text"

    @cards.fallback
    async def on_cards_other(m, ctx):
        return "cards fallback"

    @main.text("hi")
    async def on_hi(m, ctx):
        return "hi"

    main.include(cards)
    assert await main.dispatch(msg(content="hi"), {}) == "hi"       # ours first
    assert await main.dispatch(msg(content="yo"), {}) == "cards text"
    assert await main.dispatch(msg("event", event="user_get_card"), {}) == "card"
    assert await main.dispatch(msg("image"), {}) == "cards fallback"  # we had none

    @main.fallback
    async def on_main_other(m, ctx):
        return "main fallback"

    other = Router()
    main.include(other)
    assert await main.dispatch(msg("image"), {}) == "main fallback"


def test_decorators_return_the_handler_unchanged():
    router = Router()

    async def on_x(m, ctx):
        return None

    assert router.text("a")(on_x) is on_x
    assert router.click("A")(on_x) is on_x
    assert router.event("a")(on_x) is on_x
    assert router.message("a")(on_x) is on_x
    assert router.fallback(on_x) is on_x
