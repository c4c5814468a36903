"""`python -m miniprogram_stub pay|refund|demo|wecom`: drive a running server as WeChat and a member would.

The notifications are signed with the simulator's WeChat Pay platform test key, which the server
trusts in sandbox mode (no WECHAT_MP_APPID) or when WECHAT_PAY_PUBLIC_KEY points at
miniprogram_stub/simulator/keys/platform_public.pem.
"""
from __future__ import annotations

import argparse
import asyncio
import sys

from miniprogram_stub import client

EPILOG = "Start the server first: `.venv/bin/python -m app serve` (sandbox mode by default)."


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m miniprogram_stub", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=EPILOG)
    sub = parser.add_subparsers(dest="command", required=True)

    def common(p: argparse.ArgumentParser) -> None:
        p.add_argument("--base", default="http://127.0.0.1:8080",
                       help="the server's root URL (default: %(default)s)")

    p = sub.add_parser("pay", help="send a signed TRANSACTION.SUCCESS notification", epilog=EPILOG)
    p.add_argument("--openid", required=True, help="the payer's mini-program openid")
    p.add_argument("--amount", type=int, required=True, help="amount paid, in fen (12800 = ¥128)")
    p.add_argument("--transaction-id", help="WeChat's transaction id (default: a new random one)")
    p.add_argument("--appid", default=client.SANDBOX_APPID,
                   help="the mini-program appid in the notification (default: %(default)s)")
    common(p)

    p = sub.add_parser("refund", help="send a signed REFUND.SUCCESS notification", epilog=EPILOG)
    p.add_argument("--transaction-id", required=True, help="the refunded payment's transaction id")
    p.add_argument("--amount", type=int, required=True, help="amount refunded, in fen")
    p.add_argument("--total", type=int, help="the payment's total in fen (default: --amount)")
    p.add_argument("--refund-id", help="WeChat's refund id (default: a new random one)")
    common(p)

    p = sub.add_parser("demo", help="log in, activate the card, check in, pay ¥128 and show the member's view",
                       epilog=EPILOG)
    p.add_argument("--openid", help="the demo member's openid (default: a new one each run)")
    p.add_argument("--appid", default=client.SANDBOX_APPID,
                   help="the mini-program appid the server runs as (default: %(default)s)")
    common(p)

    p = sub.add_parser("wecom", help="企业微信: play a customer (`wecom add-contact --openid X`)", epilog=EPILOG)
    actions = p.add_subparsers(dest="action", required=True)
    q = actions.add_parser("add-contact", help="the member with this openid adds a steward in 企业微信",
                           epilog=EPILOG)
    q.add_argument("--openid", required=True, help="the member's mini-program openid")
    q.add_argument("--staff", default="steward-01", help="the staff userid added (default: %(default)s)")
    q.add_argument("--unionid", help="the member's unionid (default: u-<openid>)")
    common(q)
    return parser


async def _run(args: argparse.Namespace) -> int:
    if args.command == "demo":
        return await client.run_demo(base=args.base, openid=args.openid, appid=args.appid)
    if args.command == "wecom":
        from miniprogram_stub import wecom_customer

        added = await wecom_customer.add_contact(base=args.base, openid=args.openid, staff=args.staff,
                                                 unionid=args.unionid)
        print(f"member #{added.member_id} added {args.staff} as {added.external_userid}: "
              f"HTTP {added.status} {added.body}".rstrip())
        return 0 if added.status < 300 else 1
    if args.command == "pay":
        sent = await client.send_payment(base=args.base, openid=args.openid, amount_fen=args.amount,
                                         appid=args.appid, transaction_id=args.transaction_id)
        print(f"transaction {sent.id}: HTTP {sent.status} {sent.body}".rstrip())
    else:
        sent = await client.send_refund(base=args.base, transaction_id=args.transaction_id,
                                        amount_fen=args.amount, total_fen=args.total, refund_id=args.refund_id)
        print(f"refund {sent.id}: HTTP {sent.status} {sent.body}".rstrip())
    return 0 if sent.status < 300 else 1


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return asyncio.run(_run(args))
    except OSError as exc:
        print(f"could not reach {args.base}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
