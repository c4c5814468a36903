"""Benchmark every hot path in one run, with one client, beside its references.

The real server (`python -m app serve`, WORKERS processes) on a fresh PostgreSQL database and a
Redis db of its own, WeChat simulated by this script (code2session) and signed like WeChat
(Pay APIv3 notifications, official-account pushes). For each path: closed loop at 64
connections (req/s, p50, p99) and, for check-in, the open loop at a fixed offered rate (latency
from each request's scheduled start). Then the same client against a bare aiohttp endpoint, and
pgbench (C client, 64 connections) on the one-statement check-in shape (a CTE: two INSERTs and
an UPDATE) — the durable-write ceiling of this machine — with the ratios.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/test REDIS_URL=redis://127.0.0.1:6379/0 \\
        .venv/bin/python -m bench.hotpaths --members 6000 --workers 2 [--profile]

`--profile` samples one server worker with py-spy during the check-in closed loop and prints the
top 15 frames (own time, and with callees).
"""
from __future__ import annotations

import argparse
import asyncio
import collections
import hashlib
import json
import os
import re
import secrets
import shutil
import signal
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web

from bench import harness
from miniprogram_stub.simulator import create_simulator_app
from miniprogram_stub.simulator import pay as sim_pay

APPID, SECRET = "wx-bench-mp", "bench-secret"
OA_APPID, OA_TOKEN = "wx-bench-oa", "bench-oa-token"


# The check-in's shape for pgbench: a check-in row, a ledger entry, the balance UPDATE, in one
# statement (what one check-in costs PostgreSQL at least).
PGBENCH_SETUP = """
CREATE TABLE pgb_member (id int PRIMARY KEY, points bigint NOT NULL DEFAULT 0,
                         growth bigint NOT NULL DEFAULT 0, streak int NOT NULL DEFAULT 0);
CREATE TABLE pgb_checkin (id bigserial PRIMARY KEY, member_id int NOT NULL, day bigint NOT NULL,
                          points int NOT NULL, UNIQUE (member_id, day));
CREATE TABLE pgb_ledger (id bigserial PRIMARY KEY, member_id int NOT NULL, delta bigint NOT NULL,
                         key text NOT NULL UNIQUE);
CREATE SEQUENCE pgb_day;
INSERT INTO pgb_member (id) SELECT generate_series(1, 100000);
"""
PGBENCH_CTE = """\\set mid random(1, 100000)
WITH c AS (INSERT INTO pgb_checkin (member_id, day, points) VALUES (:mid, nextval('pgb_day'), 5) RETURNING id),
u AS (UPDATE pgb_member SET points = points + 5, growth = growth + 5, streak = streak + 1 WHERE id = :mid RETURNING points),
e AS (INSERT INTO pgb_ledger (member_id, delta, key) SELECT :mid, 5, 'k' || c.id FROM c RETURNING id)
SELECT u.points FROM u, e;
"""


@dataclass
class Figure:
    label: str
    requests: int
    statuses: dict
    rps: float
    p50: float
    p99: float
    cores: str = ""

    def row(self) -> str:
        return (f"{self.label:<44}{self.rps:>9.0f}{self.p50:>9.1f}{self.p99:>9.1f}  {self.cores:<24}"
                f"{self.statuses}")


_TICK = os.sysconf("SC_CLK_TCK")


def _cpu_seconds(pid: int) -> float:
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime


class Cores:
    """CPU used during a phase, in cores (CPU seconds / wall seconds): the server's processes,
    PostgreSQL's backends of the bench database, and this client: what saturates."""

    def __init__(self, server_pid: int, database: str) -> None:
        self.server_pid, self.database = server_pid, database

    def _pids(self) -> tuple[list[int], list[int]]:
        server = [self.server_pid, *children(self.server_pid)]
        pg = []
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    cmd = (entry / "cmdline").read_bytes()
                except OSError:
                    continue
                if cmd.startswith(b"postgres:") and self.database.encode() in cmd:
                    pg.append(int(entry.name))
        return server, pg

    def start(self) -> None:
        self.began = time.perf_counter()
        server, pg = self._pids()
        self.before = ({p: _cpu_seconds(p) for p in server}, {p: _cpu_seconds(p) for p in pg},
                       sum(os.times()[:2]))

    def stop(self) -> str:
        wall = time.perf_counter() - self.began
        server, pg = self._pids()
        s = sum(_cpu_seconds(p) - self.before[0].get(p, 0.0) for p in server)
        d = sum(_cpu_seconds(p) - self.before[1].get(p, 0.0) for p in pg)
        c = sum(os.times()[:2]) - self.before[2]
        return f"srv {s / wall:.2f} pg {d / wall:.2f} cli {c / wall:.2f}"


