"""企业微信 customer contact: linking customers to members, tier tags, stewards, tier broadcasts.

- A customer (external_userid) following a staff member is a WeComContact, one per
  (corp, external_userid, staff userid); it is our member's once `externalcontact/get` gives
  a unionid a member has, and waits unlinked until then (`link_waiting`).
- Tier tags: our tag group "会员等级" has one tag per tier. A tier change, and a new link,
  queue one `mark_tag` per contact through the outbox (channel "wecom", kind "mark_tag") in
  the transaction that caused it; the send reads the member's tier *then*, so late or
  reordered sends still converge on the current tier. `reconcile` compares wanted and actual
  tags daily and queues repairs.
- Stewards: per member, else per tier (gold and diamond are the steward tiers by default).
  A newly linked member whose steward they added gets the steward's welcome message within
  the WelcomeCode's 20 seconds.
"""
from __future__ import annotations

import logging
import re
from datetime import datetime, timedelta, timezone

from tortoise.exceptions import IntegrityError
from tortoise.transactions import in_transaction

from app.domain import messages
from app.domain.delivery import Permanent, Skip
from app.domain.rules import Rules
from app.errors import Conflict, InvalidField, NotFound
from app.models import AuditLog, Member, WeComBroadcast, WeComBroadcastSend, WeComContact, WeComSteward, WeComTag
from app.wechat.client import WeChatError
from app.wechat.wecom import (
    INVALID_EXTERNAL_USER, INVALID_TAG, TAG_NOT_OWNED, TEMPLATE_MAX_RECIPIENTS, WeComEvent,
)

log = logging.getLogger("app.wecom")

GROUP_NAME = "会员等级"
STEWARD_TIERS = ("gold", "diamond")
WELCOME_VALIDITY = timedelta(seconds=20)
ACTIVE, DELETED, INVALID = "active", "deleted", "invalid"
CHANNEL, MARK_TAG = "wecom", "mark_tag"
TEXT_MAX = 4000
_USERID = re.compile(r"[A-Za-z0-9_.@-]{1,64}")


# -- tier tags -------------------------------------------------------------------------------


async def queue_mark_tags(*, conn, causes: dict[int, str], now: datetime) -> int:
    """Queue one mark_tag for each active contact of each member in `causes` (member id → the
    cause, e.g. "tc{tier_change_id}"), once per (contact, cause); returns how many were new.
    Runs in the caller's transaction; a member with no contact costs one indexed query."""
    if not causes:
        return 0
    contacts = await WeComContact.filter(member_id__in=list(causes), state=ACTIVE) \
        .using_db(conn).values_list("id", "member_id")
    return await messages.enqueue_many(
        [{"member_id": member_id, "kind": MARK_TAG, "period": f"{contact_id}:{causes[member_id]}",
          "channel": CHANNEL, "values": {"contact_id": contact_id}} for contact_id, member_id in contacts],
        now=now, conn=conn)


async def ensure_tags(*, client, rules: Rules, refresh: bool = False) -> dict[str, str]:
    """Tier key → corp tag id in the group "会员等级": found again by name with
    get_corp_tag_list, the missing ones created with add_corp_tag; kept in wecom_tag."""
    corp = client.corp_id
    levels = rules.tiers.levels
    if refresh:
        await WeComTag.filter(corp_id=corp).delete()
    known = dict(await WeComTag.filter(corp_id=corp).values_list("tier", "tag_id"))
    if all(level.key in known for level in levels):
        return known
    for attempt in range(2):
        groups = [g for g in await client.get_corp_tag_list() if g.get("group_name") == GROUP_NAME]
        by_name = {t["name"]: (t["id"], g["group_id"]) for g in groups for t in g.get("tag") or []}
        missing = [level.name for level in levels if level.name not in by_name]
        if not missing:
            break
        try:
            group = await client.add_corp_tag(group_name=GROUP_NAME, tags=missing,
                                              group_id=groups[0]["group_id"] if groups else None)
        except WeChatError as exc:
            # Another worker created them at the same moment: list again and take theirs.
            if attempt == 0 and exc.errcode not in (-1, TAG_NOT_OWNED):
                continue
            raise
        by_name.update({t["name"]: (t["id"], group["group_id"]) for t in group.get("tag") or []})
        break
    tags = {}
    for level in levels:
        tag_id, group_id = by_name[level.name]
        tags[level.key] = tag_id
        await WeComTag.update_or_create(defaults={"tag_id": tag_id, "group_id": group_id},
                                        corp_id=corp, tier=level.key)
    return tags


