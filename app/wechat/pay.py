"""WeChat Pay protocol: APIv3 notification checks and decryption, outbound request signing, v2 XML.

Pure and synchronous: no database, no HTTP. RSA and hashing are CPU work, so async callers run
these through `asyncio.to_thread`.
"""
from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import defusedxml
import defusedxml.ElementTree as SafeET
from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

SIGNATURE_TYPE = "WECHATPAY2-SHA256-RSA2048"
AEAD_ALGORITHM = "AEAD_AES_256_GCM"
# WeChat sends probes whose signature starts with this; they are invalid on purpose and must fail.
SIGNTEST_PREFIX = "WECHATPAY/SIGNTEST/"
MAX_NONCE_LENGTH = 64
MAX_V2_BODY = 64 * 1024

REASONS = frozenset({
    "missing_header", "bad_signature_type", "unknown_serial", "bad_timestamp", "stale_timestamp",
    "bad_nonce", "bad_signature", "replayed_nonce", "decrypt_failed", "malformed",
})


class PayNotifyError(Exception):
    """A pay notification was refused; `reason` is one of REASONS and safe to log."""

    def __init__(self, reason: str, message: str | None = None) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown PayNotifyError reason {reason!r}")
        super().__init__(message or reason)
        self.reason = reason
        self.message = message or reason


@dataclass(frozen=True, slots=True)
class Notification:
    """A verified APIv3 notification with its resource decrypted."""

    id: str
    event_type: str
    resource_type: str
    summary: str
    resource: dict[str, Any]
    nonce: str  # the Wechatpay-Nonce header (exactly-once rests on transaction_id / refund_id)


# -- keys ---------------------------------------------------------------------------------------

def _pem_bytes(path_or_pem: str | bytes | os.PathLike[str]) -> bytes:
    if isinstance(path_or_pem, bytes):
        return path_or_pem
    if isinstance(path_or_pem, str) and path_or_pem.lstrip().startswith("-----BEGIN"):
        return path_or_pem.encode()
    return Path(path_or_pem).read_bytes()


def load_public_key(path_or_pem: str | bytes | os.PathLike[str]) -> RSAPublicKey:
    """Load an RSA public key from PEM text/bytes or a path; a PEM certificate yields its key."""
    pem = _pem_bytes(path_or_pem)
    if b"-----BEGIN CERTIFICATE-----" in pem:
        # Merchants on the older "platform certificate" mode are given certificates, not bare keys.
        key = x509.load_pem_x509_certificate(pem).public_key()
    else:
        key = serialization.load_pem_public_key(pem)
    if not isinstance(key, RSAPublicKey):
        raise ValueError("WeChat Pay keys are RSA")
    return key


def load_private_key(path_or_pem: str | bytes | os.PathLike[str], password: bytes | None = None) -> RSAPrivateKey:
    """Load an RSA private key (PKCS#8 or PKCS#1 PEM) from PEM text/bytes or a path."""
    key = serialization.load_pem_private_key(_pem_bytes(path_or_pem), password=password)
    if not isinstance(key, RSAPrivateKey):
        raise ValueError("WeChat Pay keys are RSA")
    return key


def _rsa_sign(private_key: RSAPrivateKey, message: str) -> str:
    signature = private_key.sign(message.encode(), asym_padding.PKCS1v15(), hashes.SHA256())
    return base64.b64encode(signature).decode("ascii")


# -- APIv3 notifications ------------------------------------------------------------------------

def _header(headers: Mapping[str, str], name: str) -> str | None:
    value = headers.get(name)
    if value is None:
        # A plain dict is case-sensitive; aiohttp's CIMultiDict is not. Accept both.
        lower = name.lower()
        value = next((v for k, v in headers.items() if k.lower() == lower), None)
    return value


def _required(headers: Mapping[str, str], name: str) -> str:
    value = _header(headers, name)
    if value is None or not value.strip():
        raise PayNotifyError("missing_header", f"missing {name}")
    return value.strip()


