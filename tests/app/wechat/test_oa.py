"""The official-account protocol layer: signatures, safe mode, hostile XML, events, replies."""
from __future__ import annotations

import hashlib
import time
from unittest import mock

import pytest
from wechatpy.crypto import WeChatCrypto

from app.wechat import oa
from app.wechat.oa import (
    SUCCESS, OACrypto, OAMessage, OAProtocolError, OASignatureError, cdata, check_msg_signature,
    check_signature, fresh_timestamp, parse_invite_scene, parse_message, parse_scene, parse_xml, text_reply,
)

TOKEN = "tok3n"
AES_KEY = "abcdefghijklmnopqrstuvwxyz0123456789ABCDEFG"  # 43 chars
APPID = "wx1234567890abcdef"
ACCOUNT = "gh_0123456789ab"
OPENID = "oAbC-openid_1"


def sign_plain(token: str = TOKEN, *, timestamp: str = "1700000000", nonce: str = "12345") -> dict[str, str]:
    """Query args WeChat sends in plain mode: signature = sha1(sorted [token, timestamp, nonce])."""
    sig = hashlib.sha1("".join(sorted([token, timestamp, nonce])).encode()).hexdigest()
    return {"signature": sig, "timestamp": timestamp, "nonce": nonce}


def safe_envelope(xml: str, *, timestamp: str = "1700000000", nonce: str = "98765",
                  token: str = TOKEN, key: str = AES_KEY, appid: str = APPID) -> tuple[bytes, dict[str, str]]:
    """Encrypt `xml` as WeChat does in safe mode: (POST body, query args incl. msg_signature)."""
    wrapped = WeChatCrypto(token, key, appid).encrypt_message(xml, nonce, timestamp)
    fields = parse_xml(wrapped.encode())
    body = f"<xml><ToUserName><![CDATA[{ACCOUNT}]]></ToUserName><Encrypt><![CDATA[{fields['Encrypt']}]]></Encrypt></xml>"
    return body.encode(), {"msg_signature": fields["MsgSignature"], "timestamp": timestamp, "nonce": nonce,
                           **{k: v for k, v in sign_plain(token, timestamp=timestamp, nonce=nonce).items()
                              if k == "signature"}}


def push(msg_type: str, *, create_time: int = 1700000000, **extra: str) -> bytes:
    """A WeChat push body with the common header and `extra` leaves (already XML for nested)."""
    parts = [f"<ToUserName><![CDATA[{ACCOUNT}]]></ToUserName>",
             f"<FromUserName><![CDATA[{OPENID}]]></FromUserName>",
             f"<CreateTime>{create_time}</CreateTime>",
             f"<MsgType><![CDATA[{msg_type}]]></MsgType>"]
    for name, value in extra.items():
        parts.append(value if value.startswith("<") else f"<{name}><![CDATA[{value}]]></{name}>")
    return ("<xml>" + "".join(parts) + "</xml>").encode()


def message(msg_type: str, **extra: str) -> OAMessage:
    return parse_message(parse_xml(push(msg_type, **extra)))


# ------------------------------------------------------------------ signatures

def test_good_signature_passes():
    assert check_signature(token=TOKEN, **sign_plain()) is True


@pytest.mark.parametrize("change", ["signature", "timestamp", "nonce", "token"])
def test_any_changed_part_fails_the_signature(change):
    args = {"token": TOKEN, **sign_plain()}
    args[change] = args[change][:-1] + ("0" if args[change][-1] != "0" else "1")
    assert check_signature(**args) is False


def test_empty_parts_fail_the_signature():
    assert check_signature(token=TOKEN, signature="", timestamp="1", nonce="2") is False
    assert check_signature(token="", **sign_plain("")) is False


def test_msg_signature_covers_the_encrypt_field():
    sig = hashlib.sha1("".join(sorted([TOKEN, "1", "2", "ENC"])).encode()).hexdigest()
    assert check_msg_signature(token=TOKEN, msg_signature=sig, timestamp="1", nonce="2", encrypt="ENC")
    assert not check_msg_signature(token=TOKEN, msg_signature=sig, timestamp="1", nonce="2", encrypt="ENC2")


# ------------------------------------------------------------------ safe mode

