"""What every bench shares: a fresh PostgreSQL database, a Redis db of its own, the real
server as a subprocess (`python -m app serve`), a bare aiohttp endpoint for the ratio, and a
closed-loop load generator with latency percentiles. Loopback only; every loop is bounded.
"""
from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import statistics
import sys
import time
from dataclasses import dataclass
from typing import AsyncIterator, Iterable
from urllib.parse import urlsplit, urlunsplit

import aiohttp

BARE_SERVER = """
import sys
from aiohttp import web

async def ok(request):
    await request.read()
    return web.json_response({"ok": True})

app = web.Application()
app.router.add_route("*", "/{tail:.*}", ok)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), access_log=None, print=None)
"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def services_from_env() -> tuple[str, str]:
    base_db, base_redis = os.environ.get("DATABASE_URL", ""), os.environ.get("REDIS_URL", "")
    if not base_db.startswith("postgres") or not base_redis:
        raise SystemExit("set DATABASE_URL (postgres://...) and REDIS_URL (redis://...)")
    return base_db, base_redis


@contextlib.asynccontextmanager
async def pg_connection(url: str):
    """A plain asyncpg connection to a DATABASE_URL (postgres://...), closed after the block."""
    import asyncpg

    conn = await asyncpg.connect(url.replace("postgres://", "postgresql://", 1))
    try:
        yield conn
    finally:
        await conn.close()


async def pg_admin(url: str, sql: str) -> None:
    async with pg_connection(url) as conn:
        await conn.execute(sql)


@contextlib.asynccontextmanager
async def fresh_database(base_url: str, prefix: str) -> AsyncIterator[str]:
    """A database of this run's own on DATABASE_URL's server, dropped at the end."""
    name = f"{prefix}_{secrets.token_hex(3)}"
    await pg_admin(base_url, f'CREATE DATABASE "{name}"')
    try:
        yield urlunsplit(urlsplit(base_url)._replace(path=f"/{name}"))
    finally:
        await pg_admin(base_url, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def claim_redis(base: str, *, owner: str = "", numbers: Iterable[int] = range(15, 0, -1)) -> str:
    """A Redis database number nobody else (test runs, other benches) is using: the first of
    `numbers` whose claim key this run can set (benches count down from 15, tests up from 1)."""
    from redis.asyncio import Redis

    parts = urlsplit(base)
    for number in numbers:
        url = urlunsplit(parts._replace(path=f"/{number}"))
        client = Redis.from_url(url)
        try:
            if await client.set("members-test:claim", owner or f"bench-{os.getpid()}", nx=True, ex=3600):
                return url
        finally:
            await client.aclose()
    raise SystemExit("no free Redis database between 1 and 15")


async def flush_redis(url: str) -> None:
    from redis.asyncio import Redis

    client = Redis.from_url(url)
    try:
        await client.flushdb()
    finally:
        await client.aclose()


@contextlib.asynccontextmanager
async def claimed_redis(base: str) -> AsyncIterator[str]:
    """`claim_redis` for the length of a block, flushed after."""
    url = await claim_redis(base)
    try:
        yield url
    finally:
        await flush_redis(url)


async def migrate(env: dict) -> None:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "app", "migrate", env=env,
                                                stdout=asyncio.subprocess.DEVNULL)
    if await proc.wait():
        raise SystemExit("migrate failed")


async def wait_up(url: str, proc: asyncio.subprocess.Process, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    async with aiohttp.ClientSession() as session:
        while time.monotonic() < deadline:
            if proc.returncode is not None:
                raise SystemExit(f"server exited with {proc.returncode}")
            try:
                async with session.get(url) as resp:
                    if resp.status < 500:
                        return
            except aiohttp.ClientError:
                pass
            await asyncio.sleep(0.2)
    raise SystemExit(f"{url} did not come up in {seconds} s")


@contextlib.asynccontextmanager
async def server(env: dict, *, bare: bool = False) -> AsyncIterator[str]:
    """The app (`python -m app serve`) or the bare endpoint, on a free port; yields its base URL."""
    port = free_port()
    if bare:
        args = ["-c", BARE_SERVER, str(port)]
        probe = f"http://127.0.0.1:{port}/"
    else:
        # The scheduler (on by default with WORKERS=1) would run jobs inside what is measured.
        env = {"SCHEDULER_IN_SERVE": "0", **env, "PORT": str(port), "HOST": "127.0.0.1"}
        args = ["-m", "app", "serve", "--no-migrate"]
        probe = f"http://127.0.0.1:{port}/healthz"
    proc = await asyncio.create_subprocess_exec(sys.executable, *args, env=env,
                                                stdout=asyncio.subprocess.DEVNULL)
    try:
        await wait_up(probe, proc)
        yield f"http://127.0.0.1:{port}"
    finally:
        if proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except asyncio.TimeoutError:
                proc.kill()


@dataclass(frozen=True)
class Request:
    method: str
    url: str
    headers: dict | None = None
    body: bytes | None = None


@dataclass(frozen=True)
class Result:
    requests: int
    statuses: dict
    rps: float
    p50: float
    p99: float
    mean: float

    def row(self, label: str) -> str:
        return (f"{label:<30}{self.rps:>10.0f}{self.p50:>10.1f}{self.p99:>10.1f}{self.mean:>10.1f}"
                f"  {self.statuses}")


HEADER = f"{'endpoint':<30}{'req/s':>10}{'p50 ms':>10}{'p99 ms':>10}{'mean ms':>10}  statuses"


async def load(requests: Iterable[Request], concurrency: int, *, seconds: float = 120) -> Result:
    """Closed loop: `concurrency` connections, each sending the next request when the last answered."""
    latencies: list[float] = []
    statuses: dict[int, int] = {}
    queue = iter(requests)
    deadline = time.monotonic() + seconds
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        async def worker() -> None:
            for req in queue:
                if time.monotonic() > deadline:
                    return
                started = time.perf_counter()
                async with session.request(req.method, req.url, data=req.body, headers=req.headers) as resp:
                    await resp.read()
                    statuses[resp.status] = statuses.get(resp.status, 0) + 1
                latencies.append(time.perf_counter() - started)

        began = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        elapsed = time.perf_counter() - began
    latencies.sort()
    n = len(latencies) or 1
    return Result(
        requests=len(latencies), statuses=statuses, rps=len(latencies) / elapsed,
        p50=latencies[n // 2] * 1000 if latencies else 0.0,
        p99=latencies[min(n - 1, int(n * 0.99))] * 1000 if latencies else 0.0,
        mean=statistics.fmean(latencies) * 1000 if latencies else 0.0,
    )


class Forwarder:
    """A TCP proxy on loopback in front of a dependency (PostgreSQL, Redis) that a test or bench
    controls: `cut()` drops every connection and refuses new ones, `freeze()` keeps them open but
    passes nothing (a black hole), `restore()` forwards again, on the same port."""

    def __init__(self, host: str, port: int) -> None:
        self.target, self.server, self.port = (host, port), None, 0
        self.pipes: set = set()
        self.frozen = False

    async def start(self) -> int:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", self.port)
        self.port = self.server.sockets[0].getsockname()[1]
        return self.port

    def url(self, url: str) -> str:
        """`url` (postgres://user@host:port/db, redis://host:port/n) pointed at this proxy."""
        parts = urlsplit(url)
        user = parts.netloc.rsplit("@", 1)[0] + "@" if "@" in parts.netloc else ""
        return urlunsplit(parts._replace(netloc=f"{user}127.0.0.1:{self.port}"))

    async def _serve(self, reader, writer):
        if self.frozen:  # accept, never answer
            self.pipes.add(writer)
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        self.pipes.update({writer, up_writer})

        async def pump(src, dst):
            try:
                while data := await src.read(65536):
                    while self.frozen:
                        await asyncio.sleep(0.05)
                    dst.write(data)
                    await dst.drain()
            except (ConnectionError, asyncio.CancelledError):
                pass
            finally:
                dst.close()

        await asyncio.gather(pump(reader, up_writer), pump(up_reader, writer))

    def _drop(self) -> None:
        for w in list(self.pipes):
            w.close()
        self.pipes.clear()

    async def cut(self) -> None:
        self.server.close()
        self._drop()

    def freeze(self) -> None:
        self.frozen = True

    async def restore(self) -> None:
        """Forward again: frozen connections are dropped (their clients gave up), a cut listener
        is opened again on the same port."""
        if self.frozen:
            self.frozen = False
            self._drop()
        if not self.server.is_serving():
            await self.start()

    async def close(self) -> None:
        self.server.close()
        self._drop()


@contextlib.asynccontextmanager
async def black_hole() -> AsyncIterator[int]:
    """A loopback port that accepts connections and never answers; yields the port."""
    held: list = []

    async def hold(reader, writer):
        held.append(writer)

    listener = await asyncio.start_server(hold, "127.0.0.1", 0)
    try:
        yield listener.sockets[0].getsockname()[1]
    finally:
        listener.close()
        for w in held:
            w.close()