class PayV3Verifier:
    """Checks APIv3 notification signatures and decrypts their resources.

    `public_keys` maps a Wechatpay-Serial (public key id or platform certificate serial) to its
    key; several entries let a key rotation overlap.
    """

    def __init__(self, *, apiv3_key: bytes, public_keys: Mapping[str, RSAPublicKey], max_skew: int = 300) -> None:
        if isinstance(apiv3_key, str):
            apiv3_key = apiv3_key.encode()
        if len(apiv3_key) != 32:
            raise ValueError("the APIv3 key is 32 bytes (AES-256)")
        if not public_keys:
            raise ValueError("at least one WeChat Pay public key is needed")
        for serial, key in public_keys.items():
            if not isinstance(key, RSAPublicKey):
                raise TypeError(f"public key {serial!r} is not an RSA public key")
        self._aesgcm = AESGCM(apiv3_key)
        self._public_keys = dict(public_keys)
        self.max_skew = max_skew

    def verify(self, *, headers: Mapping[str, str], body: bytes, now: float) -> None:
        """Accept only a known serial, type WECHATPAY2-SHA256-RSA2048, a timestamp within
        `max_skew` (300 s) of `now`, a nonce of at most 64 chars, and an RSA-SHA256 signature
        over "timestamp\\nnonce\\nbody\\n". Raise PayNotifyError otherwise."""
        serial = _required(headers, "Wechatpay-Serial")
        signature = _required(headers, "Wechatpay-Signature")
        timestamp = _required(headers, "Wechatpay-Timestamp")
        nonce = _required(headers, "Wechatpay-Nonce")

        signature_type = _header(headers, "Wechatpay-Signature-Type")
        if signature_type is not None and signature_type.strip() != SIGNATURE_TYPE:
            raise PayNotifyError("bad_signature_type", f"unsupported signature type {signature_type!r}")

        # Serials are public identifiers, so a plain dict lookup leaks nothing worth a constant-time compare.
        public_key = self._public_keys.get(serial)
        if public_key is None:
            raise PayNotifyError("unknown_serial", f"unknown Wechatpay-Serial {serial!r}")

        # The length cap keeps int() away from its huge-number limit (and its cost).
        if len(timestamp) > 12 or not (timestamp.isascii() and timestamp.isdigit()):
            raise PayNotifyError("bad_timestamp", "Wechatpay-Timestamp is not an integer")
        if abs(now - int(timestamp)) > self.max_skew:
            raise PayNotifyError("stale_timestamp", "Wechatpay-Timestamp is too far from now")

        # The nonce sits between newlines in the signed message: whitespace in it could move bytes
        # between nonce and body under the same signature, so only visible ASCII is allowed.
        if len(nonce) > MAX_NONCE_LENGTH or not (nonce.isascii() and nonce.isprintable()) or " " in nonce:
            raise PayNotifyError("bad_nonce", "Wechatpay-Nonce is not 1-64 visible ASCII characters")

        if signature.startswith(SIGNTEST_PREFIX):
            raise PayNotifyError("bad_signature", "signature probe")
        try:
            raw_signature = base64.b64decode(signature, validate=True)
        except (binascii.Error, ValueError):
            raise PayNotifyError("bad_signature", "signature is not base64") from None
        # The body is signed as received; decoding and re-encoding it could change the bytes.
        message = f"{timestamp}\n{nonce}\n".encode() + body + b"\n"
        try:
            public_key.verify(raw_signature, message, asym_padding.PKCS1v15(), hashes.SHA256())
        except InvalidSignature:
            raise PayNotifyError("bad_signature", "signature does not match") from None

    def decrypt_resource(self, resource: Mapping[str, Any]) -> dict[str, Any]:
        """Decrypt an AEAD_AES_256_GCM `resource` with the APIv3 key and return its JSON object;
        any fault is PayNotifyError("decrypt_failed")."""
        try:
            algorithm = resource.get("algorithm", AEAD_ALGORITHM)
            if algorithm != AEAD_ALGORITHM:
                raise ValueError(f"unsupported algorithm {algorithm!r}")
            nonce = resource["nonce"].encode()
            associated_data = (resource.get("associated_data") or "").encode()
            ciphertext = base64.b64decode(resource["ciphertext"], validate=True)
            plaintext = self._aesgcm.decrypt(nonce, ciphertext, associated_data)
            data = json.loads(plaintext)
        except (InvalidTag, KeyError, TypeError, AttributeError, ValueError, binascii.Error):
            raise PayNotifyError("decrypt_failed", "resource does not decrypt") from None
        if not isinstance(data, dict):
            raise PayNotifyError("decrypt_failed", "resource is not a JSON object")
        return data

    def parse_notification(self, *, headers: Mapping[str, str], body: bytes, now: float) -> Notification:
        """Verify the signature, parse the envelope and decrypt its resource (in that order, so
        nothing unsigned is ever parsed)."""
        self.verify(headers=headers, body=body, now=now)
        try:
            envelope = json.loads(body)
        except (ValueError, UnicodeDecodeError):
            raise PayNotifyError("malformed", "body is not JSON") from None
        if not isinstance(envelope, dict):
            raise PayNotifyError("malformed", "body is not a JSON object")
        notification_id = envelope.get("id")
        event_type = envelope.get("event_type")
        resource = envelope.get("resource")
        if not isinstance(notification_id, str) or not isinstance(event_type, str) or not isinstance(resource, dict):
            raise PayNotifyError("malformed", "envelope lacks id, event_type or resource")
        return Notification(
            id=notification_id,
            event_type=event_type,
            resource_type=str(envelope.get("resource_type") or ""),
            summary=str(envelope.get("summary") or ""),
            resource=self.decrypt_resource(resource),
            nonce=_required(headers, "Wechatpay-Nonce"),
        )


