"""app/wechat/pay.py against notifications built by the simulator, and every way to be refused."""
from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from app.wechat import pay
from app.wechat.pay import PayNotifyError, PayV3Verifier
from miniprogram_stub.simulator import pay as sim

NOW = 1_750_000_000
APPID = "wx-sandbox-mp"


@pytest.fixture(scope="module")
def second_platform_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture
def verifier() -> PayV3Verifier:
    return PayV3Verifier(apiv3_key=sim.SANDBOX_APIV3_KEY,
                         public_keys={sim.SANDBOX_PUBLIC_KEY_ID: sim.platform_public_key()})


def payment(**overrides):
    resource = sim.transaction_resource(openid="o-member-1", transaction_id="4200000001", out_trade_no="ORDER-1",
                                        total_fen=12_345, payer_total_fen=12_000, mchid=sim.SANDBOX_MCHID,
                                        appid=APPID, attach="points")
    kwargs = dict(event_type="TRANSACTION.SUCCESS", resource=resource, apiv3_key=sim.SANDBOX_APIV3_KEY,
                  private_key=sim.platform_private_key(), serial=sim.SANDBOX_PUBLIC_KEY_ID, timestamp=NOW,
                  nonce="n0nce-abc", notification_id="EV-1")
    kwargs.update(overrides)
    return sim.build_v3_notification(**kwargs)


def refused(verifier: PayV3Verifier, headers, body, *, now: float = NOW) -> str:
    with pytest.raises(PayNotifyError) as caught:
        verifier.parse_notification(headers=headers, body=body, now=now)
    return caught.value.reason


def resign(headers: dict, body: bytes, key=None) -> dict:
    """Headers signed properly over `body`, to test what happens after the signature check."""
    key = key or sim.platform_private_key()
    signature = sim.sign_v3(key, headers["Wechatpay-Timestamp"], headers["Wechatpay-Nonce"], body)
    return {**headers, "Wechatpay-Signature": signature}


# -- APIv3 round trips --------------------------------------------------------------------------

def test_payment_round_trip(verifier):
    headers, body = payment()
    note = verifier.parse_notification(headers=headers, body=body, now=NOW)
    assert note.id == "EV-1"
    assert note.event_type == "TRANSACTION.SUCCESS"
    assert note.resource_type == "encrypt-resource"
    assert note.summary == "支付成功"
    assert note.nonce == "n0nce-abc"
    assert note.resource["payer"] == {"openid": "o-member-1"}
    assert note.resource["amount"] == {"total": 12_345, "payer_total": 12_000, "currency": "CNY",
                                       "payer_currency": "CNY"}
    assert note.resource["trade_state"] == "SUCCESS"
    assert note.resource["transaction_id"] == "4200000001"
    assert note.resource["attach"] == "points"


def test_refund_round_trip(verifier):
    resource = sim.refund_resource(transaction_id="4200000001", out_trade_no="ORDER-1", refund_id="5030000001",
                                   out_refund_no="REFUND-1", refund_fen=500, total_fen=12_345,
                                   payer_refund_fen=480, mchid=sim.SANDBOX_MCHID)
    headers, body = sim.build_v3_notification(event_type="REFUND.SUCCESS", resource=resource,
                                              apiv3_key=sim.SANDBOX_APIV3_KEY, private_key=sim.platform_private_key(),
                                              serial=sim.SANDBOX_PUBLIC_KEY_ID, timestamp=NOW)
    note = verifier.parse_notification(headers=headers, body=body, now=NOW)
    assert note.event_type == "REFUND.SUCCESS"
    assert json.loads(body)["resource"]["associated_data"] == "refund"
    assert note.resource["refund_status"] == "SUCCESS"
    assert note.resource["amount"] == {"total": 12_345, "refund": 500, "payer_total": 12_345, "payer_refund": 480}


def test_verify_accepts_lower_case_headers_and_no_signature_type(verifier):
    headers, body = payment()
    del headers["Wechatpay-Signature-Type"]
    verifier.verify(headers={k.lower(): v for k, v in headers.items()}, body=body, now=NOW)


