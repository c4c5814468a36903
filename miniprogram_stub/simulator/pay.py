"""WeChat Pay's side of the protocol, for the simulator and the tests: it signs and encrypts
notifications the way WeChat's servers do, and checks the merchant's signed requests.

Written apart from app/wechat/pay.py on purpose, so a bug there cannot hide behind the same bug here.
The keys under keys/ are test keys.
"""
from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import string
import time
import uuid
from collections.abc import Mapping
from datetime import datetime, timedelta, timezone
from functools import cache
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, padding, serialization
from cryptography.hazmat.primitives.asymmetric import padding as asym_padding
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey, RSAPublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

KEYS_DIR = Path(__file__).resolve().parent / "keys"
PLATFORM_PRIVATE_KEY_PATH = KEYS_DIR / "platform_private.pem"
PLATFORM_PUBLIC_KEY_PATH = KEYS_DIR / "platform_public.pem"
MERCHANT_PRIVATE_KEY_PATH = KEYS_DIR / "merchant_private.pem"
MERCHANT_PUBLIC_KEY_PATH = KEYS_DIR / "merchant_public.pem"

SANDBOX_APIV3_KEY = b"sandbox-apiv3-key-32-bytes-long!"
SANDBOX_PUBLIC_KEY_ID = "PUB_KEY_ID_SANDBOX0001"
SANDBOX_MCHID = "1900000001"
SANDBOX_V2_KEY = "sandboxV2key0123456789abcdefABCD"
SANDBOX_MERCHANT_SERIAL = "5A4D3C2B1A0908070605040302010000SANDBOX1"

SIGNATURE_TYPE = "WECHATPAY2-SHA256-RSA2048"
CHINA_TZ = timezone(timedelta(hours=8))
_ALPHANUM = string.ascii_letters + string.digits


@cache
def platform_private_key() -> RSAPrivateKey:
    """The sandbox WeChat Pay platform key that signs notifications."""
    return serialization.load_pem_private_key(PLATFORM_PRIVATE_KEY_PATH.read_bytes(), password=None)


@cache
def platform_public_key() -> RSAPublicKey:
    """Its public half, known to the merchant as SANDBOX_PUBLIC_KEY_ID."""
    return serialization.load_pem_public_key(PLATFORM_PUBLIC_KEY_PATH.read_bytes())


@cache
def merchant_private_key() -> RSAPrivateKey:
    """The sandbox merchant key that signs outbound APIv3 requests and paySign."""
    return serialization.load_pem_private_key(MERCHANT_PRIVATE_KEY_PATH.read_bytes(), password=None)


@cache
def merchant_public_key() -> RSAPublicKey:
    """Its public half, which WeChat (the simulator) knows under SANDBOX_MERCHANT_SERIAL."""
    return serialization.load_pem_public_key(MERCHANT_PUBLIC_KEY_PATH.read_bytes())


def random_nonce(length: int = 32) -> str:
    """A random alphanumeric string, the shape WeChat uses for nonces."""
    return "".join(secrets.choice(_ALPHANUM) for _ in range(length))


def rfc3339(moment: float | None = None) -> str:
    """WeChat's time format, e.g. 2018-06-08T10:34:56+08:00."""
    return datetime.fromtimestamp(time.time() if moment is None else moment, CHINA_TZ).isoformat(timespec="seconds")


# -- APIv3 --------------------------------------------------------------------------------------

def sign_v3(private_key: RSAPrivateKey, *lines: str | bytes) -> str:
    """Base64 RSA PKCS1v15 SHA256 over the lines, each followed by "\\n" (APIv3's message shape)."""
    message = b"".join((line if isinstance(line, bytes) else line.encode()) + b"\n" for line in lines)
    return base64.b64encode(private_key.sign(message, asym_padding.PKCS1v15(), hashes.SHA256())).decode()


