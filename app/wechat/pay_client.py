"""Outbound WeChat Pay APIv3 calls, signed with the merchant key: JSAPI orders for points + cash
items, closing them, and refunds.

One shared aiohttp session; the RSA signing is CPU work, so it runs in a thread.
"""
from __future__ import annotations

import asyncio
import json
import secrets
import time
from datetime import datetime
from typing import Any
from urllib.parse import quote

import aiohttp
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from app.wechat.pay import jsapi_pay_params, sign_request

JSAPI_PATH = "/v3/pay/transactions/jsapi"
CLOSE_PATH = "/v3/pay/transactions/out-trade-no/{out_trade_no}/close"
REFUND_PATH = "/v3/refund/domestic/refunds"
TRADEBILL_PATH = "/v3/bill/tradebill"


class PayError(Exception):
    """WeChat Pay refused the request (HTTP 4xx); `code` is its error code (PARAM_ERROR, SIGN_ERROR...)."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{status} {code}: {message}")
        self.status, self.code, self.message = status, code, message


class PayUnavailable(PayError):
    """WeChat Pay could not be reached: network error, timeout or HTTP 5xx."""

    def __init__(self, message: str) -> None:
        super().__init__(503, "unavailable", message)


class PayClient:
    """The merchant's side of APIv3: every request carries an Authorization header signed with
    the merchant private key under `serial_no` (its certificate serial)."""

    def __init__(self, *, session: aiohttp.ClientSession, base_url: str, mchid: str, appid: str,
                 serial_no: str, private_key: RSAPrivateKey, timeout: float = 5.0) -> None:
        self._session = session
        self._base_url = base_url.rstrip("/")
        self.mchid = mchid
        self.appid = appid
        self._serial_no = serial_no
        self._private_key = private_key
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    async def create_jsapi_order(self, *, description: str, out_trade_no: str, amount_fen: int,
                                 openid: str, notify_url: str, time_expire: datetime | None = None) -> str:
        """Place a JSAPI order (统一下单) for `amount_fen` paid by `openid`, payable until
        `time_expire` (RFC 3339); returns its prepay_id."""
        body = {
            "appid": self.appid, "mchid": self.mchid, "description": description[:127],
            "out_trade_no": out_trade_no, "notify_url": notify_url,
            "amount": {"total": int(amount_fen), "currency": "CNY"},
            "payer": {"openid": openid},
        }
        if time_expire is not None:
            body["time_expire"] = time_expire.isoformat(timespec="seconds")
        answer = await self._post(JSAPI_PATH, body)
        prepay_id = answer.get("prepay_id")
        if not isinstance(prepay_id, str) or not prepay_id:
            raise PayError(502, "bad_reply", "no prepay_id in WeChat Pay's answer")
        return prepay_id

    async def close_order(self, *, out_trade_no: str) -> None:
        """Close an unpaid order (关闭订单): WeChat then refuses to take its payment. PayError
        `ORDERPAID` when it was paid first."""
        await self._post(CLOSE_PATH.format(out_trade_no=quote(out_trade_no, safe="")), {"mchid": self.mchid})

    async def refund(self, *, transaction_id: str, out_refund_no: str, refund_fen: int, total_fen: int,
                     reason: str = "") -> dict[str, Any]:
        """Ask for a refund (申请退款) of `refund_fen` of a `total_fen` payment. The same
        out_refund_no again is the same refund (WeChat's idempotency), so a retry is safe.
        Returns WeChat's answer (refund_id, status); REFUND.SUCCESS comes as a notification."""
        body: dict[str, Any] = {"transaction_id": transaction_id, "out_refund_no": out_refund_no,
                                "amount": {"refund": int(refund_fen), "total": int(total_fen), "currency": "CNY"}}
        if reason:
            body["reason"] = reason[:80]
        answer = await self._post(REFUND_PATH, body)
        if not isinstance(answer.get("refund_id"), str):
            raise PayError(502, "bad_reply", "no refund_id in WeChat Pay's answer")
        return answer

    async def download_trade_bill(self, *, bill_date: str, into: Any) -> int:
        """申请交易账单 for `bill_date` (YYYY-MM-DD, every trade: bill_type ALL), then stream its file
        into the binary file object `into` (64 KiB at a time, never whole in memory); returns bytes.
        A day without trades is PayError NO_STATEMENT_EXIST."""
        path = f"{TRADEBILL_PATH}?bill_date={quote(bill_date)}&bill_type=ALL"
        answer = await self._get_json(path)
        url = answer.get("download_url")
        if not isinstance(url, str) or not url:
            raise PayError(502, "bad_reply", "no download_url in WeChat Pay's answer")
        # The download is signed too, over the URL's own path and query.
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        signed = parts.path + (f"?{parts.query}" if parts.query else "")
        headers = {"Authorization": await self._authorization("GET", signed, "")}
        size = 0
        try:
            async with self._session.get(url, headers=headers,
                                         timeout=aiohttp.ClientTimeout(total=None, sock_read=60)) as resp:
                if resp.status >= 400:
                    raise PayError(resp.status, "download_failed", f"HTTP {resp.status}")
                async for chunk in resp.content.iter_chunked(65536):
                    into.write(chunk)
                    size += len(chunk)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise PayUnavailable(f"WeChat Pay unreachable: {type(exc).__name__}") from None
        return size

    async def _authorization(self, method: str, path: str, body: str) -> str:
        return await asyncio.to_thread(
            sign_request, method=method, url_path_with_query=path, body=body, mchid=self.mchid,
            serial_no=self._serial_no, private_key=self._private_key,
            timestamp=int(time.time()), nonce=secrets.token_hex(16))

    async def _get_json(self, path: str) -> dict[str, Any]:
        headers = {"Authorization": await self._authorization("GET", path, ""), "Accept": "application/json"}
        try:
            async with self._session.get(self._base_url + path, headers=headers, timeout=self._timeout) as resp:
                raw, status = await resp.read(), resp.status
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise PayUnavailable(f"WeChat Pay unreachable: {type(exc).__name__}") from None
        return _answer(raw, status)

    async def jsapi_params(self, *, prepay_id: str, timestamp: int | None = None) -> dict[str, str]:
        """The params the mini-program passes to wx.requestPayment for this prepay_id."""
        return await asyncio.to_thread(
            jsapi_pay_params, appid=self.appid, prepay_id=prepay_id, private_key=self._private_key,
            timestamp=int(time.time()) if timestamp is None else timestamp,
            nonce=secrets.token_hex(16))

    async def _post(self, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        # The signature covers the exact bytes sent, so serialise once and send those.
        body = json.dumps(payload, ensure_ascii=False, separators=(",", ":"))
        authorization = await asyncio.to_thread(
            sign_request, method="POST", url_path_with_query=path, body=body, mchid=self.mchid,
            serial_no=self._serial_no, private_key=self._private_key,
            timestamp=int(time.time()), nonce=secrets.token_hex(16))
        headers = {"Authorization": authorization, "Content-Type": "application/json",
                   "Accept": "application/json"}
        try:
            async with self._session.post(self._base_url + path, data=body.encode(), headers=headers,
                                          timeout=self._timeout) as resp:
                raw = await resp.read()
                status = resp.status
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise PayUnavailable(f"WeChat Pay unreachable: {type(exc).__name__}") from None
        return _answer(raw, status)


def _answer(raw: bytes, status: int) -> dict[str, Any]:
    """WeChat Pay's JSON answer: 5xx is PayUnavailable (retry later), 4xx PayError with its
    code and message; an unreadable or non-object body reads as {}."""
    if status >= 500:
        raise PayUnavailable(f"WeChat Pay answered HTTP {status}")
    try:
        answer = json.loads(raw) if raw else {}
    except (ValueError, UnicodeDecodeError):
        answer = {}
    if not isinstance(answer, dict):
        answer = {}
    if status >= 400:
        raise PayError(status, str(answer.get("code") or "error"), str(answer.get("message") or ""))
    return answer
