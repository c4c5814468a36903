"""Official account (公众号) protocol: signatures, safe mode, XML parsing, messages, replies.

No database and no domain here: this module turns WeChat's bytes into an `OAMessage` and a
reply string back into bytes WeChat accepts. Every refusal is an `OAProtocolError`.

Flow for `POST /wechat/oa`:
    check_signature(...)                      # plain `signature` query arg, both modes
    body = crypto.decrypt(raw, msg_signature, timestamp, nonce)   # safe mode only
    msg = parse_message(parse_xml(body))
    reply = text_reply(msg, "...", now=...) or SUCCESS
    crypto.encrypt(reply, nonce, timestamp)    # safe mode, when reply is not SUCCESS
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from xml.etree.ElementTree import ParseError

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import DefusedXMLParser
from wechatpy.crypto import WeChatCrypto

__all__ = [
    "SUCCESS", "OAProtocolError", "OASignatureError", "OACrypto", "OAMessage",
    "check_signature", "check_msg_signature", "fresh_timestamp", "parse_xml", "parse_message",
    "parse_scene", "parse_invite_scene", "text_reply", "cdata",
]

SUCCESS = "success"
"""The body that tells WeChat "received, no reply" (an empty body works too; this is explicit)."""

MAX_BODY_BYTES = 64 * 1024
MAX_DEPTH = 3            # <xml> is depth 1; WeChat nests at most one level below its children
MAX_ELEMENTS = 200
MAX_TEXT_BYTES = 8 * 1024
MAX_SKEW_SECONDS = 300   # a push's `timestamp` may be this far from our clock, either way


class OAProtocolError(ValueError):
    """WeChat's push (or something pretending to be it) broke the protocol; `reason` is short."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class OASignatureError(OAProtocolError):
    """The push is not signed by the holder of the token (a bad `msg_signature`): 403, not 400."""


# ---------------------------------------------------------------- signatures

def _sha1_sorted(*parts: str) -> str:
    return hashlib.sha1("".join(sorted(parts)).encode("utf-8")).hexdigest()


def check_signature(*, token: str, signature: str, timestamp: str, nonce: str) -> bool:
    """True when `signature` is sha1 of the sorted, concatenated [token, timestamp, nonce]."""
    if not (token and signature and timestamp and nonce):
        return False
    expected = _sha1_sorted(token, timestamp, nonce)
    # compare_digest so a forger cannot learn the signature byte by byte from timing
    return hmac.compare_digest(expected.encode(), signature.strip().lower().encode())


def fresh_timestamp(timestamp: str, *, now: int, skew: int = MAX_SKEW_SECONDS) -> bool:
    """True when `timestamp` (unix seconds, digits only) is within `skew` (5 minutes) of `now`.
    A signature copied from an access log is worthless once its timestamp is stale."""
    if not timestamp.isdigit() or len(timestamp) > 12:
        return False
    return abs(int(timestamp) - now) <= skew


def check_msg_signature(*, token: str, msg_signature: str, timestamp: str, nonce: str,
                        encrypt: str) -> bool:
    """Safe mode: True when `msg_signature` is sha1 of sorted [token, timestamp, nonce, encrypt]."""
    if not (token and msg_signature and timestamp and nonce and encrypt):
        return False
    expected = _sha1_sorted(token, timestamp, nonce, encrypt)
    return hmac.compare_digest(expected.encode(), msg_signature.strip().lower().encode())


# ---------------------------------------------------------------- safe XML

class _Collector:
    """ElementTree parser target that enforces the limits while expat streams, so a hostile
    body is refused at its first excess element instead of after a full tree is built."""

    def __init__(self, max_text: int) -> None:
        self.max_text = max_text
        self.path: list[str] = []
        self.text: list[str] = []
        self.text_len = 0
        self.has_child = [False]
        self.count = 0
        self.fields: dict[str, str] = {}

    def start(self, tag: str, attrib: dict) -> None:
        self.count += 1
        if self.count > MAX_ELEMENTS:
            raise OAProtocolError("too many elements")
        if not self.path and tag != "xml":
            raise OAProtocolError("root is not <xml>")
        if len(self.path) >= MAX_DEPTH:
            raise OAProtocolError("nested too deep")
        self.has_child[-1] = True
        self.has_child.append(False)
        self.path.append(tag)
        self.text, self.text_len = [], 0

    def data(self, chunk: str) -> None:
        self.text_len += len(chunk)
        # characters are >= 1 byte, so a char count over the limit is already over in bytes
        if self.text_len > self.max_text:
            raise OAProtocolError("text too long")
        self.text.append(chunk)

    def end(self, tag: str) -> None:
        leaf = not self.has_child.pop()
        if leaf and len(self.path) > 1:
            text = "".join(self.text)
            if len(text.encode("utf-8")) > self.max_text:
                raise OAProtocolError("text too long")
            key = ".".join(self.path[1:])
            if key in self.fields:
                # two <Encrypt> or two <FromUserName>: which one did the signer mean?
                raise OAProtocolError("duplicate element")
            self.fields[key] = text
        self.path.pop()
        self.text, self.text_len = [], 0

    def close(self) -> dict[str, str]:
        return self.fields


