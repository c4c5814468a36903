"""PayClient against the simulator's merchant API: signed JSAPI orders, WeChat Pay's refusals."""
import aiohttp
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from app.wechat.pay_client import PayClient, PayError, PayUnavailable
from miniprogram_stub.simulator import create_simulator_app, state_key
from miniprogram_stub.simulator.merchant import merchant_state_key
from miniprogram_stub.simulator.pay import SANDBOX_MCHID, SANDBOX_MERCHANT_SERIAL, merchant_private_key

pytestmark = pytest.mark.smoke

ORDER = dict(description="咖啡机", out_trade_no="rd-test-1", amount_fen=9900, openid="o-payer",
             notify_url="https://example.com/wechat/pay/notify")


@pytest.fixture
async def merchant(aiohttp_server):
    return await aiohttp_server(create_simulator_app())


@pytest.fixture
async def session():
    async with aiohttp.ClientSession() as s:
        yield s


def client_for(server, session, **over):
    kw = dict(session=session, base_url=str(server.make_url("")), mchid=SANDBOX_MCHID, appid="wx-sandbox-mp",
              serial_no=SANDBOX_MERCHANT_SERIAL, private_key=merchant_private_key())
    return PayClient(**{**kw, **over})


async def test_order_is_signed_recorded_and_idempotent(merchant, session):
    pay = client_for(merchant, session)
    prepay_id = await pay.create_jsapi_order(**ORDER)
    assert prepay_id.startswith("wx")
    order = merchant.app[merchant_state_key].orders["rd-test-1"]
    assert order["amount_fen"] == 9900 and order["openid"] == "o-payer" and order["state"] == "NOTPAY"
    assert await pay.create_jsapi_order(**ORDER) == prepay_id  # the same order again
    with pytest.raises(PayError) as err:
        await pay.create_jsapi_order(**{**ORDER, "amount_fen": 1})
    assert err.value.status == 400 and err.value.code == "OUT_TRADE_NO_USED"


async def test_wrong_key_or_serial_is_sign_error(merchant, session):
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    for pay in (client_for(merchant, session, private_key=other), client_for(merchant, session, serial_no="NOPE")):
        with pytest.raises(PayError) as err:
            await pay.create_jsapi_order(**ORDER)
        assert err.value.status == 401 and err.value.code == "SIGN_ERROR"
    assert merchant.app[merchant_state_key].orders == {}
    resp = await session.post(merchant.make_url("/v3/pay/transactions/jsapi"), json={"appid": "x"})
    assert resp.status == 401 and (await resp.json())["code"] == "SIGN_ERROR"


async def test_outage_and_unreachable_are_unavailable(merchant, session):
    merchant.app[state_key].down = True
    with pytest.raises(PayUnavailable):
        await client_for(merchant, session).create_jsapi_order(**ORDER)
    with pytest.raises(PayUnavailable):
        await client_for(merchant, session, base_url="http://127.0.0.1:9").create_jsapi_order(**ORDER)