def encrypt_resource(resource: Mapping[str, Any], *, apiv3_key: bytes, associated_data: str,
                     nonce: str | None = None) -> dict[str, str]:
    """Encrypt a resource as WeChat does: AEAD_AES_256_GCM, a 12-char nonce, base64 ciphertext+tag."""
    nonce = nonce or random_nonce(12)
    plaintext = json.dumps(resource, ensure_ascii=False, separators=(",", ":")).encode()
    ciphertext = AESGCM(apiv3_key).encrypt(nonce.encode(), plaintext, associated_data.encode())
    return {
        "algorithm": "AEAD_AES_256_GCM",
        "ciphertext": base64.b64encode(ciphertext).decode(),
        "associated_data": associated_data,
        "nonce": nonce,
    }


def signed_headers(*, body: bytes, private_key: RSAPrivateKey, serial: str, timestamp: int,
                   nonce: str) -> dict[str, str]:
    """The Wechatpay-* headers WeChat puts on a notification with this body."""
    return {
        "Content-Type": "application/json",
        "Wechatpay-Serial": serial,
        "Wechatpay-Signature-Type": SIGNATURE_TYPE,
        "Wechatpay-Timestamp": str(timestamp),
        "Wechatpay-Nonce": nonce,
        "Wechatpay-Signature": sign_v3(private_key, str(timestamp), nonce, body),
    }


def build_v3_notification(*, event_type: str, resource: Mapping[str, Any], apiv3_key: bytes = SANDBOX_APIV3_KEY,
                          private_key: RSAPrivateKey | None = None, serial: str = SANDBOX_PUBLIC_KEY_ID,
                          timestamp: int | None = None, nonce: str | None = None,
                          notification_id: str | None = None, summary: str | None = None,
                          ) -> tuple[dict[str, str], bytes]:
    """Build a signed APIv3 notification (headers, body): the resource encrypted with associated
    data "transaction" (TRANSACTION.*) or "refund" (REFUND.*), the body signed by the platform key."""
    kind = "refund" if event_type.upper().startswith("REFUND") else "transaction"
    timestamp = int(time.time()) if timestamp is None else timestamp
    envelope = {
        "id": notification_id or str(uuid.uuid4()),
        "create_time": rfc3339(timestamp),
        "resource_type": "encrypt-resource",
        "event_type": event_type,
        "summary": summary or ("退款成功" if kind == "refund" else "支付成功"),
        "resource": {
            "original_type": kind,
            **encrypt_resource(resource, apiv3_key=apiv3_key, associated_data=kind),
        },
    }
    body = json.dumps(envelope, ensure_ascii=False, separators=(",", ":")).encode()
    headers = signed_headers(body=body, private_key=private_key or platform_private_key(), serial=serial,
                             timestamp=timestamp, nonce=nonce or random_nonce())
    return headers, body


def transaction_resource(*, openid: str, transaction_id: str, out_trade_no: str, total_fen: int,
                         payer_total_fen: int | None = None, mchid: str = SANDBOX_MCHID, appid: str,
                         success_time: str | None = None, attach: str | None = None,
                         trade_type: str = "JSAPI") -> dict[str, Any]:
    """A TRANSACTION.SUCCESS resource in WeChat's shape; payer_total defaults to total."""
    resource: dict[str, Any] = {
        "mchid": mchid,
        "appid": appid,
        "out_trade_no": out_trade_no,
        "transaction_id": transaction_id,
        "trade_type": trade_type,
        "trade_state": "SUCCESS",
        "trade_state_desc": "支付成功",
        "bank_type": "OTHERS",
        "success_time": success_time or rfc3339(),
        "payer": {"openid": openid},
        "amount": {
            "total": total_fen,
            "payer_total": total_fen if payer_total_fen is None else payer_total_fen,
            "currency": "CNY",
            "payer_currency": "CNY",
        },
    }
    if attach is not None:
        resource["attach"] = attach
    return resource