@pytest.mark.parametrize("skew", [-300, 300])
def test_timestamp_at_the_edge_of_the_window_passes(verifier, skew):
    headers, body = payment()
    verifier.verify(headers=headers, body=body, now=NOW + skew)


def test_two_keys_in_rotation_are_both_accepted(second_platform_key):
    verifier = PayV3Verifier(apiv3_key=sim.SANDBOX_APIV3_KEY, public_keys={
        sim.SANDBOX_PUBLIC_KEY_ID: sim.platform_public_key(),
        "PUB_KEY_ID_NEXT": second_platform_key.public_key(),
    })
    for serial, key in ((sim.SANDBOX_PUBLIC_KEY_ID, sim.platform_private_key()),
                        ("PUB_KEY_ID_NEXT", second_platform_key)):
        headers, body = payment(serial=serial, private_key=key)
        assert verifier.parse_notification(headers=headers, body=body, now=NOW).id == "EV-1"


# -- APIv3 rejections ---------------------------------------------------------------------------

def test_forged_signature_is_refused(verifier, second_platform_key):
    headers, body = payment(private_key=second_platform_key)  # right serial, wrong key
    assert refused(verifier, headers, body) == "bad_signature"


def test_garbage_signature_is_refused(verifier):
    headers, body = payment()
    assert refused(verifier, {**headers, "Wechatpay-Signature": "not base64!"}, body) == "bad_signature"
    assert refused(verifier, {**headers, "Wechatpay-Signature": base64.b64encode(b"x" * 256).decode()},
                   body) == "bad_signature"


def test_tampered_body_is_refused(verifier):
    headers, body = payment()
    assert refused(verifier, headers, body.replace(b'"EV-1"', b'"EV-2"')) == "bad_signature"
    assert refused(verifier, headers, body + b" ") == "bad_signature"


def test_signature_of_a_different_body_is_refused(verifier):
    headers, body = payment()
    other_headers, other_body = payment(notification_id="EV-OTHER")
    assert refused(verifier, {**headers, "Wechatpay-Signature": other_headers["Wechatpay-Signature"]},
                   body) == "bad_signature"


def test_signature_over_other_timestamp_or_nonce_is_refused(verifier):
    headers, body = payment()
    assert refused(verifier, {**headers, "Wechatpay-Timestamp": str(NOW + 1)}, body) == "bad_signature"
    assert refused(verifier, {**headers, "Wechatpay-Nonce": "other-nonce"}, body) == "bad_signature"


def test_signtest_probe_is_refused(verifier):
    headers, body = payment()
    probe = {**headers, "Wechatpay-Signature": "WECHATPAY/SIGNTEST/" + headers["Wechatpay-Signature"]}
    assert refused(verifier, probe, body) == "bad_signature"


def test_unknown_serial_is_refused(verifier):
    headers, body = payment(serial="PUB_KEY_ID_UNKNOWN")
    assert refused(verifier, headers, body) == "unknown_serial"


def test_wrong_serial_for_the_key_is_refused(second_platform_key):
    verifier = PayV3Verifier(apiv3_key=sim.SANDBOX_APIV3_KEY, public_keys={
        sim.SANDBOX_PUBLIC_KEY_ID: sim.platform_public_key(),
        "PUB_KEY_ID_NEXT": second_platform_key.public_key(),
    })
    # Signed by the sandbox key but naming the other, known serial.
    headers, body = payment(serial="PUB_KEY_ID_NEXT")
    assert refused(verifier, headers, body) == "bad_signature"


@pytest.mark.parametrize("skew", [-301, 301, -86_400])
def test_stale_timestamp_is_refused(verifier, skew):
    headers, body = payment()
    assert refused(verifier, headers, body, now=NOW + skew) == "stale_timestamp"


@pytest.mark.parametrize("timestamp", ["1750000000.0", "abc", "-1750000000", "１７５００００００００", "9" * 5000])
def test_non_integer_timestamp_is_refused(verifier, timestamp):
    headers, body = payment()
    assert refused(verifier, {**headers, "Wechatpay-Timestamp": timestamp}, body) == "bad_timestamp"