async def deliver(message, *, client, rules: Rules) -> str | None:
    """Send one queued mark_tag: the member's current tier's tag added, the other tier tags
    removed. 40096: the contact is marked invalid and the message skipped; 40068: the tag ids
    are looked up again and the call made once more; 301002: dead (the group is not ours)."""
    if client is None:
        raise Permanent("wecom is not configured")
    contact_id = int(((message.payload or {}).get("values") or {}).get("contact_id") or 0)
    contact = await WeComContact.get_or_none(id=contact_id)
    if contact is None or contact.state != ACTIVE or contact.member_id is None:
        raise Skip("contact_gone")
    tier = (await Member.filter(id=contact.member_id).values_list("tier", flat=True))[0]
    for attempt in range(2):
        tags = await ensure_tags(client=client, rules=rules, refresh=attempt > 0)
        add = [tags[tier]] if tier in tags else []
        try:
            await client.mark_tag(userid=contact.staff_userid, external_userid=contact.external_userid,
                                  add_tag=add, remove_tag=[t for k, t in tags.items() if k != tier])
            return None
        except WeChatError as exc:
            if exc.errcode == INVALID_EXTERNAL_USER:
                await WeComContact.filter(id=contact.id).update(state=INVALID)
                raise Skip("invalid_external_user") from None
            if exc.errcode == INVALID_TAG and attempt == 0:
                continue  # a tag deleted by hand: find or create the tags again
            if exc.errcode in (INVALID_TAG, TAG_NOT_OWNED):
                raise Permanent(f"{exc.errcode}: {exc.errmsg}") from None
            raise
    raise AssertionError("unreachable")


async def reconcile(*, client, rules: Rules, now: datetime, page: int = 100,
                    total=lambda n: None, advance=lambda n: None) -> dict:
    """Compare each active linked contact's tier tags in WeCom (batch/get_by_user, 100 per page)
    with its member's tier and queue a mark_tag where they differ; a contact WeCom no longer
    lists is marked deleted. First asks again about customers without a unionid and links the
    waiting ones."""
    await refresh_unknown(client=client)
    linked = await link_waiting(now=now)
    tags = await ensure_tags(client=client, rules=rules)
    ours = set(tags.values())
    rows = await WeComContact.filter(corp_id=client.corp_id, state=ACTIVE, member_id__not_isnull=True) \
        .values_list("id", "member_id", "external_userid", "staff_userid", "member__tier")
    wanted = {(ext, staff): (cid, mid, tier) for cid, mid, ext, staff, tier in rows}
    total(len(wanted))
    staff = sorted({s for _, s in wanted})
    seen: set[tuple[str, str]] = set()
    drifted: list[tuple[int, int]] = []
    for start in range(0, len(staff), 100):
        cursor = ""
        while True:
            data = await client.batch_get_by_user(userids=staff[start:start + 100], cursor=cursor, limit=page)
            items = data.get("external_contact_list") or []
            for item in items:
                ext = (item.get("external_contact") or {}).get("external_userid", "")
                follow = item.get("follow_info") or {}
                key = (ext, follow.get("userid", ""))
                if key not in wanted:
                    continue
                seen.add(key)
                cid, mid, tier = wanted[key]
                if set(follow.get("tag_id") or []) & ours != {tags.get(tier)}:
                    drifted.append((cid, mid))
            advance(len(items))
            cursor = data.get("next_cursor") or ""
            if not cursor:
                break
    run = now.astimezone(timezone.utc).strftime("%Y%m%dT%H%M%S")
    queued = await messages.enqueue_many(
        [{"member_id": mid, "kind": MARK_TAG, "period": f"{cid}:reconcile:{run}", "channel": CHANNEL,
          "values": {"contact_id": cid}} for cid, mid in drifted], now=now)
    gone = [wanted[key][0] for key in wanted.keys() - seen]
    for start in range(0, len(gone), 1000):
        await WeComContact.filter(id__in=gone[start:start + 1000]).update(state=DELETED)
    return {"seen": len(wanted), "sent": queued, "skipped": len(wanted) - len(drifted) - len(gone),
            "failed": 0, "drifted": len(drifted), "gone": len(gone), "linked": linked}


