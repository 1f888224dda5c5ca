"""Broker fixtures: each contract test runs on Redis, on Redis Cluster and on the embedded broker."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import pytest
import redis.asyncio
from redis.asyncio.cluster import RedisCluster

from broker.base import Broker
from broker.factory import create_broker
from broker.keys import tracking_key
from broker.instrumented import InstrumentedBroker
from broker.memory import MemoryBroker
from conduit.settings import BrokerSettings

# Generous enough that no contract test hits the rate limit by accident.
TEST_SETTINGS = BrokerSettings(max_stream_len=1200, rate_limit=1000, rate_window_s=60, stream_ttl_s=120)

_BLOCKED_READER_TIMEOUT_S = 5.0


class Backend:
    """Builds brokers of one kind and inspects what they store, for the contract tests."""

    def __init__(self, name: str, redis_url: str | None, *, cluster: bool = False) -> None:
        self.name = name
        self.redis_url = redis_url
        self.cluster = cluster
        self.raw: redis.asyncio.Redis | RedisCluster | None = None
        if redis_url is not None and cluster:
            self.raw = RedisCluster.from_url(redis_url, socket_timeout=5)
        elif redis_url is not None:
            self.raw = redis.asyncio.Redis.from_url(redis_url, socket_timeout=5)
        self._brokers: list[Broker] = []

    def make(self, **overrides: Any) -> Broker:
        """Return a new broker with TEST_SETTINGS changed by ``overrides``; closed at teardown."""
        settings = replace(TEST_SETTINGS, redis_url=self.redis_url, redis_cluster=self.cluster, **overrides)
        broker = create_broker(settings)
        self._brokers.append(broker)
        return broker

    async def tracked_score(self, broker: Broker, stream: str) -> float | None:
        """Return the stream's activity-tracking score, or None when it is not tracked."""
        if self.raw is None:
            # create_broker wraps every broker in InstrumentedBroker for metrics.
            inner = broker.inner if isinstance(broker, InstrumentedBroker) else broker
            assert isinstance(inner, MemoryBroker)
            return inner.tracked_streams().get(stream)
        return await self.raw.zscore(tracking_key(stream), stream)

    async def wait_until_reader_blocked(self) -> None:
        """Return once a read() is waiting for entries, so the next append has to wake it."""
        if self.raw is None:
            # The embedded broker registers a reader before its first suspension.
            for _ in range(3):
                await asyncio.sleep(0)
            return
        deadline = time.monotonic() + _BLOCKED_READER_TIMEOUT_S
        while await self.blocked_clients() < 1:
            if time.monotonic() > deadline:
                raise AssertionError("no reader blocked in XREAD within the time-out")
            await asyncio.sleep(0.01)

    async def blocked_clients(self) -> int:
        """Return the number of clients blocked in a command, summed over every Redis node."""
        assert self.raw is not None
        if isinstance(self.raw, RedisCluster):
            per_node = await self.raw.info("clients", target_nodes=RedisCluster.PRIMARIES)
            return sum(info["blocked_clients"] for info in per_node.values())
        return (await self.raw.info("clients"))["blocked_clients"]

    async def aclose(self) -> None:
        for broker in self._brokers:
            await broker.close()
        if self.raw is not None:
            await self.raw.aclose()


@pytest.fixture
async def redis_backend(redis_url: str) -> AsyncIterator[Backend]:
    backend = Backend("redis", redis_url)
    yield backend
    await backend.aclose()


@pytest.fixture
async def cluster_backend(redis_cluster_url: str) -> AsyncIterator[Backend]:
    backend = Backend("cluster", redis_cluster_url, cluster=True)
    yield backend
    await backend.aclose()


@pytest.fixture
async def memory_backend() -> AsyncIterator[Backend]:
    backend = Backend("memory", None)
    yield backend
    await backend.aclose()


@pytest.fixture(
    params=[
        pytest.param("redis_backend", id="redis"),
        pytest.param("cluster_backend", id="cluster"),
        pytest.param("memory_backend", id="memory"),
    ]
)
def backend(request: pytest.FixtureRequest) -> Backend:
    """Each kind of broker in turn."""
    return request.getfixturevalue(request.param)


@pytest.fixture
def broker(backend: Backend) -> Broker:
    """A broker with TEST_SETTINGS on the current backend."""
    return backend.make()


@pytest.fixture(
    params=[
        pytest.param("redis_backend", id="redis"),
        pytest.param("cluster_backend", id="cluster"),
    ]
)
def any_redis_backend(request: pytest.FixtureRequest) -> Backend:
    """A single Redis, then a Redis Cluster, for tests of what Redis stores."""
    return request.getfixturevalue(request.param)
