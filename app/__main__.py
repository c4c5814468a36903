"""The command line: serve, migrate, worker, jobs list|run, ledger verify, card reconcile, oa menu push.

Every command reads the environment of CONTRACT.md (DATABASE_URL, REDIS_URL, ...).
"""
from __future__ import annotations

import argparse
import asyncio
import logging
import multiprocessing
import os
import secrets
import signal
import sys
from datetime import date

from app import logs
from app.config import Settings

log = logging.getLogger("app")

EPILOG = """environment: DATABASE_URL (default sqlite under data/), REDIS_URL (default: an
embedded redis under data/), HOST, PORT, WORKERS, APP_TIMEZONE, WECHAT_* (unset: sandbox mode),
ADMIN_TOKEN. See README.md and CONTRACT.md."""


async def _migrate(settings: Settings, quiet: bool = False) -> None:
    from tortoise import Tortoise
    from tortoise.migrations.api.migrate import migrate

    from app.db import tortoise_config

    if settings.database_url.startswith("sqlite://"):
        settings.data_dir.mkdir(parents=True, exist_ok=True)

    def progress(event: str, app_label: str, name: str) -> None:
        if not quiet and event.endswith("start"):
            print(f"  applying {app_label}.{name}", flush=True)

    try:
        await migrate(config=tortoise_config(settings.database_url), progress=progress)
    finally:
        await Tortoise.close_connections()
    if not quiet:
        print("database is up to date", flush=True)


def cmd_migrate(settings: Settings, args) -> int:
    asyncio.run(_migrate(settings))
    return 0


def _event_loop() -> asyncio.AbstractEventLoop:
    """uvloop for `serve` and `worker` (libuv's loop: less CPU per request than asyncio's)."""
    import uvloop

    return uvloop.new_event_loop()


def _serve_one(settings: Settings, reuse_port: bool) -> None:
    from aiohttp import web

    from app.main import create_app

    logs.setup(settings.log_level)
    web.run_app(create_app(settings), host=settings.host, port=settings.port,
                reuse_port=reuse_port, access_log=None, print=None, loop=_event_loop())


def sandbox_admin_token(settings: Settings) -> str:
    """`make run` in sandbox mode with ADMIN_TOKEN unset: a token of its own, kept (owner-only)
    in DATA_DIR/admin_token so a restart keeps the dashboard link working."""
    path = settings.data_dir / "admin_token"
    if path.exists():
        token = path.read_text().strip()
        if token:
            return token
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(token + "\n")
    return token


def cmd_serve(settings: Settings, args) -> int:
    if args.migrate:
        asyncio.run(_migrate(settings, quiet=True))
    made_token = args.sandbox_admin_token and settings.sandbox and not settings.admin_token
    if made_token:
        settings = settings.with_(admin_token=sandbox_admin_token(settings))
    workers = settings.workers
    if workers > 1 and (settings.database_url.startswith("sqlite") or not settings.redis_url):
        print("WORKERS > 1 needs PostgreSQL (DATABASE_URL) and an external Redis (REDIS_URL)",
              file=sys.stderr)
        return 2
    mode = "sandbox (WeChat simulator in-process)" if settings.sandbox else f"WeChat at {settings.wechat_api_base}"
    print(f"serving on http://{settings.host}:{settings.port} with {workers} worker(s); {mode}\n"
          f"  database: {settings.database_url.split('@')[-1]}\n"
          f"  redis:    {settings.redis_url or 'embedded (data/)'}\n"
          f"  try:      curl http://{settings.host}:{settings.port}/healthz\n"
          f"            .venv/bin/python -m miniprogram_stub demo --base http://{settings.host}:{settings.port}",
          flush=True)
    dashboard = f"http://{settings.host}:{settings.port}/admin/"
    if made_token:
        print(f"  dashboard: {dashboard}#token={settings.admin_token}\n"
              f"             (a sandbox ADMIN_TOKEN, kept in {settings.data_dir / 'admin_token'})", flush=True)
    elif settings.admin_token:
        print(f"  dashboard: {dashboard} (sign in with ADMIN_TOKEN)", flush=True)
    else:
        print("  dashboard: off (ADMIN_TOKEN is unset: /admin answers 503)", flush=True)
    if settings.scheduler_in_serve:
        print("  jobs:      the scheduler and the outbox delivery run in this process", flush=True)
    if workers == 1:
        _serve_one(settings, reuse_port=False)
        return 0
    procs = [multiprocessing.Process(target=_serve_one, args=(settings, True), daemon=False)
             for _ in range(workers)]
    for p in procs:
        p.start()

    def stop(signum, frame):
        # A supervisor stops the parent: the workers must stop with it, not linger on the port.
        for p in procs:
            if p.is_alive():
                p.terminate()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    for p in procs:
        p.join()
    return 0


