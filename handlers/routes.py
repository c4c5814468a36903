"""Every URL of CONTRACT.md's HTTP surface, in one place."""
from aiohttp import web

from handlers import ops
from handlers.mp import checkin, members, points
from handlers.mp import referral as mp_referral
from handlers.wechat import pay as wechat_pay


def setup(app: web.Application) -> None:
    r = app.router
    r.add_get("/healthz", ops.healthz)
    r.add_get("/metrics", ops.prometheus)

    r.add_post("/mp/login", members.login)
    r.add_get("/mp/me", members.me)
    r.add_post("/mp/card/activate", members.activate_card)
    r.add_post("/mp/checkin", checkin.check_in)
    r.add_post("/mp/checkin/makeup", checkin.make_up)
    r.add_get("/mp/checkin/calendar", checkin.calendar)
    r.add_get("/mp/points", points.history)
    r.add_get("/mp/referral", mp_referral.overview)
    r.add_get("/mp/referral/qrcode/{code}.png", mp_referral.qrcode)
    r.add_post("/wechat/pay/notify", wechat_pay.notify)
    r.add_post("/wechat/pay/notify/v2", wechat_pay.notify_v2)
    r.add_post("/wechat/pay/refund-notify/v2", wechat_pay.refund_notify_v2)
