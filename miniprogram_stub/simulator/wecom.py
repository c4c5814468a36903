"""企业微信 (WeCom) customer contact, simulated: a corp, its staff, their customers and corp tags.

Served by the same simulator app as WeChat (`add_wecom_routes`), so in sandbox mode and in
tests the backend's WeComClient talks HTTP to it. Everything called is recorded in
`WeComState.calls`; tests script outages (`down`) and hand edits (`set_tags`, `delete_tag`,
`add_hand_group`) on the state under `wecom_state_key`.

A customer whose external_userid is `wmsim.<staff userid>.<unionid>` is always known (like the
`sim:` login codes): it follows that staff member and has that unionid. `python -m
miniprogram_stub wecom add-contact` relies on it, since it cannot reach this in-process state.
"""
from __future__ import annotations

import functools
import itertools
import json
import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

SANDBOX_CORP_ID = "ww-sandbox-corp"
SANDBOX_CORP_SECRET = "sandbox-wecom-secret"
SANDBOX_WECOM_TOKEN = "sandbox-wecom-token"
SANDBOX_WECOM_AES_KEY = "wecomSandboxAesKey0123456789abcdefghijklmno"
SANDBOX_STAFF = ("steward-01", "steward-02", "sales-01")
WELCOME_TTL = 20.0
SIM_PREFIX = "wmsim."

# WeCom's answers the backend must handle.
INVALID_EXTERNAL_USER = (40096, "invalid external userid")
INVALID_TAG = (40068, "invalid tagid")
NOT_OWNED = (301002, "tag not created by this app, no privilege")
INVALID_WELCOME_CODE = (41096, "invalid welcome_code")
INVALID_TOKEN = (40014, "invalid access_token")
EXPIRED_TOKEN = (42001, "access_token expired")


@dataclass
class Customer:
    external_userid: str
    name: str
    unionid: str | None
    # staff userid -> the corp tag ids that staff member put on this customer
    follows: dict[str, set[str]] = field(default_factory=dict)


@dataclass
class TagGroup:
    group_id: str
    name: str
    tags: dict[str, str] = field(default_factory=dict)  # tag id -> name
    by_app: bool = True  # False: made by hand in the admin console, not ours to change


@dataclass
class WeComState:
    corp_id: str = SANDBOX_CORP_ID
    secret: str = SANDBOX_CORP_SECRET
    token_ttl: int = 7200
    staff: set[str] = field(default_factory=lambda: set(SANDBOX_STAFF))
    customers: dict[str, Customer] = field(default_factory=dict)
    groups: dict[str, TagGroup] = field(default_factory=dict)
    tokens: dict[str, float] = field(default_factory=dict)  # value -> monotonic expiry
    welcome_codes: dict[str, tuple[str, str, float]] = field(default_factory=dict)
    down: bool = False
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    welcomes: list[dict[str, Any]] = field(default_factory=list)
    templates: list[dict[str, Any]] = field(default_factory=list)
    # staff userid -> its customers' external_userids, in the order they were added (paging)
    followers: dict[str, list[str]] = field(default_factory=dict)
    _ids: Any = field(default_factory=lambda: itertools.count(1), repr=False)

    # -- scripting (tests, the demo) -------------------------------------------------------

    def add_contact(self, *, staff: str, unionid: str | None, name: str = "客户") -> tuple[str, str]:
        """A customer adds `staff`: (external_userid, WelcomeCode). The same unionid is the same
        customer whichever staff member it adds."""
        found = next((c for c in self.customers.values() if unionid and c.unionid == unionid), None)
        if found is None:
            found = Customer(external_userid="wm" + secrets.token_hex(14), name=name, unionid=unionid)
            self.customers[found.external_userid] = found
        self.follow(found, staff)
        code = "wc" + secrets.token_hex(16)
        self.welcome_codes[code] = (staff, found.external_userid, time.monotonic() + WELCOME_TTL)
        return found.external_userid, code

    def customer(self, external_userid: str) -> Customer | None:
        found = self.customers.get(external_userid)
        if found is None and external_userid.startswith(SIM_PREFIX):
            _, staff, unionid = (external_userid.split(".", 2) + ["", ""])[:3]
            if staff and unionid:
                found = Customer(external_userid=external_userid, name="沙盒客户", unionid=unionid)
                self.customers[external_userid] = found
                self.follow(found, staff)
        return found

    def follow(self, customer: Customer, staff: str, tags: set[str] | None = None) -> None:
        """`customer` follows `staff` (with `tags`); kept in the staff member's paging order."""
        if staff not in customer.follows:
            self.followers.setdefault(staff, []).append(customer.external_userid)
        customer.follows[staff] = set(tags or customer.follows.get(staff, set()))

    def tags_of(self, external_userid: str, staff: str) -> set[str]:
        return set(self.customers[external_userid].follows.get(staff, set()))

    def set_tags(self, external_userid: str, staff: str, tag_ids: set[str]) -> None:
        """Tags changed by hand in the WeCom client."""
        self.customers[external_userid].follows[staff] = set(tag_ids)

    def tag_names(self, external_userid: str, staff: str) -> set[str]:
        names = {tid: name for g in self.groups.values() for tid, name in g.tags.items()}
        return {names.get(t, t) for t in self.tags_of(external_userid, staff)}

    def delete_tag(self, tag_id: str) -> None:
        """Someone deleted a corp tag in the admin console: it leaves every customer too."""
        for group in self.groups.values():
            group.tags.pop(tag_id, None)
        for customer in self.customers.values():
            for tags in customer.follows.values():
                tags.discard(tag_id)

    def add_hand_group(self, name: str, tags: list[str]) -> TagGroup:
        """A tag group made by hand in the admin console (not the app's: 301002 on mark_tag)."""
        group = TagGroup(group_id=self._new_id("et"), name=name, by_app=False)
        for tag in tags:
            group.tags[self._new_id("et")] = tag
        self.groups[group.group_id] = group
        return group

    def called(self, path: str) -> list[dict[str, Any]]:
        return [body for p, body in self.calls if p == path]

    def _new_id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):08d}"


