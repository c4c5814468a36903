"""Private PostgreSQL and Redis servers for the fault suite: on free loopback ports, in their own
temporary directories, stopped, killed and started again by the tests. The shared servers (5432,
6379) are never touched. Every wait is bounded; `close()` always removes what was made."""
from __future__ import annotations

import asyncio
import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path

from bench.harness import free_port
from bench.loopback import server_env

PG_BIN = Path("/usr/lib/postgresql/15/bin")
STARTUP = 30.0  # seconds a server may take to accept connections


def _as_postgres(*args: str) -> list[str]:
    # PostgreSQL refuses to run as root: run its tools as the `postgres` OS user when we are root.
    return ["runuser", "-u", "postgres", "--", *args] if os.geteuid() == 0 else list(args)


class PrivatePostgres:
    """initdb + pg_ctl on a temporary port; `stop()` is a crash (immediate mode), `start()` recovers."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="members-faults-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.url = f"postgres://postgres@127.0.0.1:{self.port}/postgres"
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres", "postgres")
        subprocess.run(_as_postgres(str(PG_BIN / "initdb"), "-D", str(self.data), "-A", "trust",
                                    "-U", "postgres", "--no-sync", "-E", "UTF8"),
                       check=True, capture_output=True, timeout=120, env=server_env())

    def _ctl(self, *args: str) -> list[str]:
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off"
                   " -c synchronous_commit=on -c max_connections=100")
        return _as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(self.data), "-o", options,
                            "-l", str(self.root / "log"), *args)

    def start_sync(self) -> None:
        subprocess.run(self._ctl("-w", "-t", str(int(STARTUP)), "start"), check=True,
                       capture_output=True, timeout=STARTUP + 10, env=server_env())

    async def start(self) -> None:
        await _run(self._ctl("-w", "-t", str(int(STARTUP)), "start"), STARTUP + 10)

    async def stop(self) -> None:
        """Like a crash: no checkpoint, clients cut off mid-statement."""
        await _run(self._ctl("-w", "-m", "immediate", "stop"), 30)

    def close(self) -> None:
        subprocess.run(self._ctl("-w", "-m", "immediate", "stop"), capture_output=True, timeout=30,
                       env=server_env())
        shutil.rmtree(self.root, ignore_errors=True)


class PrivateRedis:
    """redis-server on a free port with its own --dir; `kill()` is SIGKILL, `start()` loads
    whatever dump.rdb the directory holds (nothing: an empty Redis)."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="members-faults-redis-"))
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self.proc = await asyncio.create_subprocess_exec(
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
            "--save", "", "--appendonly", "no", "--maxmemory-policy", "noeviction",
            stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.DEVNULL, env=server_env())
        from redis.asyncio import Redis

        client = Redis.from_url(self.url, socket_timeout=1, socket_connect_timeout=1)
        try:
            for _ in range(int(STARTUP / 0.05)):
                try:
                    if await client.ping():
                        return
                except Exception:  # not listening yet, or loading its snapshot
                    await asyncio.sleep(0.05)
            raise RuntimeError("private redis did not start")
        finally:
            await client.aclose()

    async def kill(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            self.proc.send_signal(signal.SIGKILL)
            await asyncio.wait_for(self.proc.wait(), 10)

    async def snapshot(self, name: str) -> Path:
        """SAVE now, and keep a copy of the dump under `name`."""
        from redis.asyncio import Redis

        client = Redis.from_url(self.url)
        try:
            await client.save()
        finally:
            await client.aclose()
        copy = self.dir / name
        shutil.copy(self.dir / "dump.rdb", copy)
        return copy

    def restore(self, snapshot: Path | None) -> None:
        """The dump the next start loads: `snapshot`, or none (empty)."""
        (self.dir / "dump.rdb").unlink(missing_ok=True)
        if snapshot is not None:
            shutil.copy(snapshot, self.dir / "dump.rdb")

    async def close(self) -> None:
        await self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


async def _run(args: list[str], timeout: float) -> None:
    proc = await asyncio.create_subprocess_exec(*args, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT, env=server_env())
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        raise
    if proc.returncode:
        raise RuntimeError(f"{' '.join(args)} exited {proc.returncode}: {out.decode(errors='replace')}")
