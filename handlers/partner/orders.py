"""/partner: the brand's mall and tills report paid orders, refunds and events (CONTRACT.md)."""
from __future__ import annotations

import json
from typing import Literal

from aiohttp import web
from pydantic import AwareDatetime, BaseModel, Field, StrictInt, StrictStr, model_validator

from app import keys
from app.domain import partner, rules
from app.errors import Malformed
from handlers.partner.auth import verified_body

Id = Field(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9_\-:.]+$")


class Payer(BaseModel):
    member_id: StrictInt | None = Field(None, ge=1)
    openid: StrictStr | None = Field(None, min_length=1, max_length=64)

    @model_validator(mode="after")
    def _one(self):
        if (self.member_id is None) == (self.openid is None):
            raise ValueError("exactly one of member_id and openid")
        return self


class OrderBody(Payer):
    order_no: StrictStr = Id
    paid_fen: StrictInt = Field(ge=0, le=10**11)
    paid_at: AwareDatetime
    channel: StrictStr = Field(min_length=1, max_length=32)
    wallet_fen: StrictInt = Field(0, ge=0, le=10**11)
    transaction_id: StrictStr | None = Field(None, min_length=1, max_length=64)


class RefundBody(BaseModel):
    refund_no: StrictStr = Id
    refund_fen: StrictInt = Field(ge=1, le=10**11)


class EventBody(Payer):
    event_id: StrictStr = Id
    kind: StrictStr = Field(min_length=1, max_length=32)


def _parse(raw: bytes, model):
    try:
        data = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError):
        raise Malformed("body is not valid JSON", code="malformed_json") from None
    if not isinstance(data, dict):
        raise Malformed("body must be a JSON object", code="malformed_json")
    return model.model_validate(data)


def _render(answer: partner.Answer) -> web.Response:
    # A repeat answers exactly what the first was answered, status included.
    return web.json_response(answer.body)


async def record_order(request: web.Request) -> web.Response:
    body = _parse(await verified_body(request), OrderBody)
    app = request.app
    settings = app[keys.settings_key]
    answer = await partner.record_order(
        redis=app[keys.redis_key], rules=await rules.load(), appid=settings.appid, order_no=body.order_no,
        member_id=body.member_id, openid=body.openid, paid_fen=body.paid_fen, wallet_fen=body.wallet_fen,
        paid_at=body.paid_at, channel=body.channel, transaction_id=body.transaction_id,
        now=app[keys.clock_key].now(), tz=settings.tz)
    return _render(answer)


async def refund_order(request: web.Request) -> web.Response:
    body = _parse(await verified_body(request), RefundBody)
    answer = await partner.refund_order(rules=await rules.load(), order_no=request.match_info["order_no"],
                                        refund_no=body.refund_no, refund_fen=body.refund_fen,
                                        now=request.app[keys.clock_key].now())
    return _render(answer)


async def record_event(request: web.Request) -> web.Response:
    body = _parse(await verified_body(request), EventBody)
    settings = request.app[keys.settings_key]
    answer = await partner.record_event(redis=request.app[keys.redis_key], rules=await rules.load(),
                                        appid=settings.appid, event_id=body.event_id, member_id=body.member_id,
                                        openid=body.openid, kind=body.kind, now=request.app[keys.clock_key].now(),
                                        tz=settings.tz)
    return _render(answer)