def parse_xml(body: bytes, *, max_bytes: int = MAX_BODY_BYTES,
              max_text: int = MAX_TEXT_BYTES) -> dict[str, str]:
    """Parse a WeChat XML push into a flat dict of leaf texts.

    Rules: at most `max_bytes` (64 KiB); root `<xml>`; depth at most 3 (`<xml>` counts as 1);
    at most 200 elements; each text at most 8 KiB; no DTD, entity or external reference;
    no element twice. A nested leaf is keyed `Parent.Child`
    (`<ScanCodeInfo><ScanType>` → `"ScanCodeInfo.ScanType"`); parents get no key of their own;
    attributes and text between elements are ignored. Anything else: `OAProtocolError`.
    """
    if isinstance(body, str):
        body = body.encode("utf-8")
    if not body or not body.strip():
        raise OAProtocolError("empty body")
    if len(body) > max_bytes:
        raise OAProtocolError("body too large")
    collector = _Collector(max_text)
    # forbid_dtd refuses at <!DOCTYPE, before any entity is declared, so billion laughs
    # and external entities never expand
    parser = DefusedXMLParser(target=collector, forbid_dtd=True, forbid_entities=True,
                              forbid_external=True)
    try:
        parser.feed(body)
        return parser.close()
    except OAProtocolError:
        raise
    except DefusedXmlException as exc:
        raise OAProtocolError(f"forbidden XML: {type(exc).__name__}") from None
    except (ParseError, ValueError, UnicodeError) as exc:
        raise OAProtocolError(f"malformed XML: {exc}"[:120]) from None


# ---------------------------------------------------------------- safe mode

_TOKENISH = re.compile(r"[A-Za-z0-9]{1,64}")


class OACrypto:
    """Safe mode (安全模式) envelope: AES-256-CBC over the message, signed by msg_signature.

    The outer envelope is parsed by `parse_xml`, never by wechatpy's xmltodict, and
    msg_signature is checked before a single byte is decrypted.
    """

    def __init__(self, token: str, encoding_aes_key: str, appid: str) -> None:
        if not token or not appid:
            raise ValueError("token and appid are required")
        if len(encoding_aes_key or "") != 43:
            raise ValueError("EncodingAESKey must be 43 characters")
        try:
            key = base64.b64decode(encoding_aes_key + "=", validate=True)
        except binascii.Error:
            raise ValueError("EncodingAESKey is not base64") from None
        if len(key) != 32:
            raise ValueError("EncodingAESKey must decode to 32 bytes")
        self.token = token
        self.appid = appid
        self._crypto = WeChatCrypto(token, encoding_aes_key, appid)

    def decrypt(self, body_or_encrypt: bytes | str, msg_signature: str, timestamp: str,
                nonce: str) -> bytes:
        """Return the plaintext XML inside a safe-mode push.

        `body_or_encrypt` is the POST body (`<xml><Encrypt>…`) or the bare Encrypt value
        (base64, which never starts with `<`). A bad msg_signature: `OASignatureError`; a
        foreign appid or broken ciphertext: `OAProtocolError`.
        """
        raw = body_or_encrypt.encode("utf-8") if isinstance(body_or_encrypt, str) else body_or_encrypt
        if raw.lstrip().startswith(b"<"):
            encrypt = parse_xml(raw).get("Encrypt", "")
        else:
            encrypt = raw.decode("ascii", "replace")
        encrypt = encrypt.strip()
        if not encrypt:
            raise OAProtocolError("no Encrypt field")
        if not check_msg_signature(token=self.token, msg_signature=msg_signature,
                                   timestamp=timestamp, nonce=nonce, encrypt=encrypt):
            raise OASignatureError("bad msg_signature")
        try:
            # a dict, so wechatpy skips its own xmltodict parse; it re-checks the signature
            plain = self._crypto.decrypt_message({"Encrypt": encrypt}, msg_signature,
                                                 timestamp, nonce)
        except Exception as exc:  # padding, base64, appid, utf-8: all mean "not from WeChat"
            raise OAProtocolError(f"decrypt failed: {type(exc).__name__}") from None
        return plain.encode("utf-8")

    def encrypt(self, reply_xml: str, nonce: str, timestamp: str | int) -> str:
        """Wrap a reply in the safe-mode envelope (Encrypt, MsgSignature, TimeStamp, Nonce)."""
        timestamp = str(timestamp)
        # wechatpy pastes these into its template unescaped; WeChat's are digits/letters
        if not timestamp.isdigit() or not _TOKENISH.fullmatch(nonce or ""):
            raise OAProtocolError("bad nonce or timestamp")
        try:
            return self._crypto.encrypt_message(reply_xml, nonce, timestamp)
        except Exception as exc:
            raise OAProtocolError(f"encrypt failed: {type(exc).__name__}") from None