# -- APIv3 outbound -----------------------------------------------------------------------------

def _check_field(name: str, value: str) -> str:
    # Fields are quoted inside the Authorization header; a quote or newline would forge other fields.
    if not value or any(c in value for c in '"\r\n,'):
        raise ValueError(f"{name} must be non-empty without quotes, commas or newlines")
    return value


def sign_request(*, method: str, url_path_with_query: str, body: str, mchid: str, serial_no: str,
                 private_key: RSAPrivateKey, timestamp: int, nonce: str) -> str:
    """Return the Authorization header for an APIv3 request: RSA-SHA256 over
    "METHOD\\nurl\\ntimestamp\\nnonce\\nbody\\n" (body "" for GET)."""
    method = method.upper()
    message = f"{method}\n{url_path_with_query}\n{int(timestamp)}\n{_check_field('nonce', nonce)}\n{body}\n"
    signature = _rsa_sign(private_key, message)
    return (
        f'{SIGNATURE_TYPE} mchid="{_check_field("mchid", mchid)}",nonce_str="{nonce}",'
        f'signature="{signature}",timestamp="{int(timestamp)}",serial_no="{_check_field("serial_no", serial_no)}"'
    )


def jsapi_pay_params(*, appid: str, prepay_id: str, private_key: RSAPrivateKey, timestamp: int,
                     nonce: str) -> dict[str, str]:
    """Return wx.requestPayment's params: paySign is RSA-SHA256 over
    "appid\\ntimeStamp\\nnonceStr\\nprepay_id=...\\n"."""
    package = f"prepay_id={prepay_id}"
    time_stamp = str(int(timestamp))
    return {
        "timeStamp": time_stamp,
        "nonceStr": nonce,
        "package": package,
        "signType": "RSA",
        "paySign": _rsa_sign(private_key, f"{appid}\n{time_stamp}\n{nonce}\n{package}\n"),
    }


# -- v2 (XML) -----------------------------------------------------------------------------------

V2_SIGN_TYPES = ("MD5", "HMAC-SHA256")


def v2_sign(params: Mapping[str, Any], key: str, sign_type: str = "MD5") -> str:
    """Sign v2 params: "k=v" pairs sorted by key, `sign` and empty values left out, joined by "&",
    then "&key=KEY"; MD5 or HMAC-SHA256 (keyed with KEY), upper-case hex."""
    # Not wechatpy.pay.utils.calculate_signature: it keeps `sign` in the string and drops any falsy
    # value, so a 0 amount would be signed differently from how WeChat signs it.
    pairs = "&".join(
        f"{k}={v}" for k, v in sorted(params.items())
        if k != "sign" and v is not None and v != ""
    )
    message = f"{pairs}&key={key}".encode()
    if sign_type == "MD5":
        return hashlib.md5(message).hexdigest().upper()
    if sign_type == "HMAC-SHA256":
        return hmac.new(key.encode(), message, hashlib.sha256).hexdigest().upper()
    raise ValueError(f"unsupported v2 sign_type {sign_type!r}")


