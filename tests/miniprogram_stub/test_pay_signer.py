"""The simulator's WeChat Pay signer: keys, constants, message shapes and the merchant-request check."""
from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from app.wechat import pay
from miniprogram_stub.simulator import pay as sim

NOW = 1_750_000_000


def test_sandbox_constants():
    assert len(sim.SANDBOX_APIV3_KEY) == 32
    assert len(sim.SANDBOX_V2_KEY) == 32
    assert sim.SANDBOX_PUBLIC_KEY_ID == "PUB_KEY_ID_SANDBOX0001"
    assert sim.SANDBOX_MCHID == "1900000001"


def test_committed_keys_are_rsa_2048_pairs():
    assert (sim.KEYS_DIR / "README.md").read_text().startswith("TEST KEYS ONLY")
    for private, public in ((sim.platform_private_key(), sim.platform_public_key()),
                            (sim.merchant_private_key(), sim.merchant_public_key())):
        assert private.key_size == 2048
        assert private.public_key().public_numbers() == public.public_numbers()
    assert sim.platform_public_key().public_numbers() != sim.merchant_public_key().public_numbers()


def test_notification_shape():
    resource = sim.transaction_resource(openid="o1", transaction_id="42", out_trade_no="T1", total_fen=100,
                                        mchid=sim.SANDBOX_MCHID, appid="wx1", success_time="2025-01-01T10:00:00+08:00")
    headers, body = sim.build_v3_notification(event_type="TRANSACTION.SUCCESS", resource=resource, timestamp=NOW,
                                              nonce="abc", notification_id="EV-9")
    assert headers["Wechatpay-Serial"] == sim.SANDBOX_PUBLIC_KEY_ID
    assert headers["Wechatpay-Timestamp"] == str(NOW)
    assert headers["Wechatpay-Nonce"] == "abc"
    assert headers["Wechatpay-Signature-Type"] == "WECHATPAY2-SHA256-RSA2048"
    envelope = json.loads(body)
    assert set(envelope) == {"id", "create_time", "resource_type", "event_type", "summary", "resource"}
    assert envelope["id"] == "EV-9"
    assert envelope["create_time"] == "2025-06-15T23:06:40+08:00"
    assert envelope["resource_type"] == "encrypt-resource"
    encrypted = envelope["resource"]
    assert encrypted["algorithm"] == "AEAD_AES_256_GCM"
    assert encrypted["original_type"] == "transaction"
    assert encrypted["associated_data"] == "transaction"
    assert len(encrypted["nonce"]) == 12
    plaintext = AESGCM(sim.SANDBOX_APIV3_KEY).decrypt(encrypted["nonce"].encode(),
                                                      base64.b64decode(encrypted["ciphertext"]), b"transaction")
    assert json.loads(plaintext) == resource
    # Signed by the platform key, over WeChat's message shape.
    sim.platform_public_key().verify(base64.b64decode(headers["Wechatpay-Signature"]),
                                     f"{NOW}\nabc\n".encode() + body + b"\n", padding.PKCS1v15(), hashes.SHA256())


def test_defaults_make_fresh_nonces_and_ids():
    resource = sim.refund_resource(transaction_id="1", out_trade_no="2", refund_id="3", out_refund_no="4",
                                   refund_fen=5, total_fen=10)
    first = sim.build_v3_notification(event_type="REFUND.SUCCESS", resource=resource)
    second = sim.build_v3_notification(event_type="REFUND.SUCCESS", resource=resource)
    assert first[0]["Wechatpay-Nonce"] != second[0]["Wechatpay-Nonce"]
    assert json.loads(first[1])["id"] != json.loads(second[1])["id"]
    assert json.loads(first[1])["resource"]["associated_data"] == "refund"


def test_resource_shapes():
    paid = sim.transaction_resource(openid="o1", transaction_id="42", out_trade_no="T1", total_fen=100,
                                    payer_total_fen=90, mchid="m", appid="wx1")
    assert paid["trade_state"] == "SUCCESS"
    assert paid["payer"] == {"openid": "o1"}
    assert paid["amount"] == {"total": 100, "payer_total": 90, "currency": "CNY", "payer_currency": "CNY"}
    assert "attach" not in paid
    refunded = sim.refund_resource(transaction_id="42", out_trade_no="T1", refund_id="R", out_refund_no="OR",
                                   refund_fen=30, total_fen=100)
    assert refunded["refund_status"] == "SUCCESS"
    assert refunded["amount"] == {"total": 100, "refund": 30, "payer_total": 100, "payer_refund": 30}