def refund_resource(*, transaction_id: str, out_trade_no: str, refund_id: str, out_refund_no: str,
                    refund_fen: int, total_fen: int, payer_refund_fen: int | None = None,
                    payer_total_fen: int | None = None, mchid: str = SANDBOX_MCHID,
                    success_time: str | None = None, refund_status: str = "SUCCESS") -> dict[str, Any]:
    """A REFUND.SUCCESS resource in WeChat's shape; payer amounts default to the full amounts."""
    return {
        "mchid": mchid,
        "transaction_id": transaction_id,
        "out_trade_no": out_trade_no,
        "refund_id": refund_id,
        "out_refund_no": out_refund_no,
        "refund_status": refund_status,
        "success_time": success_time or rfc3339(),
        "user_received_account": "支付用户零钱",
        "amount": {
            "total": total_fen,
            "refund": refund_fen,
            "payer_total": total_fen if payer_total_fen is None else payer_total_fen,
            "payer_refund": refund_fen if payer_refund_fen is None else payer_refund_fen,
        },
    }


class MerchantAuthError(Exception):
    """A merchant request's Authorization header was refused; `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def parse_authorization(header: str) -> dict[str, str]:
    """Split `WECHATPAY2-SHA256-RSA2048 k="v",k="v"` into its fields."""
    scheme, _, rest = header.strip().partition(" ")
    if scheme != SIGNATURE_TYPE:
        raise MerchantAuthError("bad_scheme")
    fields: dict[str, str] = {}
    for part in rest.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep or len(value) < 2 or value[0] != '"' or value[-1] != '"' or name in fields:
            raise MerchantAuthError("malformed")
        fields[name] = value[1:-1]
    return fields


def verify_merchant_request(*, authorization: str, method: str, url_path_with_query: str, body: str | bytes,
                            merchant_keys: Mapping[str, RSAPublicKey] | None = None,
                            mchid: str | None = SANDBOX_MCHID, now: float | None = None,
                            max_skew: int = 300) -> dict[str, str]:
    """Check a merchant's APIv3 Authorization header as WeChat does: known serial_no, matching mchid,
    timestamp within `max_skew` seconds, RSA-SHA256 over "METHOD\\nurl\\ntimestamp\\nnonce\\nbody\\n".
    Returns the header's fields."""
    fields = parse_authorization(authorization)
    required = ("mchid", "nonce_str", "signature", "timestamp", "serial_no")
    if any(not fields.get(name) for name in required):
        raise MerchantAuthError("malformed")
    keys = {SANDBOX_MERCHANT_SERIAL: merchant_public_key()} if merchant_keys is None else merchant_keys
    key = keys.get(fields["serial_no"])
    if key is None:
        raise MerchantAuthError("unknown_serial")
    if mchid is not None and not hmac.compare_digest(fields["mchid"].encode(), mchid.encode()):
        raise MerchantAuthError("wrong_mchid")
    if not fields["timestamp"].isdigit() or len(fields["timestamp"]) > 12:
        raise MerchantAuthError("bad_timestamp")
    now = time.time() if now is None else now
    if abs(now - int(fields["timestamp"])) > max_skew:
        raise MerchantAuthError("stale_timestamp")
    body_bytes = body if isinstance(body, bytes) else body.encode()
    message = (f"{method.upper()}\n{url_path_with_query}\n{fields['timestamp']}\n{fields['nonce_str']}\n".encode()
               + body_bytes + b"\n")
    try:
        signature = base64.b64decode(fields["signature"], validate=True)
        key.verify(signature, message, asym_padding.PKCS1v15(), hashes.SHA256())
    except (ValueError, InvalidSignature):
        raise MerchantAuthError("bad_signature") from None
    return fields


# -- v2 (XML) -----------------------------------------------------------------------------------

def v2_signature(params: Mapping[str, Any], key: str, sign_type: str = "MD5") -> str:
    """WeChat's v2 sign: sorted non-empty k=v (no `sign`), "&key=KEY", MD5 or HMAC-SHA256, upper hex."""
    text = "&".join(f"{k}={params[k]}" for k in sorted(params) if k != "sign" and params[k] not in (None, ""))
    data = f"{text}&key={key}".encode()
    if sign_type == "HMAC-SHA256":
        return hmac.new(key.encode(), data, hashlib.sha256).hexdigest().upper()
    if sign_type == "MD5":
        return hashlib.md5(data).hexdigest().upper()
    raise ValueError(f"unsupported sign_type {sign_type!r}")


