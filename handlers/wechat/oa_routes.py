"""What the official account answers: menu clicks, keywords, follows and member-card events.

Each handler calls the same domain function as the mini-program (check-in is
app.domain.checkin.check_in) and returns the text to reply, or None for no reply. A
DomainError becomes a text reply with its message (handlers/wechat/oa.py).
"""
from __future__ import annotations

import functools
import logging
from dataclasses import dataclass, field
from datetime import datetime

from aiohttp import web

from app import keys
from app.domain import card, checkin, followers, referral, rules, tasks
from app.domain.followers import Member  # the member type the domain hands back
from app.domain.clock import business_day
from app.wechat.oa import OAMessage
from app.wechat.oa_router import Router

log = logging.getLogger("app.oa")

router = Router()

KEYWORDS = "回复「签到」每日签到，「积分」查积分，「会员卡」看会员卡，「邀请」邀请好友，「帮助」看这份说明。"
NOT_A_MEMBER = ("你还不是会员：在微信里搜索并打开我们的小程序，登录即可成为会员，"
                "之后回到这里就能签到、查积分。")
WELCOME = "欢迎关注！" + KEYWORDS


@dataclass
class OAContext:
    """What a handler may use: the app's clients, the request's `now`, the member once found."""

    app: web.Application
    now: datetime
    _member: Member | None = field(default=None, repr=False)
    _looked_up: bool = field(default=False, repr=False)

    @property
    def wechat(self):
        return self.app[keys.oa_wechat_key]

    async def member(self, msg: OAMessage) -> Member | None:
        """The member behind the push's sender, linked by unionid on first sight."""
        if not self._looked_up:
            self._member = await followers.find_member(oa_openid=msg.from_user, wechat=self.wechat,
                                                       unionid=msg.unionid)
            self._looked_up = True
        return self._member


def members_only(handler):
    """A handler for members: it gets the member as a third argument; a follower who is not
    a member yet is told how to become one instead."""
    @functools.wraps(handler)
    async def guarded(msg: OAMessage, ctx: OAContext):
        member = await ctx.member(msg)
        if member is None:
            return NOT_A_MEMBER
        return await handler(msg, ctx, member)
    return guarded


@router.click("CHECKIN")
@router.text("签到", "checkin")
@members_only
async def on_checkin(msg: OAMessage, ctx: OAContext, member: Member) -> str:
    settings = ctx.app[keys.settings_key]
    result = await checkin.check_in(redis=ctx.app[keys.redis_key], rules=await rules.load(),
                                    member_id=member.id, now=ctx.now, tz=settings.tz)
    text = (f"签到成功！获得 {result.points_awarded} 积分，已连续签到 {result.streak} 天，"
            f"当前积分 {result.balance}。")
    if result.capped:
        text += "（今日积分已达上限）"
    return text


@router.click("MY_POINTS")
@router.text("积分", "points")
@members_only
async def on_points(msg: OAMessage, ctx: OAContext, member: Member) -> str:
    s = await followers.points_summary(member=member, rules=await rules.load(), now=ctx.now)
    lines = [f"当前积分：{s.balance}", f"会员等级：{s.tier_name}"]
    if s.next_tier_name:
        lines.append(f"距离{s.next_tier_name}还差 {s.growth_needed} 成长值")
    if s.expiring:
        day = business_day(s.expiring_by, ctx.app[keys.settings_key].tz)
        lines.append(f"{s.expiring} 积分将于 {day.isoformat()} 前过期")
    else:
        lines.append("30 天内没有即将过期的积分")
    return "\n".join(lines)


@router.click("MY_CARD")
@router.text("会员卡", "card")
@members_only
async def on_card(msg: OAMessage, ctx: OAContext, member: Member) -> str:
    tier = (await rules.load()).tier(member.tier)
    if member.card_code:
        return f"会员卡已在微信卡包中：会员号 {member.id}，{tier.name}，积分 {member.points}。"
    if member.card_activated:
        return f"会员号 {member.id}，{tier.name}，积分 {member.points}。领取微信会员卡后，积分变动会同步到卡包。"
    return "还没有激活会员卡：在小程序「我的」里激活，或领取微信会员卡一键激活。"


@router.click("INVITE")
@router.text("邀请", "invite")
@members_only
async def on_invite(msg: OAMessage, ctx: OAContext, member: Member) -> str:
    return (f"你的邀请码：{member.invite_code}\n"
            # the one share path of CONTRACT.md, as /mp/referral gives it
            f"把小程序页面 {referral.share_path(member.invite_code)} 分享给好友，"
            "好友首单支付后你们各得积分。")


@router.click("HELP")
@router.text("帮助", "help", "?", "？")
async def on_help(msg: OAMessage, ctx: OAContext) -> str:
    return KEYWORDS


@router.event("subscribe", "scan")
async def on_subscribe(msg: OAMessage, ctx: OAContext) -> str:
    member = await ctx.member(msg)
    bound = await followers.follow(member=member, scene=msg.scene, now=ctx.now)
    if msg.event == "scan":
        text = "已收到。" + KEYWORDS
    else:
        text = WELCOME
    if member is None:
        return text + "\n" + NOT_A_MEMBER
    if bound is not None:
        text += "\n已记录你的邀请人，首单支付后你们各得积分。"
    return text


@router.event("unsubscribe")
async def on_unsubscribe(msg: OAMessage, ctx: OAContext) -> None:
    await followers.unfollow(oa_openid=msg.from_user)
    return None


@router.event("user_get_card")
async def on_user_get_card(msg: OAMessage, ctx: OAContext) -> None:
    member = await ctx.member(msg)
    if member is None or not msg.user_card_code:
        log.info("card taken by a non-member", extra={"fields": {"card_id": msg.card_id}})
        return None
    await card.link(member_id=member.id, code=msg.user_card_code, card_id=msg.card_id)
    return None


@router.event("submit_membercard_user_info")
@members_only
async def on_card_activation(msg: OAMessage, ctx: OAContext, member: Member) -> str | None:
    today = business_day(ctx.now, ctx.app[keys.settings_key].tz)
    member = await card.activate(wechat=ctx.wechat, member_id=member.id, activate_ticket=msg.activate_ticket,
                                 code=msg.user_card_code, card_id=msg.card_id, today=today)
    # WeChat's form requires every field: a completed profile, the same task as /mp/card/activate.
    done = await tasks.complete_profile(member_id=member.id, now=ctx.now, tz=ctx.app[keys.settings_key].tz,
                                        redis=ctx.app[keys.redis_key], rules=await rules.load())
    if done is not None and done.points_awarded and not done.duplicate:
        member.points += done.points_awarded
    return f"会员卡已激活：会员号 {member.id}，积分 {member.points}。"


@router.event("user_del_card")
async def on_user_del_card(msg: OAMessage, ctx: OAContext) -> None:
    await card.unlink(code=msg.user_card_code, card_id=msg.card_id)
    return None


@router.event("update_member_card", "user_view_card")
async def on_card_seen(msg: OAMessage, ctx: OAContext) -> None:
    log.info("card event", extra={"fields": {"event": msg.event, "card_id": msg.card_id}})
    return None


@router.fallback
async def on_anything_else(msg: OAMessage, ctx: OAContext) -> str | None:
    if msg.msg_type == "text":
        return "没听懂这句话。" + KEYWORDS
    return None
