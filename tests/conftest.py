"""Session-wide fixtures: a private Redis server and a clean database per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from tests.redis_process import RedisProcess


@pytest.fixture(scope="session")
def redis_process() -> Iterator[RedisProcess]:
    """A redis-server owned by this test session, on a free loopback port."""
    server = RedisProcess()
    server.start()
    yield server
    server.cleanup()


@pytest.fixture
def redis_url(redis_process: RedisProcess) -> Iterator[str]:
    """URL of the session's Redis with an empty database; restarts it if a test stopped it."""
    if redis_process.process is None:
        redis_process.start()
    client: redis.Redis = redis_process.client()
    try:
        client.flushall()
    finally:
        client.close()
    yield redis_process.url
