"""WeChatClient against the simulator on a real port, with the token cached in real Redis."""
from __future__ import annotations

import asyncio
import uuid
from collections import Counter

import aiohttp
import pytest
from aiohttp import web

from app.wechat.client import WeChatClient, WeChatError, WeChatUnavailable
from miniprogram_stub.simulator import create_simulator_app, state_key
from tests.conftest import redis_client

SECRET = "client-test-secret"


class Faults:
    """A middleware for the simulator app: counts requests per path and plays scripted
    answers (an HTTP status, a JSON body, or a delay) before the real handler."""

    def __init__(self) -> None:
        self.hits: Counter[str] = Counter()
        self.scripted: dict[str, list] = {}
        self.delay: dict[str, float] = {}

    @web.middleware
    async def middleware(self, request, handler):
        self.hits[request.path] += 1
        if request.path in self.delay:
            await asyncio.sleep(self.delay[request.path])
        queue = self.scripted.get(request.path)
        if queue:
            answer = queue.pop(0)
            if isinstance(answer, int):
                return web.Response(status=answer, text="scripted")
            return web.json_response(answer)
        return await handler(request)


@pytest.fixture
async def redis(redis_url):
    # This run's Redis (the cluster in the REDIS_CLUSTER=1 pass); tokens are keyed by an appid
    # unique per test, so nothing needs flushing.
    client = await redis_client(redis_url, decode_responses=False)
    yield client
    await client.aclose()


@pytest.fixture
def appid():
    # Unique per test so no two tests ever share a cached token.
    return f"wx-test-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def faults():
    return Faults()


@pytest.fixture
async def sim(aiohttp_server, appid, faults):
    app = create_simulator_app(appid=appid, secret=SECRET)
    app.middlewares.insert(0, faults.middleware)  # outermost: it sees requests the outage refuses
    return await aiohttp_server(app)


@pytest.fixture
def state(sim):
    return sim.app[state_key]


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
def make_client(session, redis, sim, appid):
    def make(**overrides):
        options = dict(session=session, redis=redis, base_url=str(sim.make_url("/")), appid=appid,
                       secret=SECRET)
        return WeChatClient(**{**options, **overrides})
    return make


@pytest.fixture
def client(make_client):
    return make_client()


# -- code2session ---------------------------------------------------------------------------

async def test_code2session_with_a_registered_code(client, state):
    code = state.new_code("o-1", "u-1")

    session = await client.code2session(code)

    assert session["openid"] == "o-1" and session["unionid"] == "u-1" and session["session_key"]
    with pytest.raises(WeChatError) as reused:
        await client.code2session(code)
    assert reused.value.errcode == 40029


async def test_code2session_convenience_code_has_no_unionid(client):
    session = await client.code2session("sim:o-2")
    assert session.keys() == {"openid", "session_key"} and session["openid"] == "o-2"


async def test_code2session_invalid_code(client):
    with pytest.raises(WeChatError) as raised:
        await client.code2session("never-issued")
    assert raised.value.errcode == 40029 and raised.value.errmsg == "invalid code"
    assert not isinstance(raised.value, WeChatUnavailable)


@pytest.mark.parametrize("errcode", [45011, 40226])
async def test_code2session_scripted_refusals(client, state, errcode):
    state.fail_next_login = {"errcode": errcode}
    with pytest.raises(WeChatError) as raised:
        await client.code2session("sim:o")
    assert raised.value.errcode == errcode


async def test_code2session_wrong_secret(make_client):
    with pytest.raises(WeChatError) as raised:
        await make_client(secret="wrong").code2session("sim:o")
    assert raised.value.errcode == 40125


async def test_outage_raises_unavailable_after_the_retries(client, state, faults):
    state.down = True
    with pytest.raises(WeChatUnavailable) as raised:
        await client.code2session("sim:o")
    assert raised.value.errcode == -1 and "503" in raised.value.errmsg
    assert faults.hits["/sns/jscode2session"] == 3  # the first try and retries=2


async def test_a_transient_5xx_is_retried(client, faults):
    faults.scripted["/sns/jscode2session"] = [502, 503]
    assert (await client.code2session("sim:o"))["openid"] == "o"
    assert faults.hits["/sns/jscode2session"] == 3


async def test_a_timeout_is_unavailable(make_client, faults):
    faults.delay["/sns/jscode2session"] = 1.0
    with pytest.raises(WeChatUnavailable):
        await make_client(timeout=0.1, retries=1).code2session("sim:o")
    assert faults.hits["/sns/jscode2session"] == 2


async def test_nothing_listening_is_unavailable(session, redis, appid, unused_tcp_port):
    client = WeChatClient(session=session, redis=redis, base_url=f"http://127.0.0.1:{unused_tcp_port}",
                          appid=appid, secret=SECRET, retries=1)
    with pytest.raises(WeChatUnavailable):
        await client.code2session("sim:o")


# -- access token ---------------------------------------------------------------------------

async def test_token_is_cached_in_redis(client, state, redis, appid):
    first = await client.access_token()
    second = await client.access_token()

    assert first == second
    assert state.token_fetches == 1
    assert (await redis.get(f"wechat:token:{appid}")).decode() == first
    assert 7200 - 300 - 5 <= await redis.ttl(f"wechat:token:{appid}") <= 7200 - 300


async def test_short_lived_token_is_cached_at_least_a_minute(session, redis, appid, aiohttp_server):
    sim = await aiohttp_server(create_simulator_app(appid=appid, secret=SECRET, token_ttl=200))
    client = WeChatClient(session=session, redis=redis, base_url=str(sim.make_url("/")), appid=appid,
                          secret=SECRET)
    await client.access_token()
    assert 55 <= await redis.ttl(f"wechat:token:{appid}") <= 60