def test_safe_mode_round_trip():
    crypto = OACrypto(TOKEN, AES_KEY, APPID)
    inbound = push("text", Content="签到", MsgId="123")
    body, q = safe_envelope(inbound.decode())
    assert check_signature(token=TOKEN, signature=q["signature"], timestamp=q["timestamp"], nonce=q["nonce"])

    plain = crypto.decrypt(body, q["msg_signature"], q["timestamp"], q["nonce"])
    assert plain == inbound
    msg = parse_message(parse_xml(plain))
    assert msg.content == "签到"

    reply = text_reply(msg, "已签到 +5", now=1700000001)
    envelope = crypto.encrypt(reply, "nonce42", 1700000001)
    env = parse_xml(envelope.encode())
    assert env["TimeStamp"] == "1700000001" and env["Nonce"] == "nonce42"
    assert check_msg_signature(token=TOKEN, msg_signature=env["MsgSignature"], timestamp="1700000001",
                               nonce="nonce42", encrypt=env["Encrypt"])
    # WeChat's side reads the reply back
    back = WeChatCrypto(TOKEN, AES_KEY, APPID).decrypt_message(
        {"Encrypt": env["Encrypt"]}, env["MsgSignature"], "1700000001", "nonce42")
    assert back == reply
    assert parse_xml(back.encode())["Content"] == "已签到 +5"


def test_decrypt_accepts_the_bare_encrypt_field():
    crypto = OACrypto(TOKEN, AES_KEY, APPID)
    body, q = safe_envelope("<xml><A>1</A></xml>")
    encrypt = parse_xml(body)["Encrypt"]
    assert crypto.decrypt(encrypt, q["msg_signature"], q["timestamp"], q["nonce"]) == b"<xml><A>1</A></xml>"


def test_wrong_msg_signature_is_refused_before_decryption():
    crypto = OACrypto(TOKEN, AES_KEY, APPID)
    body, q = safe_envelope("<xml><A>1</A></xml>")
    with mock.patch.object(crypto._crypto, "decrypt_message") as decrypt, \
         mock.patch("wechatpy.crypto.PrpCrypto.decrypt") as prp:
        with pytest.raises(OASignatureError, match="msg_signature"):
            crypto.decrypt(body, "0" * 40, q["timestamp"], q["nonce"])
        with pytest.raises(OASignatureError, match="msg_signature"):
            crypto.decrypt(body, q["msg_signature"], q["timestamp"], "other")
    decrypt.assert_not_called()
    prp.assert_not_called()


def test_envelope_goes_through_our_parser_not_xmltodict():
    crypto = OACrypto(TOKEN, AES_KEY, APPID)
    hostile = b'<!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]><xml><Encrypt>&e;</Encrypt></xml>'
    with mock.patch("xmltodict.parse") as xmltodict_parse:
        with pytest.raises(OAProtocolError, match="forbidden"):
            crypto.decrypt(hostile, "0" * 40, "1", "2")
    xmltodict_parse.assert_not_called()


def test_duplicate_encrypt_fields_are_refused():
    body, q = safe_envelope("<xml><A>1</A></xml>")
    enc = parse_xml(body)["Encrypt"]
    doubled = f"<xml><Encrypt>{enc}</Encrypt><Encrypt>{enc}</Encrypt></xml>".encode()
    with pytest.raises(OAProtocolError, match="duplicate"):
        OACrypto(TOKEN, AES_KEY, APPID).decrypt(doubled, q["msg_signature"], q["timestamp"], q["nonce"])


def test_foreign_appid_is_refused():
    body, q = safe_envelope("<xml><A>1</A></xml>", appid="wxsomeoneelse00000")
    with pytest.raises(OAProtocolError, match="decrypt failed"):
        OACrypto(TOKEN, AES_KEY, APPID).decrypt(body, q["msg_signature"], q["timestamp"], q["nonce"])


def test_broken_ciphertext_with_valid_signature_is_refused():
    encrypt = "bm90IGEgcmVhbCBjaXBoZXJ0ZXh0"  # base64, but not a multiple of the AES block
    sig = hashlib.sha1("".join(sorted([TOKEN, "1", "2", encrypt])).encode()).hexdigest()
    with pytest.raises(OAProtocolError, match="decrypt failed"):
        OACrypto(TOKEN, AES_KEY, APPID).decrypt(encrypt, sig, "1", "2")


def test_missing_encrypt_field_is_refused():
    with pytest.raises(OAProtocolError, match="Encrypt"):
        OACrypto(TOKEN, AES_KEY, APPID).decrypt(b"<xml><A>1</A></xml>", "x", "1", "2")