@pytest.mark.parametrize("name", ["Wechatpay-Serial", "Wechatpay-Signature", "Wechatpay-Timestamp",
                                  "Wechatpay-Nonce"])
def test_missing_header_is_refused(verifier, name):
    headers, body = payment()
    del headers[name]
    assert refused(verifier, headers, body) == "missing_header"
    assert refused(verifier, {**headers, name: "  "}, body) == "missing_header"


@pytest.mark.parametrize("nonce", ["n" * 65, "two\nlines", "has space", "tab\there"])
def test_bad_nonce_is_refused(verifier, nonce):
    headers, body = payment()
    headers = resign({**headers, "Wechatpay-Nonce": nonce}, body)
    assert refused(verifier, headers, body) == "bad_nonce"


def test_nonce_of_64_chars_passes(verifier):
    headers, body = payment(nonce="n" * 64)
    verifier.verify(headers=headers, body=body, now=NOW)


def test_bad_signature_type_is_refused(verifier):
    headers, body = payment()
    for kind in ("WECHATPAY2-SHA256-RSA4096", "HMAC-SHA256", ""):
        assert refused(verifier, {**headers, "Wechatpay-Signature-Type": kind}, body) == "bad_signature_type"


def test_tampered_ciphertext_is_refused(verifier):
    headers, body = payment()
    envelope = json.loads(body)
    raw = bytearray(base64.b64decode(envelope["resource"]["ciphertext"]))
    raw[5] ^= 0x01
    envelope["resource"]["ciphertext"] = base64.b64encode(bytes(raw)).decode()
    tampered = json.dumps(envelope).encode()
    assert refused(verifier, resign(headers, tampered), tampered) == "decrypt_failed"


@pytest.mark.parametrize("field, value", [("associated_data", "refund"), ("nonce", "AAAAAAAAAAAA"),
                                          ("algorithm", "AEAD_AES_128_GCM"), ("ciphertext", "%%%"),
                                          ("ciphertext", "")])
def test_tampered_resource_fields_are_refused(verifier, field, value):
    headers, body = payment()
    envelope = json.loads(body)
    envelope["resource"][field] = value
    tampered = json.dumps(envelope).encode()
    assert refused(verifier, resign(headers, tampered), tampered) == "decrypt_failed"


def test_wrong_apiv3_key_is_refused():
    verifier = PayV3Verifier(apiv3_key=b"another-apiv3-key-of-32-bytes!!!",
                             public_keys={sim.SANDBOX_PUBLIC_KEY_ID: sim.platform_public_key()})
    headers, body = payment()
    assert refused(verifier, headers, body) == "decrypt_failed"


def test_decrypt_resource_refuses_non_objects(verifier):
    for resource in ({}, {"ciphertext": "", "nonce": 12, "associated_data": ""}, None):
        with pytest.raises(PayNotifyError) as caught:
            verifier.decrypt_resource(resource)
        assert caught.value.reason == "decrypt_failed"
    encrypted = sim.encrypt_resource([1, 2], apiv3_key=sim.SANDBOX_APIV3_KEY, associated_data="transaction")
    with pytest.raises(PayNotifyError, match="JSON object"):
        verifier.decrypt_resource(encrypted)


@pytest.mark.parametrize("body", [b"{not json", b"[1, 2]", b'{"id": "x"}', b'{"id": 1, "event_type": "X",'
                                  b' "resource": {}}', b"\xff\xfe"])
def test_malformed_json_is_refused(verifier, body):
    headers, _ = payment()
    assert refused(verifier, resign(headers, body), body) == "malformed"


def test_verifier_rejects_bad_configuration():
    with pytest.raises(ValueError):
        PayV3Verifier(apiv3_key=b"short", public_keys={"k": sim.platform_public_key()})
    with pytest.raises(ValueError):
        PayV3Verifier(apiv3_key=sim.SANDBOX_APIV3_KEY, public_keys={})
    with pytest.raises(TypeError):
        PayV3Verifier(apiv3_key=sim.SANDBOX_APIV3_KEY, public_keys={"k": "pem text"})


def test_unknown_reason_is_a_programming_error():
    with pytest.raises(ValueError):
        PayNotifyError("nope")
    assert PayNotifyError("replayed_nonce").reason == "replayed_nonce"