wecom_state_key = web.AppKey("wecom_simulator_state", WeComState)


def reply(body: dict[str, Any]) -> web.Response:
    return web.Response(text=json.dumps(body, ensure_ascii=False), content_type="application/json")


def error(pair: tuple[int, str]) -> web.Response:
    return reply({"errcode": pair[0], "errmsg": pair[1]})


def ok(**body: Any) -> web.Response:
    return reply({"errcode": 0, "errmsg": "ok", **body})


def endpoint(*, token: bool = True):
    """Outage (HTTP 503), access-token check, the JSON body, and a record of the call."""
    def wrap(handler):
        @functools.wraps(handler)
        async def run(request: web.Request) -> web.StreamResponse:
            state = request.app[wecom_state_key]
            if state.down:
                return web.Response(status=503, text="503 Service Temporarily Unavailable")
            if token:
                expiry = state.tokens.get(request.query.get("access_token", ""))
                if expiry is None:
                    return error(INVALID_TOKEN)
                if time.monotonic() >= expiry:
                    return error(EXPIRED_TOKEN)
            body: dict[str, Any] = {}
            if request.method == "POST":
                try:
                    body = json.loads(await request.read() or b"{}")
                except (ValueError, UnicodeDecodeError):
                    return reply({"errcode": 47001, "errmsg": "data format error"})
                if not isinstance(body, dict):
                    return reply({"errcode": 47001, "errmsg": "data format error"})
            state.calls.append((request.path, body or dict(request.query)))
            return await handler(request, state, body)
        return run
    return wrap


@endpoint(token=False)
async def gettoken(request: web.Request, state: WeComState, body: dict) -> web.Response:
    q = request.query
    if q.get("corpid") != state.corp_id:
        return reply({"errcode": 40013, "errmsg": "invalid corpid"})
    if q.get("corpsecret") != state.secret:
        return reply({"errcode": 40001, "errmsg": "invalid secret"})
    value = secrets.token_urlsafe(24)
    state.tokens[value] = time.monotonic() + state.token_ttl
    return ok(access_token=value, expires_in=state.token_ttl)


def _contact(state: WeComState, customer: Customer) -> dict[str, Any]:
    body = {"external_userid": customer.external_userid, "name": customer.name, "type": 1}
    if customer.unionid:
        body["unionid"] = customer.unionid
    return body


def _tags(state: WeComState, tag_ids: set[str]) -> list[dict[str, Any]]:
    out = []
    for group in state.groups.values():
        out += [{"group_name": group.name, "tag_name": name, "tag_id": tid, "type": 1}
                for tid, name in group.tags.items() if tid in tag_ids]
    return out


@endpoint()
async def get_contact(request: web.Request, state: WeComState, body: dict) -> web.Response:
    customer = state.customer(request.query.get("external_userid", ""))
    if customer is None:
        return error(INVALID_EXTERNAL_USER)
    return ok(external_contact=_contact(state, customer),
              follow_user=[{"userid": staff, "createtime": 0, "tags": _tags(state, tags)}
                           for staff, tags in customer.follows.items()])


@endpoint()
async def batch_get_by_user(request: web.Request, state: WeComState, body: dict) -> web.Response:
    userids = [u for u in body.get("userid_list") or [] if isinstance(u, str)]
    if not userids or len(userids) > 100:
        return reply({"errcode": 40058, "errmsg": "userid_list: 1 to 100 userids"})
    limit = min(max(int(body.get("limit") or 50), 1), 100)
    try:
        start = int(body.get("cursor") or 0)
    except (TypeError, ValueError):
        return reply({"errcode": 40093, "errmsg": "invalid cursor"})
    # The cursor is an offset into the staff members' follower lists, one after the other.
    page: list[tuple[Customer, str]] = []
    offset, end = 0, start + limit
    for staff in userids:
        listed = state.followers.get(staff, [])
        if offset + len(listed) > start and offset < end:
            for ext in listed[max(start - offset, 0):end - offset]:
                page.append((state.customers[ext], staff))
        offset += len(listed)
    return ok(external_contact_list=[
        {"external_contact": _contact(state, c),
         "follow_info": {"userid": staff, "tag_id": sorted(c.follows.get(staff, ()))}}
        for c, staff in page if staff in c.follows],
        next_cursor=str(end) if end < offset else "")