def cmd_worker(settings: Settings, args) -> int:
    from jobs.worker import run_worker

    logs.setup(settings.log_level)
    with asyncio.Runner(loop_factory=_event_loop) as runner:
        runner.run(run_worker(settings))
    return 0


def cmd_jobs_list(settings: Settings, args) -> int:
    from jobs.registry import JOBS, load_all

    load_all()
    for job in JOBS.values():
        when = " ".join(f"{k}={v}" for k, v in job.schedule.items())
        print(f"{job.name:28} {when:32} {job.help}")
    return 0


def cmd_jobs_run(settings: Settings, args) -> int:
    from jobs.worker import FutureDay, UnknownJob, run_job_once

    logs.setup("WARNING")
    try:
        today = date.fromisoformat(args.today) if args.today else None
    except ValueError:
        print(f"--today must be YYYY-MM-DD, not {args.today!r}", file=sys.stderr)
        return 2
    try:
        summary = asyncio.run(run_job_once(settings, args.name, today=today))
    except (UnknownJob, FutureDay) as exc:
        print(exc, file=sys.stderr)
        return 2
    queued, delivered = summary.pop("queued", 0), summary.pop("delivered", None)
    print(" ".join(f"{k}={v}" for k, v in summary.items()))
    if delivered is None:
        print(f"outbox: queued {queued}")
    elif delivered.get("locked"):
        print(f"outbox: queued {queued}; a running scheduler is delivering the outbox")
    else:
        print(f"outbox: queued {queued}; sent {delivered['sent']}, skipped {delivered['skipped']}, "
              f"retried {delivered['retried']}, failed {delivered['failed']}")
    return 0 if not summary.get("failed") else 1


def cmd_ledger_verify(settings: Settings, args) -> int:
    from tqdm import tqdm

    from app import ledger_check
    from app.db import orm

    async def run() -> int:
        async with orm(settings.database_url):
            count, low, high = await ledger_check.member_id_range()
            broken = 0
            with tqdm(total=count, unit="member", disable=args.quiet) as bar:
                async for seen, bad in ledger_check.scan(low=low, high=high):
                    bar.update(seen)
                    for item in bad:
                        broken += 1
                        tqdm.write(f"member {item.member_id}: balance {item.balance}, entries "
                                   f"{item.entries_sum}, unspent lots {item.remaining_sum}")
            print(f"checked {count} members: {broken} broken")
            wallets = await ledger_check.wallet_imbalances()
            for item in wallets:
                print(f"member {item.member_id}: wallet {item.kind} {item.balance} fen, entries "
                      f"{item.entries_sum}, unspent lots {item.remaining_sum}")
            print(f"checked their wallets: {len(wallets)} broken")
            return 1 if broken or wallets else 0

    return asyncio.run(run())


def cmd_card_reconcile(settings: Settings, args) -> int:
    from tqdm import tqdm

    from app import keys
    from app.domain import card
    from jobs.worker import started

    logs.setup("WARNING")

    async def run() -> int:
        async with started(settings) as app:
            wechat = app[keys.oa_wechat_key]
            holders = await card.card_holders()
            repaired = failed = 0
            with tqdm(total=holders, unit="card", disable=args.quiet, file=sys.stderr) as bar:
                async for seen, changed in card.reconcile(wechat=wechat):
                    bar.update(seen)
                    for item in changed:
                        if "error" in item:
                            failed += 1
                            tqdm.write(f"member {item['member_id']}: {item['error']}", file=sys.stderr)
                        else:
                            repaired += 1
                            tqdm.write(f"member {item['member_id']}: card {item['card']} -> {item['points']}")
            print(f"checked {holders} cards: {repaired} re-pushed, {failed} failed")
            return 1 if failed else 0

    return asyncio.run(run())