# -- keys ---------------------------------------------------------------------------------------

def test_load_keys_from_path_text_and_bytes():
    pem = sim.PLATFORM_PUBLIC_KEY_PATH.read_bytes()
    for source in (sim.PLATFORM_PUBLIC_KEY_PATH, str(sim.PLATFORM_PUBLIC_KEY_PATH), pem, pem.decode()):
        assert pay.load_public_key(source).public_numbers() == sim.platform_public_key().public_numbers()
    private = pay.load_private_key(sim.MERCHANT_PRIVATE_KEY_PATH)
    assert private.public_key().public_numbers() == sim.merchant_public_key().public_numbers()
    assert pay.load_private_key(sim.MERCHANT_PRIVATE_KEY_PATH.read_text()).key_size == 2048


def test_load_public_key_refuses_non_rsa():
    from cryptography.hazmat.primitives.asymmetric import ec
    pem = ec.generate_private_key(ec.SECP256R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    with pytest.raises(ValueError):
        pay.load_public_key(pem)


# -- APIv3 outbound -----------------------------------------------------------------------------

def test_sign_request_is_accepted_by_the_simulator():
    body = json.dumps({"appid": APPID, "mchid": sim.SANDBOX_MCHID, "out_trade_no": "ORDER-1"})
    authorization = pay.sign_request(method="post", url_path_with_query="/v3/pay/transactions/jsapi", body=body,
                                     mchid=sim.SANDBOX_MCHID, serial_no=sim.SANDBOX_MERCHANT_SERIAL,
                                     private_key=sim.merchant_private_key(), timestamp=NOW, nonce="req-nonce")
    assert authorization.startswith('WECHATPAY2-SHA256-RSA2048 mchid="1900000001",nonce_str="req-nonce",signature="')
    assert authorization.endswith(f',timestamp="{NOW}",serial_no="{sim.SANDBOX_MERCHANT_SERIAL}"')
    fields = sim.verify_merchant_request(authorization=authorization, method="POST",
                                         url_path_with_query="/v3/pay/transactions/jsapi", body=body, now=NOW)
    assert fields["nonce_str"] == "req-nonce"
    with pytest.raises(sim.MerchantAuthError):
        sim.verify_merchant_request(authorization=authorization, method="POST",
                                    url_path_with_query="/v3/pay/transactions/jsapi", body=body + " ", now=NOW)


def test_sign_request_refuses_header_injection():
    with pytest.raises(ValueError):
        pay.sign_request(method="GET", url_path_with_query="/v3/x", body="", mchid='1",serial_no="evil',
                         serial_no="S", private_key=sim.merchant_private_key(), timestamp=NOW, nonce="n")


def test_jsapi_pay_params():
    params = pay.jsapi_pay_params(appid=APPID, prepay_id="wx201410272009395522657a690389285100",
                                  private_key=sim.merchant_private_key(), timestamp=NOW, nonce="pay-nonce")
    assert params["timeStamp"] == str(NOW)
    assert params["nonceStr"] == "pay-nonce"
    assert params["package"] == "prepay_id=wx201410272009395522657a690389285100"
    assert params["signType"] == "RSA"
    message = f"{APPID}\n{NOW}\npay-nonce\n{params['package']}\n".encode()
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding
    sim.merchant_public_key().verify(base64.b64decode(params["paySign"]), message, padding.PKCS1v15(), hashes.SHA256())


# -- v2 -----------------------------------------------------------------------------------------

DOC_PARAMS = {"appid": "wxd930ea5d5a258f4f", "mch_id": "10000100", "device_info": "1000", "body": "test",
              "nonce_str": "ibuaiVcKdpRxkhJA"}
DOC_KEY = "192006250b4c09247ec02edce69f6a2d"


def test_v2_sign_matches_wechat_docs():
    # The worked example of WeChat Pay's v2 signing document.
    assert pay.v2_sign(DOC_PARAMS, DOC_KEY) == "9A0A8659F005D6984697E2CA0A9CF3B7"
    assert pay.v2_sign(DOC_PARAMS, DOC_KEY, "HMAC-SHA256") == \
        "6A9AE1657590FD6257D693A078E1C3E4BB6BA4DC30B23E0EE2496E54170DACD6"


def test_v2_sign_leaves_out_sign_and_empty_values_but_keeps_zero():
    base = pay.v2_sign(DOC_PARAMS, DOC_KEY)
    assert pay.v2_sign({**DOC_PARAMS, "sign": "X", "attach": "", "detail": None}, DOC_KEY) == base
    assert pay.v2_sign({**DOC_PARAMS, "coupon_fee": 0}, DOC_KEY) != base
    with pytest.raises(ValueError):
        pay.v2_sign(DOC_PARAMS, DOC_KEY, "SHA1")


def test_v2_sign_agrees_with_wechatpy_where_wechatpy_is_right():
    from wechatpy.pay.utils import calculate_signature, calculate_signature_hmac
    assert pay.v2_sign(DOC_PARAMS, DOC_KEY) == calculate_signature(DOC_PARAMS, DOC_KEY)
    assert pay.v2_sign(DOC_PARAMS, DOC_KEY, "HMAC-SHA256") == calculate_signature_hmac(DOC_PARAMS, DOC_KEY)


@pytest.mark.parametrize("sign_type", ["MD5", "HMAC-SHA256"])
def test_v2_payment_round_trip(sign_type):
    params = sim.v2_payment_params(appid=APPID, openid="o-member-1", transaction_id="4200000001",
                                   out_trade_no="ORDER-1", total_fee=12_345, attach="a <b> & ]]> c")
    parsed = pay.parse_v2_xml(sim.build_v2_payment_xml(params, sim.SANDBOX_V2_KEY, sign_type))
    pay.verify_v2(parsed, sim.SANDBOX_V2_KEY)
    assert parsed["total_fee"] == "12345"
    assert parsed["attach"] == "a <b> & ]]> c"
    assert parsed.get("sign_type", "MD5") == sign_type


@pytest.mark.parametrize("sign_type", ["MD5", "HMAC-SHA256"])
def test_v2_wrong_sign_is_refused(sign_type):
    params = sim.v2_payment_params(appid=APPID, openid="o-member-1", transaction_id="4200000001",
                                   out_trade_no="ORDER-1", total_fee=100)
    parsed = pay.parse_v2_xml(sim.build_v2_payment_xml(params, sim.SANDBOX_V2_KEY, sign_type))
    for bad in ({**parsed, "total_fee": "99999"}, {**parsed, "sign": "0" * len(parsed["sign"])},
                {**parsed, "sign": parsed["sign"].lower()}, {**parsed, "sign": "日本"}):
        with pytest.raises(PayNotifyError) as caught:
            pay.verify_v2(bad, sim.SANDBOX_V2_KEY)
        assert caught.value.reason == "bad_signature"
    with pytest.raises(PayNotifyError):
        pay.verify_v2(parsed, "another-v2-key-of-32-characters!")
    with pytest.raises(PayNotifyError) as caught:
        pay.verify_v2({k: v for k, v in parsed.items() if k != "sign"}, sim.SANDBOX_V2_KEY)
    assert caught.value.reason == "bad_signature"


def test_v2_sign_type_can_be_pinned_and_unknown_types_are_refused():
    params = sim.v2_payment_params(appid=APPID, openid="o", transaction_id="1", out_trade_no="2", total_fee=1)
    parsed = pay.parse_v2_xml(sim.build_v2_payment_xml(params, sim.SANDBOX_V2_KEY, "MD5"))
    with pytest.raises(PayNotifyError):
        pay.verify_v2(parsed, sim.SANDBOX_V2_KEY, sign_type="HMAC-SHA256")
    with pytest.raises(PayNotifyError) as caught:
        pay.verify_v2({**parsed, "sign_type": "SHA1"}, sim.SANDBOX_V2_KEY)
    assert caught.value.reason == "bad_signature_type"


def test_v2_refund_round_trip():
    inner = sim.v2_refund_params(transaction_id="4200000001", out_trade_no="ORDER-1", refund_id="5030000001",
                                 out_refund_no="REFUND-1", total_fee=12_345, refund_fee=500)
    outer = pay.parse_v2_xml(sim.build_v2_refund_xml(inner, sim.SANDBOX_V2_KEY, appid=APPID))
    assert outer["return_code"] == "SUCCESS"
    assert "sign" not in outer
    refund = pay.decrypt_v2_refund(outer["req_info"], sim.SANDBOX_V2_KEY)
    assert refund["refund_id"] == "5030000001"
    assert refund["refund_fee"] == "500"
    assert refund["refund_status"] == "SUCCESS"
    assert refund["refund_recv_accout"] == "支付用户零钱"


@pytest.mark.parametrize("req_info", ["", "%%%", base64.b64encode(b"short").decode(),
                                      base64.b64encode(b"\x00" * 32).decode()])
def test_v2_refund_garbage_is_refused(req_info):
    with pytest.raises(PayNotifyError) as caught:
        pay.decrypt_v2_refund(req_info, sim.SANDBOX_V2_KEY)
    assert caught.value.reason == "decrypt_failed"


def test_v2_refund_wrong_key_is_refused():
    inner = sim.v2_refund_params(transaction_id="1", out_trade_no="2", refund_id="3", out_refund_no="4",
                                 total_fee=10, refund_fee=5)
    req_info = sim.encrypt_v2_req_info(inner, sim.SANDBOX_V2_KEY)
    with pytest.raises(PayNotifyError) as caught:
        pay.decrypt_v2_refund(req_info, "another-v2-key-of-32-characters!")
    assert caught.value.reason == "decrypt_failed"


def test_v2_refund_inner_xml_must_be_root():
    req_info = sim.encrypt_v2_req_info({"a": "1"}, sim.SANDBOX_V2_KEY)
    assert pay.decrypt_v2_refund(req_info, sim.SANDBOX_V2_KEY) == {"a": "1"}


BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">]>
<xml><return_code>&lol3;</return_code></xml>"""
EXTERNAL_ENTITY = b"""<?xml version="1.0"?>
<!DOCTYPE xml [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>
<xml><return_code>&xxe;</return_code></xml>"""
PLAIN_DTD = b"""<?xml version="1.0"?><!DOCTYPE xml><xml><return_code>SUCCESS</return_code></xml>"""


@pytest.mark.parametrize("body", [
    BILLION_LAUGHS, EXTERNAL_ENTITY, PLAIN_DTD,
    b"<xml><a><b>deep</b></a></xml>",
    b"<xml><sign>A</sign><sign>B</sign></xml>",
    b"<root><a>1</a></root>",
    b"<xml><a>1</a>",
    b"not xml",
    b"",
    b"<xml>" + b"<a>x</a>" * 10_000 + b"</xml>",
])
def test_v2_hostile_xml_is_refused(body):
    with pytest.raises(PayNotifyError) as caught:
        pay.parse_v2_xml(body)
    assert caught.value.reason == "malformed"


def test_v2_body_limit_is_64_kib():
    filler = b"<xml><a>" + b"x" * (64 * 1024 - len(b"<xml><a></a></xml>")) + b"</a></xml>"
    assert len(filler) == 64 * 1024
    assert pay.parse_v2_xml(filler)["a"].startswith("x")
    with pytest.raises(PayNotifyError):
        pay.parse_v2_xml(filler.replace(b"<a>", b"<a>x"))


def test_v2_xml_reads_cdata_and_plain_text():
    body = b"<xml><return_code><![CDATA[SUCCESS]]></return_code><total_fee>1</total_fee><empty/></xml>"
    assert pay.parse_v2_xml(body) == {"return_code": "SUCCESS", "total_fee": "1", "empty": ""}


def test_v2_reply():
    assert pay.v2_reply(True) == \
        "<xml><return_code><![CDATA[SUCCESS]]></return_code><return_msg><![CDATA[OK]]></return_msg></xml>"
    failed = pay.v2_reply(False, "bad ]]> sign")
    assert pay.parse_v2_xml(failed.encode()) == {"return_code": "FAIL", "return_msg": "bad ]]> sign"}