async def run_load(label: str, requests: list[harness.Request], concurrency: int, rate: float = 0,
                   keep=None, cores: Cores | None = None) -> Figure:
    """Closed loop (`concurrency` connections, each sends its next request when the last one
    answered) or, with `rate`, open loop: request i is due at i / rate s and its latency counts
    from then (queueing included), over at most `concurrency` connections."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    queue = iter(requests)
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=concurrency)) as session:
        async def send(req: harness.Request, since: float) -> None:
            async with session.request(req.method, req.url, data=req.body, headers=req.headers) as resp:
                body = await resp.read()
                statuses[resp.status] = statuses.get(resp.status, 0) + 1
                if keep is not None and resp.status == 200:
                    keep(body)
            latencies.append(time.perf_counter() - since)

        async def worker() -> None:
            for req in queue:
                await send(req, time.perf_counter())

        async def scheduled(i: int, req: harness.Request) -> None:
            due = began + i / rate
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            await send(req, due)

        if cores is not None:
            cores.start()
        began = time.perf_counter()
        if rate:
            await asyncio.gather(*(scheduled(i, r) for i, r in enumerate(requests)))
        else:
            await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
        used = cores.stop() if cores is not None else ""
    latencies.sort()
    n = len(latencies) or 1
    return Figure(label, len(latencies), statuses, len(latencies) / elapsed,
                  latencies[n // 2] * 1000 if latencies else 0.0,
                  latencies[min(n - 1, int(n * 0.99))] * 1000 if latencies else 0.0, used)


def oa_push(base: str, openid: str, n: int, now: int) -> harness.Request:
    nonce = secrets.token_hex(8)
    sig = hashlib.sha1("".join(sorted([OA_TOKEN, str(now), nonce])).encode()).hexdigest()
    body = (f"<xml><ToUserName><![CDATA[gh_bench]]></ToUserName><FromUserName><![CDATA[{openid}]]>"
            f"</FromUserName><CreateTime>{now}</CreateTime><MsgType><![CDATA[text]]></MsgType>"
            f"<Content><![CDATA[你好]]></Content><MsgId>{10**15 + n}</MsgId></xml>").encode()
    return harness.Request("POST", f"{base}/wechat/oa?signature={sig}&timestamp={now}&nonce={nonce}",
                           {"Content-Type": "text/xml"}, body)


def pay_notes(base: str, openids: list[str], count: int, prefix: str) -> list[harness.Request]:
    now = int(time.time())
    out = []
    for i in range(count):
        resource = sim_pay.transaction_resource(
            openid=openids[i % len(openids)], transaction_id=f"42{prefix}{i:010d}",
            out_trade_no=f"b{prefix}{i}", total_fen=100 * (1 + i % 300), appid=APPID)
        headers, body = sim_pay.build_v3_notification(event_type="TRANSACTION.SUCCESS", resource=resource,
                                                      timestamp=now)
        out.append(harness.Request("POST", f"{base}/wechat/pay/notify", headers, body))
    return out


def children(pid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[1]) == pid:
                found.append(int(entry.name))
    return found


async def profile(pid: int, seconds: float, out: Path) -> asyncio.subprocess.Process | None:
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        print("py-spy not installed (pip install py-spy): no profile", file=sys.stderr)
        return None
    return await asyncio.create_subprocess_exec(
        spy, "record", "-p", str(pid), "-d", str(int(seconds)), "-r", "200", "-f", "raw", "-o", str(out),
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL)


# Leaf frames where a worker waits rather than works: the event loop polling, idle pool threads.
_IDLE = ("_worker (concurrent/futures/thread.py", "run_app (aiohttp/web.py", "select (selectors.py",
         "run_forever (asyncio/base_events.py")


def top_frames(raw: Path, n: int = 15) -> str:
    """py-spy's raw stacks as the top `n` frames by own time and with callees, idle excluded."""
    own, total, busy = collections.Counter(), collections.Counter(), 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        frames = [re.sub(r" \(/.*?/(site-packages|python3\.\d+)/", " (", f) for f in stack.split(";")]
        frames = [re.sub(r" \(/work/wt/[^/]+/", " (", f) for f in frames]
        if frames[-1].startswith(_IDLE):
            continue
        busy += int(count)
        own[frames[-1]] += int(count)
        for f in set(frames):
            total[f] += int(count)
    if not busy:
        return "py-spy: no busy samples"
    lines = [f"py-spy, one server worker, {busy} busy samples at 200 Hz (idle excluded)", "", "own time:"]
    lines += [f"  {c / busy:6.1%}  {f}" for f, c in own.most_common(n)]
    lines += ["", "with callees (frames in every sample left out):"]
    inclusive = [(f, c) for f, c in total.most_common() if c < 0.97 * busy][:n]
    lines += [f"  {c / busy:6.1%}  {f}" for f, c in inclusive]
    return "\n".join(lines)


