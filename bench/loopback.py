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
    return subprocess.run(["redis-cli", "-h", "127.0.0.1", "-p", str(port), *args],
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
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
        for port in ports:
            _wait(lambda port=port: _cli(port, "ping").strip() == "PONG", f"redis node {port}")
        subprocess.run(["redis-cli", "--cluster", "create", *[f"127.0.0.1:{p}" for p in ports],
                        "--cluster-replicas", "0", "--cluster-yes"],
                       check=True, capture_output=True, timeout=60)
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