# -- customers -------------------------------------------------------------------------------


async def link_waiting(*, now: datetime) -> int:
    """Link every unlinked customer whose unionid a member now has, queueing its first mark_tag."""
    waiting = await WeComContact.filter(member_id=None, unionid__not_isnull=True, state=ACTIVE) \
        .values_list("id", "unionid")
    linked = 0
    for start in range(0, len(waiting), 1000):
        part = waiting[start:start + 1000]
        members = dict(await Member.filter(unionid__in=[u for _, u in part]).values_list("unionid", "id"))
        for contact_id, unionid in part:
            if unionid in members:
                linked += await _link(contact_id=contact_id, member_id=members[unionid], now=now)
    return linked


async def refresh_unknown(*, client, limit: int = 1000) -> int:
    """Ask externalcontact/get again for up to `limit` unlinked customers without a unionid (an
    outage when they added us, or not bound to the open platform then), least recently asked
    first; returns how many now have one. 40096 marks the contact invalid."""
    rows = await WeComContact.filter(corp_id=client.corp_id, member_id=None, unionid=None, state=ACTIVE) \
        .order_by("updated_at", "id").limit(limit).values_list("id", "external_userid")
    found = 0
    for contact_id, external in rows:
        try:
            details = await client.get_external_contact(external)
        except WeChatError as exc:
            if exc.errcode == INVALID_EXTERNAL_USER:
                await WeComContact.filter(id=contact_id).update(state=INVALID)
                continue
            raise
        unionid = ((details.get("external_contact") or {}).get("unionid") or "")[:64] or None
        # Saved even when still None, so updated_at moves it to the back of the queue.
        await WeComContact.filter(id=contact_id).update(unionid=unionid)
        found += unionid is not None
    return found


async def link_member(*, member_id: int, unionid: str, now: datetime) -> int:
    """A member just got `unionid` (login): link the customers waiting with it, at once."""
    waiting = await WeComContact.filter(unionid=unionid, member_id=None, state=ACTIVE).values_list("id", flat=True)
    return sum([await _link(contact_id=contact_id, member_id=member_id, now=now) for contact_id in waiting])


async def _link(*, contact_id: int, member_id: int, now: datetime) -> int:
    async with in_transaction() as tx:
        # Conditional on still being unlinked: the reconcile job and a login never both queue.
        if not await WeComContact.filter(id=contact_id, member_id=None).using_db(tx).update(member_id=member_id):
            return 0
        await _queue(conn=tx, contact_id=contact_id, member_id=member_id, cause="link", now=now)
    return 1


async def _queue(*, conn, contact_id: int, member_id: int, cause: str, now: datetime) -> None:
    await messages.enqueue_many([{"member_id": member_id, "kind": MARK_TAG, "period": f"{contact_id}:{cause}",
                                  "channel": CHANNEL, "values": {"contact_id": contact_id}}], now=now, conn=conn)


async def on_event(*, client, rules: Rules, event: WeComEvent, now: datetime) -> str:
    """Apply one change_external_contact push; returns what happened (for the log)."""
    if event.event != "change_external_contact" or not event.external_userid or not event.staff_userid:
        return "ignored"
    if event.change_type in ("del_external_contact", "del_follow_user"):
        gone = await WeComContact.filter(corp_id=client.corp_id, external_userid=event.external_userid,
                                         staff_userid=event.staff_userid).update(state=DELETED)
        return "deleted" if gone else "unknown"
    if event.change_type not in ("add_external_contact", "edit_external_contact", "add_half_external_contact"):
        return "ignored"
    contact, linked = await record_contact(client=client, event=event, now=now)
    if contact is None:
        return "invalid"
    if event.change_type == "add_external_contact" and event.welcome_code and contact.member_id:
        return await welcome(client=client, rules=rules, contact=contact, event=event, now=now)
    return "linked" if linked else "recorded"