# ---------------------------------------------------------------- messages

@dataclass(frozen=True, slots=True)
class OAMessage:
    """One push from WeChat, parsed once. `event` is lowercase ("" for non-events);
    `msg_type` is lowercase; `content` is stripped text; missing fields are "" or None."""

    to_user: str                 # the official account's original id (gh_…)
    from_user: str               # the member's openid under this official account
    create_time: int
    msg_type: str
    event: str = ""
    event_key: str = ""
    msg_id: str | None = None
    content: str = ""
    scene: str | None = None
    ticket: str = ""
    card_id: str = ""
    user_card_code: str = ""
    activate_ticket: str = ""
    # only user_get_card carries UnionId; elsewhere the caller looks it up
    unionid: str | None = None
    raw: Mapping[str, str] = field(default_factory=dict, compare=False, hash=False, repr=False)

    @property
    def is_event(self) -> bool:
        return self.msg_type == "event"

    @property
    def dedup_key(self) -> str:
        """`msg:{MsgId}` for messages, `evt:{FromUserName}:{CreateTime}:{event}:{EventKey}` for
        events. WeChat retries an unanswered push 3 times; the key is the same on every retry,
        and two menu clicks within one second (same CreateTime, other EventKey) are two pushes."""
        if self.msg_id:
            return f"msg:{self.msg_id}"
        return f"evt:{self.from_user}:{self.create_time}:{self.event or self.msg_type}:{self.event_key}"


def parse_message(fields: Mapping[str, str]) -> OAMessage:
    """Build an `OAMessage` from `parse_xml` output. ToUserName, FromUserName, MsgType and an
    integer CreateTime are required, else `OAProtocolError`."""
    def get(name: str) -> str:
        return (fields.get(name) or "").strip()

    to_user, from_user, msg_type = get("ToUserName"), get("FromUserName"), get("MsgType").lower()
    if not (to_user and from_user and msg_type):
        raise OAProtocolError("missing ToUserName, FromUserName or MsgType")
    created = get("CreateTime")
    if not created.isdigit() or len(created) > 12:
        raise OAProtocolError("bad CreateTime")
    event = get("Event").lower() if msg_type == "event" else ""
    event_key = get("EventKey")
    return OAMessage(
        to_user=to_user,
        from_user=from_user,
        create_time=int(created),
        msg_type=msg_type,
        event=event,
        event_key=event_key,
        msg_id=get("MsgId") or None,
        content=get("Content") if msg_type == "text" else "",
        scene=parse_scene(event, event_key) if event else None,
        ticket=get("Ticket"),
        card_id=get("CardId"),
        user_card_code=get("UserCardCode"),
        activate_ticket=get("ActivateTicket"),
        unionid=get("UnionId") or None,
        raw=MappingProxyType(dict(fields)),
    )


def parse_scene(event: str, event_key: str) -> str | None:
    """The QR scene of a subscribe or SCAN event: `subscribe` + `qrscene_X` → `X`,
    `SCAN` + `X` → `X`; anything else (menu clicks, plain subscribes) → None."""
    event, key = (event or "").lower(), (event_key or "").strip()
    if event == "subscribe":
        # an unscanned subscribe has no EventKey (or an empty one)
        scene = key[len("qrscene_"):] if key.startswith("qrscene_") else ""
    elif event == "scan":
        scene = key
    else:
        return None
    return scene or None


_INVITE_CODE = re.compile(r"[A-Za-z0-9_-]{1,32}")


def parse_invite_scene(scene: str | None) -> str | None:
    """The invite code in a scene `i=CODE` (letters, digits, `_`, `-`; 1–32), else None."""
    if not scene or not scene.startswith("i="):
        return None
    code = scene[2:]
    return code if _INVITE_CODE.fullmatch(code) else None


# ---------------------------------------------------------------- replies

# XML 1.0 forbids these even inside CDATA; WeChat rejects a reply that carries one
_XML_ILLEGAL = {c: None for c in range(0x20) if chr(c) not in "\t\n\r"} | {0xFFFE: None, 0xFFFF: None}


def cdata(value: str) -> str:
    """`value` as CDATA; a `]]>` inside is split across two sections so it cannot close early."""
    value = str(value).translate(_XML_ILLEGAL)
    return "<![CDATA[" + value.replace("]]>", "]]]]><![CDATA[>") + "]]>"


def text_reply(msg: OAMessage, content: str, *, now: int) -> str:
    """A passive text reply to `msg`: To = the member (msg.from_user), From = the account."""
    return (
        "<xml>"
        f"<ToUserName>{cdata(msg.from_user)}</ToUserName>"
        f"<FromUserName>{cdata(msg.to_user)}</FromUserName>"
        f"<CreateTime>{int(now)}</CreateTime>"
        "<MsgType><![CDATA[text]]></MsgType>"
        f"<Content>{cdata(content)}</Content>"
        "</xml>"
    )