def verify_v2(params: Mapping[str, Any], key: str, *, sign_type: str | None = None) -> None:
    """Check a v2 `sign` (payment results; refund notifications carry none). The sign type is
    `sign_type` if given, else the params' own `sign_type`, else MD5."""
    sign = params.get("sign")
    if not isinstance(sign, str) or not sign:
        raise PayNotifyError("bad_signature", "missing sign")
    sign_type = sign_type or params.get("sign_type") or "MD5"
    if sign_type not in V2_SIGN_TYPES:
        raise PayNotifyError("bad_signature_type", f"unsupported sign_type {sign_type!r}")
    expected = v2_sign(params, key, sign_type)
    if not hmac.compare_digest(expected.encode(), sign.encode()):
        raise PayNotifyError("bad_signature", "sign does not match")


def _parse_flat_xml(body: bytes | str, root_tag: str) -> dict[str, str]:
    if len(body) > MAX_V2_BODY:
        raise PayNotifyError("malformed", "XML body too large")
    try:
        # DTDs and entities are refused outright: WeChat never sends them, attackers do.
        root = SafeET.fromstring(body, forbid_dtd=True, forbid_entities=True, forbid_external=True)
    except (defusedxml.DefusedXmlException, ET.ParseError, ValueError):
        raise PayNotifyError("malformed", "not acceptable XML") from None
    if root.tag != root_tag:
        raise PayNotifyError("malformed", f"root element is not <{root_tag}>")
    params: dict[str, str] = {}
    for child in root:
        if len(child):
            raise PayNotifyError("malformed", "XML nested deeper than two levels")
        if child.tag in params:
            # Two `sign` or two `total_fee` elements would let signer and reader see different values.
            raise PayNotifyError("malformed", f"duplicate <{child.tag}>")
        params[child.tag] = child.text or ""
    return params


def parse_v2_xml(body: bytes) -> dict[str, str]:
    """Parse a v2 `<xml>` body of flat children into a dict; DTDs, entities, nesting deeper than
    two levels, duplicates and bodies over 64 KiB are PayNotifyError("malformed")."""
    return _parse_flat_xml(body, "xml")


def _v2_aes_key(key: str) -> bytes:
    return hashlib.md5(key.encode()).hexdigest().lower().encode("ascii")


def decrypt_v2_refund(req_info_b64: str, key: str) -> dict[str, str]:
    """Decrypt a v2 refund notification's `req_info`: base64, AES-256-ECB keyed with the lower-case
    md5 hex of the v2 key, PKCS7; the plaintext is a flat `<root>` XML."""
    try:
        ciphertext = base64.b64decode(req_info_b64, validate=True)
        if not ciphertext or len(ciphertext) % 16:
            raise ValueError("ciphertext is not whole AES blocks")
        decryptor = Cipher(algorithms.AES(_v2_aes_key(key)), modes.ECB()).decryptor()
        padded = decryptor.update(ciphertext) + decryptor.finalize()
        unpadder = padding.PKCS7(128).unpadder()
        plaintext = unpadder.update(padded) + unpadder.finalize()
    except (TypeError, ValueError, binascii.Error):
        raise PayNotifyError("decrypt_failed", "req_info does not decrypt") from None
    try:
        return _parse_flat_xml(plaintext, "root")
    except PayNotifyError:
        # A wrong key sometimes unpads cleanly into garbage; report it as the decryption fault it is.
        raise PayNotifyError("decrypt_failed", "req_info is not the expected XML") from None


def _cdata(text: str) -> str:
    # "]]>" would close the section early; split it across two sections instead.
    return "<![CDATA[" + text.replace("]]>", "]]]]><![CDATA[>") + "]]>"


def v2_reply(ok: bool, msg: str = "OK") -> str:
    """The XML a v2 notify endpoint answers: return_code SUCCESS or FAIL, with return_msg."""
    code = "SUCCESS" if ok else "FAIL"
    return f"<xml><return_code>{_cdata(code)}</return_code><return_msg>{_cdata(msg)}</return_msg></xml>"
