"""Mini-program: the member's invitation (code, share path, QR code, funnel)."""
from __future__ import annotations

from aiohttp import web

from app import keys
from app.domain import members, referral
from handlers.mp.auth import member_id


async def overview(request: web.Request) -> web.Response:
    member = await members.get(await member_id(request))
    funnel = await referral.funnel(inviter_id=member.id)
    return web.json_response({
        "invite_code": member.invite_code,
        "share_path": referral.share_path(member.invite_code),
        "qrcode_url": str(request.url.with_path(f"/mp/referral/qrcode/{member.invite_code}.png")
                          .with_query(None)),
        "funnel": {"invited": funnel.invited, "paid": funnel.paid, "rewarded": funnel.rewarded},
    })


async def qrcode(request: web.Request) -> web.Response:
    # Public: an <image src> carries no bearer token. Only existing codes, each fetched once.
    png = await referral.qrcode(wechat=request.app[keys.wechat_key],
                                data_dir=request.app[keys.settings_key].data_dir,
                                invite_code=request.match_info["code"].upper())
    return web.Response(body=png, content_type="image/png",
                        headers={"Cache-Control": "public, max-age=86400"})