@endpoint()
async def get_corp_tag_list(request: web.Request, state: WeComState, body: dict) -> web.Response:
    return ok(tag_group=[{"group_id": g.group_id, "group_name": g.name,
                          "tag": [{"id": tid, "name": name} for tid, name in g.tags.items()]}
                         for g in state.groups.values()])


@endpoint()
async def add_corp_tag(request: web.Request, state: WeComState, body: dict) -> web.Response:
    names = [t.get("name") for t in body.get("tag") or [] if isinstance(t, dict)]
    if not names or not all(isinstance(n, str) and n for n in names):
        return reply({"errcode": 40071, "errmsg": "tag name required"})
    group = state.groups.get(body.get("group_id") or "")
    if group is None:
        group = next((g for g in state.groups.values() if g.name == body.get("group_name")), None)
    if group is None:
        group = TagGroup(group_id=state._new_id("et"), name=str(body.get("group_name") or "未分组"))
        state.groups[group.group_id] = group
    if not group.by_app:
        return error(NOT_OWNED)
    created = []
    for name in names:
        if name in group.tags.values():
            return reply({"errcode": 40071, "errmsg": "tag name exists"})
        tid = state._new_id("et")
        group.tags[tid] = name
        created.append({"id": tid, "name": name})
    return ok(tag_group={"group_id": group.group_id, "group_name": group.name, "tag": created})


@endpoint()
async def mark_tag(request: web.Request, state: WeComState, body: dict) -> web.Response:
    customer = state.customer(str(body.get("external_userid") or ""))
    staff = str(body.get("userid") or "")
    if customer is None or staff not in customer.follows:
        return error(INVALID_EXTERNAL_USER)
    owner = {tid: g for g in state.groups.values() for tid in g.tags}
    wanted = [*(body.get("add_tag") or []), *(body.get("remove_tag") or [])]
    if any(t not in owner for t in wanted):
        return error(INVALID_TAG)
    if any(not owner[t].by_app for t in wanted):
        return error(NOT_OWNED)
    tags = customer.follows[staff]
    tags.difference_update(body.get("remove_tag") or [])
    tags.update(body.get("add_tag") or [])
    return ok()


@endpoint()
async def send_welcome_msg(request: web.Request, state: WeComState, body: dict) -> web.Response:
    code = str(body.get("welcome_code") or "")
    issued = state.welcome_codes.pop(code, None)
    if issued is None and not code.startswith("sim:"):
        return error(INVALID_WELCOME_CODE)
    if issued is not None and time.monotonic() > issued[2]:
        return error(INVALID_WELCOME_CODE)
    state.welcomes.append({**body, "userid": issued[0] if issued else None,
                           "external_userid": issued[1] if issued else None})
    return ok()


@endpoint()
async def add_msg_template(request: web.Request, state: WeComState, body: dict) -> web.Response:
    sender = str(body.get("sender") or "")
    targets = [t for t in body.get("external_userid") or [] if isinstance(t, str)]
    if sender not in state.staff or not targets:
        return reply({"errcode": 41048, "errmsg": "sender or external_userid invalid"})
    failed = [t for t in targets if (c := state.customer(t)) is None or sender not in c.follows]
    msgid = "msg" + secrets.token_hex(12)
    state.templates.append({**body, "msgid": msgid, "fail_list": failed})
    return ok(msgid=msgid, fail_list=failed)


async def sim_state(request: web.Request) -> web.Response:
    state = request.app[wecom_state_key]
    return reply({"customers": len(state.customers), "groups": len(state.groups),
                  "calls": len(state.calls), "welcomes": len(state.welcomes),
                  "templates": len(state.templates)})


def add_wecom_routes(app: web.Application, *, state: WeComState | None = None) -> None:
    """Serve WeCom's customer-contact endpoints from the simulator app."""
    app[wecom_state_key] = state or WeComState()
    base = "/cgi-bin/externalcontact"
    app.add_routes([
        web.get("/cgi-bin/gettoken", gettoken),
        web.get(f"{base}/get", get_contact),
        web.post(f"{base}/batch/get_by_user", batch_get_by_user),
        web.post(f"{base}/get_corp_tag_list", get_corp_tag_list),
        web.post(f"{base}/add_corp_tag", add_corp_tag),
        web.post(f"{base}/mark_tag", mark_tag),
        web.post(f"{base}/send_welcome_msg", send_welcome_msg),
        web.post(f"{base}/add_msg_template", add_msg_template),
        web.get("/_sim/wecom", sim_state),
    ])