async def record_contact(*, client, event: WeComEvent, now: datetime) -> tuple[WeComContact | None, bool]:
    """Keep the (customer, staff) pair with the customer's unionid from externalcontact/get, linked
    to the member with that unionid; a new link queues its mark_tag in the same transaction.
    Returns (contact, newly linked); (None, False) when WeCom does not know the customer."""
    try:
        details = await client.get_external_contact(event.external_userid)
    except WeChatError as exc:
        if exc.errcode == INVALID_EXTERNAL_USER:
            return None, False
        # WeCom down: keep the pair without its unionid; `reconcile` asks again (refresh_unknown).
        log.warning("wecom contact details unavailable", extra={"fields": {"errcode": exc.errcode}})
        details = {}
    profile = details.get("external_contact") or {}
    unionid = (profile.get("unionid") or "")[:64] or None
    member_id = None
    if unionid:
        found = await Member.filter(unionid=unionid).order_by("id").limit(1).values_list("id", flat=True)
        member_id = found[0] if found else None
    where = dict(corp_id=client.corp_id, external_userid=event.external_userid, staff_userid=event.staff_userid)
    fields = dict(unionid=unionid, name=(profile.get("name") or "")[:64] or None)
    contact = await WeComContact.filter(**where).first()
    if contact is None:
        try:
            contact = await WeComContact.create(**where, **fields)
        except IntegrityError:  # WeCom's retry raced the first delivery
            contact = await WeComContact.get(**where)
    async with in_transaction() as tx:
        mine = WeComContact.filter(id=contact.id).using_db(tx)
        await mine.update(**fields)
        # Conditional updates, checked by row count: two deliveries link (and queue) once.
        linked = bool(member_id) and bool(await WeComContact.filter(id=contact.id, member_id=None)
                                          .using_db(tx).update(member_id=member_id, state=ACTIVE))
        back = bool(await WeComContact.filter(id=contact.id, state__not=ACTIVE).using_db(tx).update(state=ACTIVE))
        contact = await mine.get()
        if linked:
            await _queue(conn=tx, contact_id=contact.id, member_id=contact.member_id, cause="link", now=now)
        elif back and contact.member_id:
            # Added again after a deletion: the tags went with it.
            await _queue(conn=tx, contact_id=contact.id, member_id=contact.member_id,
                         cause=f"add{event.create_time}", now=now)
    return contact, linked


# -- stewards --------------------------------------------------------------------------------


async def steward_for(*, member_id: int, tier: str) -> str | None:
    """The member's own steward, else their tier's (None: no steward for them)."""
    rows = dict(await WeComSteward.filter(scope__in=[f"member:{member_id}", f"tier:{tier}"])
                .values_list("scope", "staff_userid"))
    return rows.get(f"member:{member_id}") or rows.get(f"tier:{tier}")


async def welcome(*, client, rules: Rules, contact: WeComContact, event: WeComEvent, now: datetime) -> str:
    """The steward's welcome (send_welcome_msg) naming the member's tier and points, once per
    contact, only when the customer added their steward and the WelcomeCode (20 s from the
    event's CreateTime) is still valid at `now`."""
    created = datetime.fromtimestamp(event.create_time, timezone.utc)
    if now - created > WELCOME_VALIDITY:
        return "welcome_expired"
    member = await Member.get(id=contact.member_id)
    if await steward_for(member_id=member.id, tier=member.tier) != contact.staff_userid:
        return "linked"
    if not await WeComContact.filter(id=contact.id, welcomed_at=None).update(welcomed_at=now):
        return "already_welcomed"
    level = rules.tier(member.tier)
    text = (f"{member.name or '您'}好，我是您的专属管家。您是尊贵的{level.name}会员，"
            f"当前积分 {int(member.points)}，有任何需要随时找我。")
    try:
        await client.send_welcome_msg(welcome_code=event.welcome_code, text=text)
    except WeChatError as exc:
        # The code is single-use and short-lived: nothing to retry later.
        log.warning("wecom welcome not sent", extra={"fields": {"errcode": exc.errcode, "contact": contact.id}})
        return "welcome_failed"
    return "welcomed"


def _tier(rules: Rules, key: str) -> str:
    if key not in {level.key for level in rules.tiers.levels}:
        raise InvalidField("tier", f"unknown tier {key!r}")
    return key


def _staff(userid: str | None) -> str | None:
    if userid is not None and not _USERID.fullmatch(userid):
        raise InvalidField("steward", "a WeCom userid: 1-64 letters, digits or _ . @ -")
    return userid


async def list_stewards(*, rules: Rules) -> dict:
    """The tier rules (gold and diamond always listed) and the per-member stewards."""
    rows = await WeComSteward.all().order_by("id").values("scope", "tier", "member_id", "staff_userid")
    tiers: dict[str, str | None] = {key: None for key in STEWARD_TIERS}
    members = []
    for row in rows:
        if row["tier"]:
            tiers[row["tier"]] = row["staff_userid"]
        else:
            members.append({"member_id": row["member_id"], "steward": row["staff_userid"]})
    order = [level.key for level in rules.tiers.levels]
    return {"tiers": dict(sorted(tiers.items(), key=lambda kv: order.index(kv[0]) if kv[0] in order else 99)),
            "members": members}