async def pgbench(base_db: str, seconds: int, clients: int) -> float | None:
    binary = shutil.which("pgbench") or "/usr/lib/postgresql/15/bin/pgbench"
    if not Path(binary).exists():
        return None
    async with harness.fresh_database(base_db, "bench_pgb") as url:
        async with harness.pg_connection(url) as conn:
            await conn.execute(PGBENCH_SETUP)
        with tempfile.NamedTemporaryFile("w", suffix=".sql", delete=False) as f:
            f.write(PGBENCH_CTE)
        try:
            proc = await asyncio.create_subprocess_exec(
                binary, "-n", "-M", "prepared", "-c", str(clients), "-j", "2", "-T", str(seconds),
                "-f", f.name, url, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await proc.communicate()
        finally:
            os.unlink(f.name)
    found = re.search(rb"tps = ([\d.]+)", out)
    if not found:
        print(err.decode(errors="replace")[-500:], file=sys.stderr)
        return None
    return float(found.group(1))


async def main(args: argparse.Namespace) -> int:
    base_db, base_redis = harness.services_from_env()
    sim = create_simulator_app(appid=APPID, secret=SECRET)
    sim_runner = web.AppRunner(sim, access_log=None)
    await sim_runner.setup()
    sim_port = harness.free_port()
    await web.TCPSite(sim_runner, "127.0.0.1", sim_port).start()
    figures: list[Figure] = []
    report = ""
    with tempfile.TemporaryDirectory() as tmp:
        key_path = Path(tmp) / "platform.pem"
        from cryptography.hazmat.primitives import serialization

        key_path.write_bytes(sim_pay.platform_public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
        try:
            async with harness.fresh_database(base_db, "bench_hot") as database_url, \
                    harness.claimed_redis(base_redis) as redis_url:
                env = {k: v for k, v in os.environ.items() if not k.startswith("WECHAT_")}
                env.update(DATABASE_URL=database_url, REDIS_URL=redis_url, WORKERS=str(args.workers),
                           LOG_LEVEL="WARNING", SCHEDULER_IN_SERVE="0",
                           WECHAT_MP_APPID=APPID, WECHAT_MP_SECRET=SECRET,
                           WECHAT_API_BASE=f"http://127.0.0.1:{sim_port}",
                           WECHAT_OA_APPID=OA_APPID, WECHAT_OA_SECRET="bench", WECHAT_OA_TOKEN=OA_TOKEN,
                           WECHAT_PAY_MCHID=sim_pay.SANDBOX_MCHID,
                           WECHAT_PAY_APIV3_KEY=sim_pay.SANDBOX_APIV3_KEY.decode(),
                           WECHAT_PAY_PUBLIC_KEY_ID=sim_pay.SANDBOX_PUBLIC_KEY_ID,
                           WECHAT_PAY_PUBLIC_KEY=str(key_path))
                await harness.migrate(env)
                from bench.checkin import set_loose_limits

                total = args.members + args.open_requests
                await set_loose_limits(database_url, total)
                report = await measure(env, args, figures, total, Path(tmp),
                                       database_url.rsplit("/", 1)[1])
        finally:
            await sim_runner.cleanup()
    ceiling = await pgbench(base_db, args.pgbench_seconds, args.concurrency)

    print(f"\nhot paths bench: {args.members} members, {args.concurrency} connections, "
          f"{args.workers} server worker(s), {os.cpu_count()} CPUs, PostgreSQL + Redis\n")
    print(f"{'path':<44}{'req/s':>9}{'p50 ms':>9}{'p99 ms':>9}  {'CPU cores used':<24}statuses")
    for f in figures:
        print(f.row())
    bare = next(f for f in figures if f.label.startswith("bare"))
    print(f"\npgbench, 64 clients, the check-in CTE (2 INSERT + UPDATE, one statement): "
          + (f"{ceiling:,.0f} tx/s" if ceiling else "not run (no pgbench)"))
    print(f"\n{'path':<44}{'/ bare':>9}{'/ pgbench':>10}  target")
    targets = {"POST /mp/login (new members)": 500, "POST /mp/checkin": 1000, "GET /mp/me": 2000,
               "POST /wechat/pay/notify (APIv3, distinct)": 1000, "POST /wechat/oa (text)": 1000}
    for f in figures:
        if f.label in targets:
            t = targets[f.label]
            print(f"{f.label:<44}{f.rps / bare.rps:>9.2f}{(f.rps / ceiling if ceiling else 0):>10.2f}"
                  f"  >= {t}/s: {'met' if f.rps >= t else 'NOT met'}")
    opened = next((f for f in figures if f.label.startswith("POST /mp/checkin open")), None)
    if opened:
        print(f"{opened.label:<44}{'':>19}  p99 <= 30 ms: {'met' if opened.p99 <= 30 else 'NOT met'}")
    if report:
        print("\n" + report)
    return 0


async def measure(env: dict, args, figures: list[Figure], total: int, tmp: Path, database: str) -> str:
    port, bare_port = harness.free_port(), harness.free_port()
    server = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "app", "serve", "--no-migrate", env={**env, "PORT": str(port), "HOST": "127.0.0.1"},
        stdout=asyncio.subprocess.DEVNULL, start_new_session=True)
    bare_proc = await asyncio.create_subprocess_exec(sys.executable, "-c", harness.BARE_SERVER, str(bare_port))
    base, bare = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{bare_port}"
    report = ""
    try:
        await harness.wait_up(f"{base}/healthz", server)
        await harness.wait_up(f"{bare}/", bare_proc)
        c = args.concurrency
        cores = Cores(server.pid, database)
        tokens: list[str] = []
        logins = [harness.Request("POST", f"{base}/mp/login", {"Content-Type": "application/json"},
                                  json.dumps({"code": f"sim:o-bench-{i}"}).encode()) for i in range(total)]
        figures.append(await run_load("POST /mp/login (new members)", logins, c,
                                      keep=lambda b: tokens.append(json.loads(b)["token"]), cores=cores))
        closed, opened = tokens[:args.members], tokens[args.members:]

        def auth(t: str, method: str, path: str) -> harness.Request:
            return harness.Request(method, f"{base}{path}", {"Authorization": f"Bearer {t}"})

        figures.append(await run_load("POST /mp/login (returning)", logins[:min(3000, total)], c, cores=cores))
        spy = None
        raw = tmp / "checkin.raw"
        if args.profile:
            workers = children(server.pid)
            if workers:
                spy = await profile(workers[0], args.profile_seconds, raw)
        figures.append(await run_load("POST /mp/checkin", [auth(t, "POST", "/mp/checkin") for t in closed], c,
                                      cores=cores))
        if spy is not None:
            await spy.wait()
            if raw.exists():
                report = top_frames(raw)
        figures.append(await run_load(f"POST /mp/checkin open loop {args.rate:g}/s",
                                      [auth(t, "POST", "/mp/checkin") for t in opened], c, rate=args.rate,
                                      cores=cores))
        figures.append(await run_load("POST /mp/checkin (409 again)",
                                      [auth(t, "POST", "/mp/checkin") for t in closed[:3000]], c, cores=cores))
        me = [auth(closed[i % len(closed)], "GET", "/mp/me") for i in range(args.reads)]
        figures.append(await run_load("GET /mp/me", me, c, cores=cores))
        openids = [f"o-bench-{i}" for i in range(total)]
        loop = asyncio.get_running_loop()
        notes = await loop.run_in_executor(None, pay_notes, base, openids, args.payments, "r")
        figures.append(await run_load("POST /wechat/pay/notify (APIv3, distinct)", notes, c, cores=cores))
        now = int(time.time())
        pushes = [oa_push(base, f"o-oa-{i % 1000}", i, now) for i in range(args.pushes)]
        figures.append(await run_load("POST /wechat/oa (text)", pushes, c, cores=cores))
        bare_reqs = [harness.Request("POST", f"{bare}/mp/checkin", {"Authorization": f"Bearer {t}"})
                     for t in closed]
        await run_load("warm-up", bare_reqs[:500], c)
        figures.append(await run_load("bare aiohttp JSON", bare_reqs, c, cores=Cores(bare_proc.pid, database)))
    finally:
        if server.returncode is None:
            os.killpg(server.pid, signal.SIGTERM)
        if bare_proc.returncode is None:
            bare_proc.terminate()
        for proc in (server, bare_proc):
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except asyncio.TimeoutError:
                proc.kill()
    return report


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m bench.hotpaths", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--members", type=int, default=6000,
                        help="members for the closed-loop check-ins (default: %(default)s)")
    parser.add_argument("--open-requests", type=int, default=2000,
                        help="more members, checked in open loop (default: %(default)s)")
    parser.add_argument("--rate", type=float, default=400, help="open loop offered rate/s (default: %(default)s)")
    parser.add_argument("--reads", type=int, default=10000, help="GET /mp/me requests (default: %(default)s)")
    parser.add_argument("--payments", type=int, default=4000, help="pay notifications (default: %(default)s)")
    parser.add_argument("--pushes", type=int, default=6000, help="OA text pushes (default: %(default)s)")
    parser.add_argument("--concurrency", type=int, default=64, help="connections (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=2, help="server processes, WORKERS (default: %(default)s)")
    parser.add_argument("--pgbench-seconds", type=int, default=10, help="pgbench duration (default: %(default)s)")
    parser.add_argument("--profile", action="store_true", help="py-spy one worker during the check-ins")
    parser.add_argument("--profile-seconds", type=float, default=4, help="(default: %(default)s)")
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(main(parse_args())))