def test_simulator_v2_signature_matches_wechat_docs():
    params = {"appid": "wxd930ea5d5a258f4f", "mch_id": "10000100", "device_info": "1000", "body": "test",
              "nonce_str": "ibuaiVcKdpRxkhJA"}
    key = "192006250b4c09247ec02edce69f6a2d"
    assert sim.v2_signature(params, key) == "9A0A8659F005D6984697E2CA0A9CF3B7"
    assert sim.v2_signature(params, key, "HMAC-SHA256") == \
        "6A9AE1657590FD6257D693A078E1C3E4BB6BA4DC30B23E0EE2496E54170DACD6"


def test_v2_payment_xml_names_hmac_sign_type():
    params = sim.v2_payment_params(appid="wx1", openid="o1", transaction_id="1", out_trade_no="2", total_fee=3)
    assert b"<sign_type>" not in sim.build_v2_payment_xml(params, sim.SANDBOX_V2_KEY, "MD5")
    assert b"<sign_type><![CDATA[HMAC-SHA256]]></sign_type>" in \
        sim.build_v2_payment_xml(params, sim.SANDBOX_V2_KEY, "HMAC-SHA256")


def merchant_auth(**overrides) -> dict:
    kwargs = dict(method="POST", url_path_with_query="/v3/pay/transactions/jsapi", body='{"a":1}',
                  mchid=sim.SANDBOX_MCHID, serial_no=sim.SANDBOX_MERCHANT_SERIAL,
                  private_key=sim.merchant_private_key(), timestamp=NOW, nonce="n1")
    kwargs.update(overrides)
    return kwargs


def check(authorization: str, **overrides):
    kwargs = dict(authorization=authorization, method="POST", url_path_with_query="/v3/pay/transactions/jsapi",
                  body='{"a":1}', now=NOW)
    kwargs.update(overrides)
    return sim.verify_merchant_request(**kwargs)


def test_merchant_request_round_trip():
    fields = check(pay.sign_request(**merchant_auth()))
    assert fields["mchid"] == sim.SANDBOX_MCHID
    assert fields["serial_no"] == sim.SANDBOX_MERCHANT_SERIAL
    get = pay.sign_request(**merchant_auth(method="GET", url_path_with_query="/v3/pay/transactions/id/1?mchid=1",
                                           body=""))
    check(get, method="GET", url_path_with_query="/v3/pay/transactions/id/1?mchid=1", body=b"")


@pytest.mark.parametrize("auth_overrides, check_overrides, reason", [
    ({}, {"body": '{"a":2}'}, "bad_signature"),
    ({}, {"url_path_with_query": "/v3/other"}, "bad_signature"),
    ({}, {"method": "PUT"}, "bad_signature"),
    ({"private_key": sim.platform_private_key()}, {}, "bad_signature"),
    ({"serial_no": "OTHER"}, {}, "unknown_serial"),
    ({"mchid": "1900000002"}, {}, "wrong_mchid"),
    ({}, {"now": NOW + 301}, "stale_timestamp"),
])
def test_merchant_request_rejections(auth_overrides, check_overrides, reason):
    with pytest.raises(sim.MerchantAuthError) as caught:
        check(pay.sign_request(**merchant_auth(**auth_overrides)), **check_overrides)
    assert caught.value.reason == reason


@pytest.mark.parametrize("header, reason", [
    ('Bearer abc', "bad_scheme"),
    ('WECHATPAY2-SHA256-RSA2048 mchid=1900000001', "malformed"),
    ('WECHATPAY2-SHA256-RSA2048 mchid="1900000001"', "malformed"),
    ('WECHATPAY2-SHA256-RSA2048 mchid="1",mchid="2",nonce_str="n",signature="s",timestamp="1",serial_no="x"',
     "malformed"),
])
def test_merchant_request_malformed_headers(header, reason):
    with pytest.raises(sim.MerchantAuthError) as caught:
        check(header)
    assert caught.value.reason == reason