async def set_steward(*, rules: Rules, actor: str, steward: str | None, tier: str | None = None,
                      member_id: int | None = None) -> dict:
    """Assign (or with None remove) the steward of a tier or of one member; one audit row."""
    if (tier is None) == (member_id is None):
        raise InvalidField("tier", "give exactly one of tier or member_id")
    steward = _staff(steward)
    if tier is not None:
        scope, fields = f"tier:{_tier(rules, tier)}", {"tier": tier}
    else:
        if not await Member.filter(id=member_id).exists():
            raise NotFound(f"member {member_id} not found", code="member_not_found")
        scope, fields = f"member:{member_id}", {"member_id": member_id}
    async with in_transaction() as tx:
        before = await WeComSteward.filter(scope=scope).using_db(tx).values_list("staff_userid", flat=True)
        if steward is None:
            await WeComSteward.filter(scope=scope).using_db(tx).delete()
        else:
            await WeComSteward.update_or_create(defaults={"staff_userid": steward, **fields}, scope=scope,
                                                using_db=tx)
        await AuditLog.create(actor=actor, action="wecom.steward", target=scope,
                              before={"steward": before[0] if before else None}, after={"steward": steward},
                              using_db=tx)
    return await list_stewards(rules=rules)


# -- broadcasts ------------------------------------------------------------------------------


def render_broadcast(broadcast: WeComBroadcast, sends: list[WeComBroadcastSend]) -> dict:
    return {
        "id": broadcast.id, "tier": broadcast.tier, "text": broadcast.text,
        "created_at": broadcast.created_at.isoformat() if broadcast.created_at else None,
        "sends": [{"sender": s.sender, "msgid": s.msgid, "recipients": s.recipients,
                   "failed": s.failed, "error": s.error} for s in sends],
    }


async def broadcast(*, client, rules: Rules, tier: str, text: str, actor: str) -> dict:
    """A mass message (add_msg_template) from each steward to the tier's linked customers who
    follow that steward; each call recorded with WeCom's msgid, the whole an audit row.
    No steward or no such customer: 409 no_recipients."""
    _tier(rules, tier)
    text = (text or "").strip()
    if not text or len(text) > TEXT_MAX:
        raise InvalidField("text", f"1 to {TEXT_MAX} characters")
    rows = await WeComContact.filter(corp_id=client.corp_id, state=ACTIVE, member__tier=tier) \
        .order_by("id").values_list("member_id", "staff_userid", "external_userid")
    stewards = dict(await WeComSteward.filter(
        scope__in=[f"tier:{tier}", *{f"member:{m}" for m, _, _ in rows}]).values_list("scope", "staff_userid"))
    by_sender: dict[str, list[str]] = {}
    for member_id, staff, ext in rows:
        sender = stewards.get(f"member:{member_id}") or stewards.get(f"tier:{tier}")
        if sender == staff:
            by_sender.setdefault(sender, []).append(ext)
    if not by_sender:
        raise Conflict(f"no linked customer of tier {tier} follows a steward", code="no_recipients")
    record = await WeComBroadcast.create(tier=tier, text=text, actor=actor)
    sends = []
    for sender, targets in by_sender.items():
        for start in range(0, len(targets), TEMPLATE_MAX_RECIPIENTS):
            part = targets[start:start + TEMPLATE_MAX_RECIPIENTS]
            send = WeComBroadcastSend(broadcast=record, sender=sender, recipients=len(part))
            try:
                answer = await client.add_msg_template(sender=sender, external_userids=part, text=text)
                send.msgid, send.failed = answer.get("msgid"), list(answer.get("fail_list") or [])
            except WeChatError as exc:
                send.error = str(exc)[:255]
            await send.save()
            sends.append(send)
    await AuditLog.create(actor=actor, action="wecom.broadcast", target=f"tier:{tier}", before=None,
                          after={"broadcast": record.id, "msgids": [s.msgid for s in sends],
                                 "recipients": sum(s.recipients for s in sends)})
    return render_broadcast(record, sends)

