"""Every URL of CONTRACT.md's HTTP surface, in one place, in the contract's order."""
from aiohttp import web

from handlers import ops
from handlers.admin import blacklist as admin_blacklist
from handlers.admin import campaigns as admin_campaigns
from handlers.admin import costs as admin_costs
from handlers.admin import coupons as admin_coupons
from handlers.admin import dashboard as admin_dashboard
from handlers.admin import experiments as admin_experiments
from handlers.admin import members as admin_members
from handlers.admin import metrics as admin_metrics
from handlers.admin import outbox as admin_outbox
from handlers.admin import rewards as admin_rewards
from handlers.admin import rules as admin_rules
from handlers.admin import segments as admin_segments
from handlers.admin import wallet as admin_wallet
from handlers.admin import wecom as admin_wecom
from handlers.mp import checkin, members, points
from handlers.mp import coupons as mp_coupons
from handlers.mp import referral as mp_referral
from handlers.mp import rewards as mp_rewards
from handlers.mp import share as mp_share
from handlers.mp import subscriptions as mp_subscriptions
from handlers.mp import tasks as mp_tasks
from handlers.mp import wallet as mp_wallet
from handlers.partner import orders as partner
from handlers.wechat import oa as wechat_oa
from handlers.wechat import pay as wechat_pay
from handlers.wechat import wecom as wechat_wecom


def setup(app: web.Application) -> None:
    r = app.router

    # Mini-program
    r.add_post("/mp/login", members.login)
    r.add_get("/mp/me", members.me)
    r.add_post("/mp/card/activate", members.activate_card)
    r.add_post("/mp/checkin", checkin.check_in)
    r.add_post("/mp/checkin/makeup", checkin.make_up)
    r.add_get("/mp/checkin/calendar", checkin.calendar)
    r.add_get("/mp/points", points.history)
    r.add_get("/mp/referral", mp_referral.overview)
    r.add_get("/mp/referral/qrcode/{code}.png", mp_referral.qrcode)
    r.add_post("/mp/subscriptions", mp_subscriptions.accept)
    r.add_get("/mp/rewards", mp_rewards.catalogue)
    r.add_post(r"/mp/rewards/{id:\d{1,18}}/redeem", mp_rewards.redeem)
    r.add_get("/mp/coupons", mp_coupons.mine)
    r.add_get("/mp/tasks", mp_tasks.overview)
    r.add_post("/mp/share-links", mp_share.create)
    r.add_post(r"/mp/share-links/{token:[A-Za-z0-9_-]{1,32}}/claim", mp_share.claim)
    r.add_get("/mp/wallet", mp_wallet.show)
    r.add_get("/mp/wallet/packages", mp_wallet.packages)
    r.add_post("/mp/wallet/recharge", mp_wallet.recharge)

    # The brand's systems (signed)
    r.add_post("/partner/orders", partner.record_order)
    r.add_post(r"/partner/orders/{order_no}/refunds", partner.refund_order)
    r.add_post("/partner/events", partner.record_event)

    # WeChat callbacks
    r.add_get("/wechat/oa", wechat_oa.verify)
    r.add_post("/wechat/oa", wechat_oa.receive)
    r.add_post("/wechat/pay/notify", wechat_pay.notify)
    r.add_post("/wechat/pay/notify/v2", wechat_pay.notify_v2)
    r.add_post("/wechat/pay/refund-notify/v2", wechat_pay.refund_notify_v2)
    r.add_get("/wechat/wecom", wechat_wecom.verify)
    r.add_post("/wechat/wecom", wechat_wecom.receive)

    # Admin
    r.add_get("/admin/rules", admin_rules.show)
    r.add_patch("/admin/rules", admin_rules.change)
    r.add_get("/admin/members", admin_members.search)
    r.add_get("/admin/members/{id}", admin_members.show)
    r.add_post("/admin/members/{id}/points", admin_members.adjust_points)
    r.add_get("/admin/rewards", admin_rewards.listing)
    r.add_post("/admin/rewards", admin_rewards.create)
    r.add_get("/admin/redemptions", admin_rewards.redemptions)
    r.add_post("/admin/coupons/redeem", admin_coupons.redeem)
    r.add_get("/admin/metrics", admin_metrics.show)
    r.add_get("/admin/costs", admin_costs.show)
    r.add_get("/admin/experiments", admin_experiments.listing)
    r.add_post("/admin/experiments", admin_experiments.create)
    r.add_post(r"/admin/experiments/{key:[a-z0-9][a-z0-9_-]{0,63}}/enroll", admin_experiments.enroll)
    r.add_get(r"/admin/experiments/{key:[a-z0-9][a-z0-9_-]{0,63}}/results", admin_experiments.results)
    r.add_get(r"/admin/segments/{name}.csv", admin_segments.export)
    r.add_get("/admin/", admin_dashboard.page)
    r.add_get("/admin/blacklist", admin_blacklist.listing)
    r.add_post("/admin/blacklist", admin_blacklist.add)
    r.add_delete("/admin/blacklist/{kind}/{value}", admin_blacklist.remove)
    r.add_get("/admin/outbox/dead", admin_outbox.dead)
    r.add_post("/admin/outbox/retry", admin_outbox.retry)
    r.add_get("/admin/wecom/stewards", admin_wecom.stewards)
    r.add_put("/admin/wecom/stewards", admin_wecom.set_steward)
    r.add_post("/admin/wecom/broadcasts", admin_wecom.broadcast)
    r.add_get("/admin/campaigns", admin_campaigns.listing)
    r.add_post("/admin/campaigns", admin_campaigns.create)
    r.add_get("/admin/wallet/packages", admin_wallet.packages)
    r.add_post("/admin/wallet/packages", admin_wallet.create_package)
    r.add_post(r"/admin/wallet/recharges/{id:\d{1,18}}/refund", admin_wallet.refund_recharge)
    r.add_get("/admin/wallet/reconciliation", admin_wallet.reconciliation_report)

    # Operations
    r.add_get("/healthz", ops.healthz)
    r.add_get("/metrics", ops.prometheus)