async def test_concurrent_callers_fetch_the_token_once(make_client, state, faults):
    # Slow WeChat down so all callers miss the cache and pile up on the lock.
    faults.delay["/cgi-bin/stable_token"] = 0.2
    clients = [make_client() for _ in range(20)]  # as if 20 processes, sharing only Redis

    tokens = await asyncio.gather(*(c.access_token() for c in clients))

    assert len(set(tokens)) == 1
    assert state.token_fetches == 1
    assert faults.hits["/cgi-bin/stable_token"] == 1


async def test_expired_token_is_refetched_once_and_the_call_succeeds(client, state, redis, appid):
    old = await client.access_token()
    state.expire_tokens()

    await client.send_subscribe_message(openid="o-1", template_id="tpl", data={"thing1": "生日快乐"})

    assert state.token_fetches == 2
    assert len(state.messages) == 1
    new = (await redis.get(f"wechat:token:{appid}")).decode()
    assert new != old and state.check_token(new) == (0, "ok")


async def test_a_token_wechat_refuses_twice_raises(client, state, faults):
    await client.access_token()
    refusal = {"errcode": 40001, "errmsg": "invalid credential"}
    faults.scripted["/cgi-bin/menu/create"] = [refusal, refusal]

    with pytest.raises(WeChatError) as raised:
        await client.create_menu({"button": []})

    assert raised.value.errcode == 40001
    assert faults.hits["/cgi-bin/menu/create"] == 2  # one retry, not a loop
    assert state.menu is None


async def test_a_refused_live_token_is_force_refreshed(client, state, faults, redis, appid):
    # WeChat refuses a token stable_token would hand back again (e.g. the secret was reset):
    # only force_refresh replaces it.
    old = await client.access_token()
    faults.scripted["/cgi-bin/menu/create"] = [{"errcode": 40001, "errmsg": "invalid credential"}]

    await client.create_menu({"button": [{"type": "click", "name": "签到", "key": "CHECKIN"}]})

    assert state.menu["button"][0]["name"] == "签到"
    assert state.token_fetches == 3  # the first, the normal refetch (same token), the forced one
    assert (await redis.get(f"wechat:token:{appid}")).decode() != old


async def test_a_stale_rejection_keeps_a_newer_cached_token(client, redis, appid):
    await redis.set(f"wechat:token:{appid}", "newer")
    await client._forget_token("older")
    assert await redis.get(f"wechat:token:{appid}") == b"newer"
    await client._forget_token("newer")
    assert await redis.get(f"wechat:token:{appid}") is None


async def test_token_outage_is_unavailable(client, state):
    state.down = True
    with pytest.raises(WeChatUnavailable):
        await client.access_token()


# -- the APIs -------------------------------------------------------------------------------

async def test_wxacode_is_png_bytes(client, state):
    image = await client.get_wxacode_unlimit(scene="inv=ABC123", page="pages/index/index")

    assert image.startswith(b"\x89PNG\r\n\x1a\n")
    assert state.wxacodes == [{"scene": "inv=ABC123", "page": "pages/index/index", "width": 430}]
    with pytest.raises(WeChatError) as raised:
        await client.get_wxacode_unlimit(scene="x" * 33)
    assert raised.value.errcode == 40169


async def test_subscribe_message_is_recorded_and_refusal_raises(client, state):
    await client.send_subscribe_message(openid="o-1", template_id="tpl-birthday", page="pages/coupons",
                                        data={"thing1": "生日券", "amount2": {"value": "50元"}})

    assert state.messages == [{"touser": "o-1", "template_id": "tpl-birthday", "page": "pages/coupons",
                               "data": {"thing1": {"value": "生日券"}, "amount2": {"value": "50元"}}}]

    state.no_quota.add(("o-1", "tpl-birthday"))
    with pytest.raises(WeChatError) as raised:
        await client.send_subscribe_message(openid="o-1", template_id="tpl-birthday", data={})
    assert raised.value.errcode == 43101
    assert len(state.messages) == 1


async def test_phone_number(client, state):
    code = state.new_phone_code("13800138000")
    assert await client.get_phone_number(code) == "13800138000"
    assert await client.get_phone_number("simphone:13900139000") == "13900139000"
    with pytest.raises(WeChatError) as raised:
        await client.get_phone_number(code)
    assert raised.value.errcode == 40029


async def test_member_card_calls(client, state):
    ticket = state.new_activate_ticket({"name": "李四", "phone": "13700137000", "birthday": "1992-02-29"})

    form = await client.membercard_activatetempinfo(ticket)
    await client.membercard_activate(membership_number="M42", code="C42", card_id="card-1", init_bonus=5)
    updated = await client.membercard_updateuser(code="C42", card_id="card-1", add_bonus=20,
                                                 record_bonus="签到奖励")

    assert form == {"name": "李四", "phone": "13700137000", "birthday": "1992-02-29"}
    assert state.card_activations == [{"membership_number": "M42", "code": "C42", "card_id": "card-1",
                                       "init_bonus": 5}]
    assert updated["result_bonus"] == 25
    assert state.card_updates[0]["record_bonus"] == "签到奖励"
    with pytest.raises(WeChatError):
        await client.membercard_activatetempinfo("unknown-ticket")


async def test_custom_text(client, state):
    await client.send_custom_text(openid="o-9", content="签到成功 +5")
    assert state.custom_messages == [{"touser": "o-9", "msgtype": "text", "text": {"content": "签到成功 +5"}}]