def cmd_oa_menu_push(settings: Settings, args) -> int:
    from app.oa_menu import push_menu

    return asyncio.run(push_menu(settings, args.file))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m app", description=__doc__, epilog=EPILOG,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("serve", help="serve HTTP on HOST:PORT (WORKERS processes)", epilog=EPILOG)
    p.add_argument("--no-migrate", dest="migrate", action="store_false",
                   help="do not apply pending migrations first")
    p.add_argument("--sandbox-admin-token", action="store_true",
                   help="in sandbox mode with ADMIN_TOKEN unset, make an admin token (kept in "
                        "DATA_DIR/admin_token) and print the dashboard URL with it (make run)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("migrate", help="apply the committed database migrations", epilog=EPILOG)
    p.set_defaults(func=cmd_migrate)

    p = sub.add_parser("worker", help="run the job scheduler (APScheduler, business timezone)",
                       epilog=EPILOG)
    p.set_defaults(func=cmd_worker)

    p = sub.add_parser("jobs", help="list the scheduled jobs or run one by hand", epilog=EPILOG)
    jobs = p.add_subparsers(dest="jobs_command", required=True, metavar="ACTION")
    q = jobs.add_parser("list", help="the jobs and when they run")
    q.set_defaults(func=cmd_jobs_list)
    q = jobs.add_parser("run", help="run one job once (idempotent: a re-run does nothing twice)",
                        description="Runs the job once, then delivers what it queued in the outbox "
                                    "(subscription messages, card pushes) and prints both: the job's "
                                    "summary, then `outbox: queued N; sent ...`.", epilog=EPILOG)
    q.add_argument("name", help="a job name from `jobs list`")
    q.add_argument("--today", metavar="YYYY-MM-DD",
                   help="the business day to run it for: today (default) or an earlier day; a later "
                        "day is refused (exit 2), as it would expire points and downgrade early")
    q.set_defaults(func=cmd_jobs_run)

    p = sub.add_parser("ledger", help="check the points ledger", epilog=EPILOG)
    ledger = p.add_subparsers(dest="ledger_command", required=True, metavar="ACTION")
    q = ledger.add_parser(
        "verify", help="prove every balance from the ledger; exit 1 when a member breaks it",
        description="For every member, in batches of SQL: the balance equals the sum of its ledger "
                    "entries, and (when not negative) the sum of its unspent lots; for each stored-value "
                    "wallet, principal and bonus each equal the sum of their entries and of their "
                    "unspent lots. Prints each member that breaks it and exits 1; exits 0 when all "
                    "hold.", epilog=EPILOG)
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    q.set_defaults(func=cmd_ledger_verify)

    p = sub.add_parser("card", help="the WeChat member card", epilog=EPILOG)
    card_cmd = p.add_subparsers(dest="card_command", required=True, metavar="ACTION")
    q = card_cmd.add_parser(
        "reconcile", help="re-push the balance of every member whose card shows other points",
        description="For every member holding a card: read the card's bonus from WeChat "
                    "(card/membercard/userinfo/get) and, where it differs from the member's points, "
                    "set it (card/membercard/updateuser with the absolute bonus). Prints each card "
                    "re-pushed and a summary; exits 1 when WeChat refused or failed one.", epilog=EPILOG)
    q.add_argument("--quiet", action="store_true", help="no progress bar")
    q.set_defaults(func=cmd_card_reconcile)

    p = sub.add_parser("oa", help="official account tools", epilog=EPILOG)
    oa = p.add_subparsers(dest="oa_command", required=True, metavar="ACTION")
    q = oa.add_parser("menu", help="the official account's menu")
    menu = q.add_subparsers(dest="menu_command", required=True, metavar="ACTION")
    r = menu.add_parser("push", help="create the menu from a JSON file (/cgi-bin/menu/create)",
                        description="Needs WECHAT_OA_APPID and WECHAT_OA_SECRET (sent to WECHAT_API_BASE). "
                        "In sandbox mode (no WECHAT_MP_APPID) a simulator is started for this one "
                        "call: a dry run that validates the file and prints what WeChat would get.")
    r.add_argument("--file", default="handlers/wechat/menu.json", help="menu JSON (default: %(default)s)")
    r.set_defaults(func=cmd_oa_menu_push)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = Settings.from_env()
    return args.func(settings, args)


if __name__ == "__main__":
    sys.exit(main())
