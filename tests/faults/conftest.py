"""The fault suite (marker `faults`, PostgreSQL pass only): private servers killed and restarted."""
from __future__ import annotations

import pytest

from tests.faults.servers import PrivatePostgres, PrivateRedis


@pytest.fixture
async def private_redis():
    server = PrivateRedis()
    try:
        await server.start()
        yield server
    finally:
        await server.close()


@pytest.fixture(scope="module")
def private_postgres():
    server = PrivatePostgres()
    try:
        server.start_sync()
        yield server
    finally:
        server.close()