def test_encrypt_refuses_a_nonce_that_would_break_the_envelope():
    with pytest.raises(OAProtocolError):
        OACrypto(TOKEN, AES_KEY, APPID).encrypt("<xml/>", "]]></Nonce><x>", "1")
    with pytest.raises(OAProtocolError):
        OACrypto(TOKEN, AES_KEY, APPID).encrypt("<xml/>", "abc", "1;2")


@pytest.mark.parametrize("key", ["short", AES_KEY + "H", "!" * 43])
def test_bad_aes_key_is_a_config_error(key):
    with pytest.raises(ValueError):
        OACrypto(TOKEN, key, APPID)


# ------------------------------------------------------------------ hostile XML

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<xml><Content>&lol9;</Content></xml>"""

HOSTILE = {
    "billion_laughs": BILLION_LAUGHS,
    "external_entity": b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY xxe SYSTEM "file:///etc/passwd">]>'
                       b"<xml><Content>&xxe;</Content></xml>",
    "external_dtd": b'<!DOCTYPE xml SYSTEM "http://evil.example/x.dtd"><xml><A>1</A></xml>',
    "bare_doctype": b"<!DOCTYPE xml><xml><A>1</A></xml>",
    "parameter_entity": b'<!DOCTYPE x [<!ENTITY % p SYSTEM "http://evil.example/p">%p;]><xml/>',
    "undeclared_entity": b"<xml><A>&nope;</A></xml>",
    "deep_nesting": b"<xml>" + b"<a>" * 5000 + b"x" + b"</a>" * 5000 + b"</xml>",
    "depth_4": b"<xml><A><B><C>1</C></B></A></xml>",
    "huge_body": b"<xml><Content>" + b"a" * (64 * 1024) + b"</Content></xml>",
    "long_text": b"<xml><Content>" + "字".encode() * 3000 + b"</Content></xml>",
    "many_elements": b"<xml>" + b"".join(b"<E%d>1</E%d>" % (i, i) for i in range(201)) + b"</xml>",
    "many_empty_elements": b"<xml>" + b"<e/>" * 10000 + b"</xml>",
    "root_not_xml": b"<root><A>1</A></root>",
    "garbage": bytes(range(256)) * 4,
    "truncated": b"<xml><A>1</A>",
    "empty": b"",
    "whitespace": b"  \n ",
    "two_roots": b"<xml><A>1</A></xml><xml><A>2</A></xml>",
    "bad_utf8": b"<xml><A>\xff\xfe</A></xml>",
}


@pytest.mark.parametrize("name", sorted(HOSTILE))
def test_hostile_xml_is_refused_quickly(name):
    started = time.perf_counter()
    with pytest.raises(OAProtocolError) as info:
        parse_xml(HOSTILE[name])
    assert time.perf_counter() - started < 0.5
    assert info.value.reason and len(info.value.reason) <= 120


@pytest.mark.parametrize("name,reason", [
    ("billion_laughs", "forbidden"), ("external_entity", "forbidden"), ("bare_doctype", "forbidden"),
    ("deep_nesting", "deep"), ("depth_4", "deep"), ("huge_body", "too large"), ("long_text", "too long"),
    ("many_elements", "too many"), ("root_not_xml", "root"), ("garbage", "malformed"), ("empty", "empty"),
])
def test_hostile_xml_reasons(name, reason):
    with pytest.raises(OAProtocolError, match=reason):
        parse_xml(HOSTILE[name])


def test_limits_are_inclusive():
    exactly = b"<xml>" + b"".join(b"<E%d>1</E%d>" % (i, i) for i in range(199)) + b"</xml>"  # 200 with <xml>
    assert len(parse_xml(exactly)) == 199
    text = "a" * 8192
    assert parse_xml(f"<xml><C>{text}</C></xml>".encode())["C"] == text
    with pytest.raises(OAProtocolError, match="too large"):
        parse_xml(b"<xml><A>1</A></xml>", max_bytes=10)


def test_nested_leaves_are_flattened_with_dots():
    body = push("event", Event="scancode_push", EventKey="K",
                ScanCodeInfo="<ScanCodeInfo><ScanType><![CDATA[qrcode]]></ScanType>"
                             "<ScanResult><![CDATA[abc]]></ScanResult></ScanCodeInfo>")
    fields = parse_xml(body)
    assert fields["ScanCodeInfo.ScanType"] == "qrcode"
    assert fields["ScanCodeInfo.ScanResult"] == "abc"
    assert "ScanCodeInfo" not in fields


def test_cdata_entities_and_attributes():
    fields = parse_xml(b'<xml><A a="1"><![CDATA[<b>&amp;]]></A><B>x &amp; y &lt;</B><C/></xml>')
    assert fields == {"A": "<b>&amp;", "B": "x & y <", "C": ""}


# ------------------------------------------------------------------ messages and events

def test_text_message():
    msg = message("text", Content="  签到 \n", MsgId="22800000000001")
    assert (msg.to_user, msg.from_user, msg.create_time) == (ACCOUNT, OPENID, 1700000000)
    assert (msg.msg_type, msg.event, msg.content, msg.msg_id) == ("text", "", "签到", "22800000000001")
    assert msg.scene is None and msg.unionid is None and not msg.is_event
    assert msg.raw["Content"] == "  签到 \n"
    assert msg.dedup_key == "msg:22800000000001"


def test_click_event():
    msg = message("event", Event="CLICK", EventKey="CHECKIN")
    assert (msg.msg_type, msg.event, msg.event_key, msg.msg_id, msg.scene) == ("event", "click", "CHECKIN", None, None)
    assert msg.dedup_key == f"evt:{OPENID}:1700000000:click:CHECKIN"


def test_subscribe_from_a_qr_code():
    msg = message("event", Event="subscribe", EventKey="qrscene_i=AB12cd", Ticket="gQH47joAAAAA")
    assert (msg.event, msg.scene, msg.ticket) == ("subscribe", "i=AB12cd", "gQH47joAAAAA")
    assert parse_invite_scene(msg.scene) == "AB12cd"


def test_plain_subscribe_has_no_scene():
    assert message("event", Event="subscribe", EventKey="").scene is None
    assert message("event", Event="subscribe").scene is None


def test_scan_by_a_follower():
    msg = message("event", Event="SCAN", EventKey="i=AB12cd", Ticket="gQ")
    assert (msg.event, msg.scene) == ("scan", "i=AB12cd")


def test_unsubscribe():
    msg = message("event", Event="unsubscribe")
    assert (msg.event, msg.scene, msg.dedup_key) == ("unsubscribe", None, f"evt:{OPENID}:1700000000:unsubscribe:")


def test_user_get_card():
    msg = message("event", Event="user_get_card", CardId="pCARD", UserCardCode="12312312",
                  IsGiveByFriend="0", OuterStr="i=AB", UnionId="oUNION")
    assert (msg.event, msg.card_id, msg.user_card_code, msg.unionid) == ("user_get_card", "pCARD", "12312312", "oUNION")
    assert msg.raw["OuterStr"] == "i=AB"


def test_submit_membercard_user_info():
    msg = message("event", Event="submit_membercard_user_info", CardId="pCARD", UserCardCode="018255396048",
                  ActivateTicket="fDZv9eMQAFfrNr3XBoqhb")
    assert (msg.event, msg.card_id, msg.user_card_code, msg.activate_ticket) == (
        "submit_membercard_user_info", "pCARD", "018255396048", "fDZv9eMQAFfrNr3XBoqhb")
    assert message("event", Event="submit_membercard_user_info", CardId="p").activate_ticket == ""


def test_user_del_card():
    msg = message("event", Event="user_del_card", CardId="pCARD", UserCardCode="12312312")
    assert (msg.event, msg.card_id, msg.user_card_code) == ("user_del_card", "pCARD", "12312312")


def test_update_member_card():
    msg = message("event", Event="update_member_card", CardId="pCARD", UserCardCode="1",
                  ModifyBonus="3", ModifyBalance="0")
    assert (msg.event, msg.user_card_code, msg.raw["ModifyBonus"]) == ("update_member_card", "1", "3")


def test_user_view_card():
    msg = message("event", Event="user_view_card", CardId="pCARD", UserCardCode="1", OuterStr="")
    assert (msg.event, msg.card_id) == ("user_view_card", "pCARD")


def test_image_message_keeps_its_type_and_no_content():
    msg = message("image", PicUrl="http://x", MediaId="m", MsgId="9", Content="ignored")
    assert (msg.msg_type, msg.content, msg.dedup_key) == ("image", "", "msg:9")


def test_retries_share_a_dedup_key_and_distinct_pushes_do_not():
    a = message("event", Event="subscribe")
    assert a.dedup_key == message("event", Event="subscribe").dedup_key
    assert a.dedup_key != message("event", Event="unsubscribe").dedup_key
    assert a.dedup_key != parse_message(parse_xml(push("event", create_time=1700000001, Event="subscribe"))).dedup_key


def test_two_menu_clicks_in_one_second_are_two_pushes():
    checkin = message("event", Event="CLICK", EventKey="CHECKIN")
    points = message("event", Event="CLICK", EventKey="MY_POINTS")
    assert checkin.create_time == points.create_time
    assert checkin.dedup_key != points.dedup_key
    assert checkin.dedup_key == message("event", Event="CLICK", EventKey="CHECKIN").dedup_key


def test_a_timestamp_is_fresh_within_five_minutes_either_way():
    now = 1_700_000_000
    for offset in (0, 300, -300):
        assert fresh_timestamp(str(now + offset), now=now)
    for stale in (str(now + 301), str(now - 301), "", "-5", "1e9", "17000000000000", " 1700000000"):
        assert not fresh_timestamp(stale, now=now)


@pytest.mark.parametrize("drop", ["ToUserName", "FromUserName", "MsgType"])
def test_missing_header_is_refused(drop):
    fields = parse_xml(push("text", Content="x"))
    del fields[drop]
    with pytest.raises(OAProtocolError, match="missing"):
        parse_message(fields)


@pytest.mark.parametrize("value", ["", "abc", "-1", "1" * 20])
def test_bad_create_time_is_refused(value):
    fields = parse_xml(push("text", Content="x")) | {"CreateTime": value}
    with pytest.raises(OAProtocolError, match="CreateTime"):
        parse_message(fields)


def test_message_is_frozen_and_raw_read_only():
    msg = message("text", Content="x", MsgId="1")
    with pytest.raises(AttributeError):
        msg.content = "y"  # type: ignore[misc]
    with pytest.raises(TypeError):
        msg.raw["Content"] = "y"  # type: ignore[index]
    assert hash(msg) == hash(message("text", Content="x", MsgId="1"))


# ------------------------------------------------------------------ scenes

@pytest.mark.parametrize("event,key,scene", [
    ("subscribe", "qrscene_i=ABC", "i=ABC"),
    ("SUBSCRIBE", "qrscene_123", "123"),
    ("subscribe", "qrscene_", None),
    ("subscribe", "", None),
    ("subscribe", "i=ABC", None),           # a subscribe key without the prefix is not a scene
    ("SCAN", "i=ABC", "i=ABC"),
    ("scan", "", None),
    ("CLICK", "qrscene_i=ABC", None),
    ("", "qrscene_x", None),
])
def test_parse_scene(event, key, scene):
    assert parse_scene(event, key) == scene


@pytest.mark.parametrize("scene,code", [
    ("i=AB12cd", "AB12cd"), ("i=a_b-c", "a_b-c"), ("i=", None), ("x=AB", None), (None, None),
    ("", None), ("i=AB CD", None), ("i=" + "a" * 33, None), ("i=AB&x=1", None), ("I=AB", None),
])
def test_parse_invite_scene(scene, code):
    assert parse_invite_scene(scene) == code


# ------------------------------------------------------------------ replies

def test_text_reply_swaps_the_parties():
    msg = message("text", Content="hi", MsgId="1")
    reply = parse_xml(text_reply(msg, "你好", now=1700000005).encode())
    assert reply == {"ToUserName": OPENID, "FromUserName": ACCOUNT, "CreateTime": "1700000005",
                     "MsgType": "text", "Content": "你好"}


@pytest.mark.parametrize("content", [
    "a]]>b", "]]>", "]]]]>", "<xml>&amp;</xml>", "]]><Evil>1</Evil><![CDATA[", "x]]", "]]>]]>",
])
def test_cdata_escaping_survives_a_round_trip(content):
    msg = message("text", Content="hi", MsgId="1")
    xml = text_reply(msg, content, now=1)
    fields = parse_xml(xml.encode())
    assert fields["Content"] == content
    assert "Evil" not in fields


def test_cdata_drops_characters_xml_cannot_carry():
    assert cdata("a\x00b\x07c\td\n") == "<![CDATA[abc\td\n]]>"
    assert parse_xml(f"<xml><C>{cdata(chr(0xFFFF) + 'x')}</C></xml>".encode())["C"] == "x"


def test_success_is_the_no_reply_answer():
    assert SUCCESS == "success"
    assert oa.MAX_DEPTH == 3