def _cdata(value: Any) -> str:
    return "<![CDATA[" + str(value).replace("]]>", "]]]]><![CDATA[>") + "]]>"


def to_xml(params: Mapping[str, Any], root: str = "xml") -> bytes:
    """Render flat params as WeChat does, each value in CDATA."""
    inner = "".join(f"<{k}>{_cdata(v)}</{k}>" for k, v in params.items() if v is not None)
    return f"<{root}>{inner}</{root}>".encode()


def v2_payment_params(*, appid: str, openid: str, transaction_id: str, out_trade_no: str, total_fee: int,
                      cash_fee: int | None = None, mch_id: str = SANDBOX_MCHID, time_end: str | None = None,
                      attach: str | None = None, nonce_str: str | None = None) -> dict[str, Any]:
    """The fields of a v2 payment result notification (unsigned)."""
    return {
        "return_code": "SUCCESS",
        "result_code": "SUCCESS",
        "appid": appid,
        "mch_id": mch_id,
        "nonce_str": nonce_str or random_nonce(),
        "openid": openid,
        "is_subscribe": "N",
        "trade_type": "JSAPI",
        "bank_type": "OTHERS",
        "total_fee": total_fee,
        "cash_fee": total_fee if cash_fee is None else cash_fee,
        "fee_type": "CNY",
        "transaction_id": transaction_id,
        "out_trade_no": out_trade_no,
        "attach": attach,
        "time_end": time_end or datetime.now(CHINA_TZ).strftime("%Y%m%d%H%M%S"),
    }


def build_v2_payment_xml(params: Mapping[str, Any], key: str = SANDBOX_V2_KEY, sign_type: str = "MD5") -> bytes:
    """A signed v2 payment notification body; HMAC-SHA256 signs also name their sign_type."""
    params = {k: v for k, v in params.items() if v is not None and k != "sign"}
    if sign_type != "MD5":
        params["sign_type"] = sign_type
    params["sign"] = v2_signature(params, key, sign_type)
    return to_xml(params)


def encrypt_v2_req_info(inner: Mapping[str, Any], key: str) -> str:
    """Encrypt refund details as WeChat does: `<root>` XML, PKCS7, AES-256-ECB keyed with the
    lower-case md5 hex of the v2 key, base64."""
    aes_key = hashlib.md5(key.encode()).hexdigest().lower().encode()
    padder = padding.PKCS7(128).padder()
    padded = padder.update(to_xml(inner, root="root")) + padder.finalize()
    encryptor = Cipher(algorithms.AES(aes_key), modes.ECB()).encryptor()
    return base64.b64encode(encryptor.update(padded) + encryptor.finalize()).decode()


def v2_refund_params(*, transaction_id: str, out_trade_no: str, refund_id: str, out_refund_no: str,
                     total_fee: int, refund_fee: int, success_time: str | None = None) -> dict[str, Any]:
    """The refund details that go, encrypted, into a v2 refund notification's req_info."""
    return {
        "transaction_id": transaction_id,
        "out_trade_no": out_trade_no,
        "refund_id": refund_id,
        "out_refund_no": out_refund_no,
        "total_fee": total_fee,
        "settlement_total_fee": total_fee,
        "refund_fee": refund_fee,
        "settlement_refund_fee": refund_fee,
        "refund_status": "SUCCESS",
        "success_time": success_time or datetime.now(CHINA_TZ).strftime("%Y-%m-%d %H:%M:%S"),
        "refund_recv_accout": "支付用户零钱",
        "refund_account": "REFUND_SOURCE_RECHARGE_FUNDS",
        "refund_request_source": "API",
    }


def build_v2_refund_xml(refund_params: Mapping[str, Any], key: str = SANDBOX_V2_KEY, *, appid: str,
                        mch_id: str = SANDBOX_MCHID, nonce_str: str | None = None) -> bytes:
    """A v2 refund notification body. WeChat does not sign these: req_info's encryption is the proof."""
    return to_xml({
        "return_code": "SUCCESS",
        "appid": appid,
        "mch_id": mch_id,
        "nonce_str": nonce_str or random_nonce(),
        "req_info": encrypt_v2_req_info(refund_params, key),
    })
