"""Session-wide fixtures: a private Redis server, a private Redis Cluster, and clean data per test."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import redis

from tests.redis_process import RedisClusterProcess, RedisProcess


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


@pytest.fixture(scope="session")
def redis_cluster_process() -> Iterator[RedisClusterProcess]:
    """A three-master Redis Cluster owned by this test session, started when a test first needs it."""
    cluster = RedisClusterProcess()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.cleanup()


@pytest.fixture
def redis_cluster_url(redis_cluster_process: RedisClusterProcess) -> str:
    """URL of one node of the session's Redis Cluster, with every master running and emptied."""
    redis_cluster_process.ensure_running()
    redis_cluster_process.flushall()
    return redis_cluster_process.url
