"""Private servers on loopback for the tests that need a topology of their own: a 3-master Redis
Cluster (the REDIS_CLUSTER=1 pass) and a PostgreSQL primary with a streaming replica (the
DATABASE_REPLICA_URL test). Free ports only, data under a temporary folder, everything stopped
at the end; the shared servers on 6379 and 5432 are never touched.

These run from session fixtures and benches, before any event loop, so they block.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Iterator

PG_BIN = Path(os.environ.get("PG_BIN", "/usr/lib/postgresql/15/bin"))


def server_env() -> dict[str, str]:
    """The environment of a server a test starts: without libfaketime (LD_PRELOAD, FAKETIME*),
    which `make test-faketime` puts on the Python process only. Servers keep real time, as the
    shared PostgreSQL and Redis do (and as in production)."""
    return {k: v for k, v in os.environ.items() if k != "LD_PRELOAD" and not k.startswith("FAKETIME")}


def _port_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True


def free_ports(count: int, *, bus_offset: int = 0) -> list[int]:
    """`count` free loopback ports (and, with bus_offset, port + offset free too: a cluster bus)."""
    ports: list[int] = []
    for _ in range(200):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port in ports or port + bus_offset > 65535 or (bus_offset and not _port_free(port + bus_offset)):
            continue
        ports.append(port)
        if len(ports) == count:
            return ports
    raise RuntimeError("no free loopback ports")


def _wait(check, what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise RuntimeError(f"{what} did not come up in {timeout:.0f} s")


def _cli(port: int, *args: str) -> str:
    return subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(port), *args], env=server_env(),
                          capture_output=True, text=True, timeout=30).stdout


@contextlib.contextmanager
def redis_cluster(masters: int = 3) -> Iterator[str]:
    """A Redis Cluster of `masters` masters (no replicas) on free loopback ports; yields the URL
    of its first node, which is all a cluster client needs."""
    folder = Path(tempfile.mkdtemp(prefix="redis-cluster-"))
    ports = free_ports(masters, bus_offset=10000)
    procs = []
    try:
        for port in ports:
            node = folder / str(port)
            node.mkdir()
            procs.append(subprocess.Popen(
                ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--cluster-enabled", "yes",
                 "--cluster-config-file", str(node / "nodes.conf"), "--dir", str(node),
                 "--save", "", "--appendonly", "no", "--cluster-node-timeout", "5000"],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=server_env()))
        for port in ports:
            _wait(lambda port=port: _cli(port, "ping").strip() == "PONG", f"redis node {port}")
        subprocess.run(["redis-cli", "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports],
                        "--cluster-replicas", "0", "--cluster-yes"],
                       check=True, capture_output=True, timeout=60, env=server_env())
        for port in ports:
            _wait(lambda port=port: "cluster_state:ok" in _cli(port, "cluster", "info"), "the cluster")
        yield f"redis://127.0.0.1:{ports[0]}/0"
    finally:
        for proc in procs:
            proc.terminate()
        for proc in procs:
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
        shutil.rmtree(folder, ignore_errors=True)


def _as_postgres(*args: str, **kw) -> subprocess.CompletedProcess:
    """PostgreSQL's tools refuse to run as root: run them as the postgres OS user when we are root."""
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    return subprocess.run([*prefix, *args], check=True, capture_output=True, text=True, env=server_env(), **kw)


@contextlib.contextmanager
def pg_replica() -> Iterator[tuple[str, str]]:
    """A private PostgreSQL primary and a streaming replica of it (`pg_basebackup -R`), each on
    a free loopback port; yields (primary URL, replica URL) of their `postgres` database."""
    folder = Path(tempfile.mkdtemp(prefix="pg-replica-"))
    os.chmod(folder, 0o755)
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    primary, replica = folder / "primary", folder / "replica"
    ports = free_ports(2)
    started: list[Path] = []
    try:
        _as_postgres(str(PG_BIN / "initdb"), "-D", str(primary), "-U", "postgres", "--auth=trust",
                     "-E", "UTF8", "--no-sync")
        with open(primary / "postgresql.conf", "a") as conf:
            conf.write("wal_level = replica\nmax_wal_senders = 4\nfsync = off\nfull_page_writes = off\n")
        with open(primary / "pg_hba.conf", "a") as hba:
            hba.write("host replication postgres 127.0.0.1/32 trust\n")
        for data, port in ((primary, ports[0]), (replica, ports[1])):
            if data is replica:
                _as_postgres(str(PG_BIN / "pg_basebackup"), "-h", "127.0.0.1", "-p", str(ports[0]),
                             "-U", "postgres", "-D", str(replica), "-R", "-X", "stream", timeout=120)
            _as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(data), "-w", "-t", "60", "-l", str(folder / f"{data.name}.log"),
                         "-o", f"-p {port} -k {folder} -c listen_addresses=127.0.0.1", "start", timeout=90)
            started.append(data)
        yield tuple(f"postgres://postgres@127.0.0.1:{port}/postgres" for port in ports)  # type: ignore[misc]
    finally:
        for data in reversed(started):
            with contextlib.suppress(subprocess.SubprocessError):
                _as_postgres(str(PG_BIN / "pg_ctl"), "-D", str(data), "-m", "immediate", "-w", "stop", timeout=60)
        shutil.rmtree(folder, ignore_errors=True)
