"""RedisBroker on a Redis Cluster: slots, routing to every master, scripts and errors."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest
from redis.asyncio.cluster import RedisCluster
from redis.crc import key_slot

from broker.base import Broker
from broker.factory import DEFAULT_MAX_CONNECTIONS, create_broker
from broker.keys import dedup_key, rate_limit_key, stream_key
from conduit.errors import BrokerUnavailable
from conduit.settings import BrokerSettings
from tests.broker.conftest import Backend, cluster_backend  # noqa: F401 (fixture)
from tests.redis_process import free_port

# Only a guard against hangs: every call here returns long before it.
WAIT_TIMEOUT_S = 10.0
# Enough random streams that each of the three masters gets some.
SPREAD_STREAM_COUNT = 30
# About 356 reads per master on average, well over DEFAULT_MAX_CONNECTIONS.
BLOCKED_READ_COUNT = 3 * DEFAULT_MAX_CONNECTIONS + 300
BLOCKED_READ_MS = 1000


def new_stream() -> str:
    return stream_key(7, str(uuid.uuid4()))


@pytest.fixture
def raw(cluster_backend: Backend) -> RedisCluster:
    assert isinstance(cluster_backend.raw, RedisCluster)
    return cluster_backend.raw


@pytest.fixture
def cluster_broker(cluster_backend: Backend) -> Broker:
    return cluster_backend.make()


def test_channel_keys_share_stream_slot() -> None:
    stream = new_stream()
    slot = key_slot(stream.encode())

    assert key_slot(rate_limit_key(stream).encode()) == slot
    assert key_slot(dedup_key(stream, str(uuid.uuid4())).encode()) == slot


async def test_streams_on_every_master_round_trip(raw: RedisCluster, cluster_broker: Broker) -> None:
    streams = [new_stream() for _ in range(SPREAD_STREAM_COUNT)]

    ids = {stream: await cluster_broker.append(stream, stream.encode(), end=False) for stream in streams}

    await raw.initialize()
    masters = {raw.get_node_from_key(stream).name for stream in streams}
    assert len(masters) == 3
    for stream, entry_id in ids.items():
        entries = await cluster_broker.read(stream, "0-0", count=10, block_ms=0)
        assert [(entry.id, entry.data) for entry in entries] == [(entry_id, stream.encode())]


async def test_delete_idle_sweeps_every_master(raw: RedisCluster, cluster_broker: Broker) -> None:
    streams = [new_stream() for _ in range(SPREAD_STREAM_COUNT)]
    for stream in streams:
        await cluster_broker.append(stream, b"left open", end=False)

    deleted = await cluster_broker.delete_idle(60, now_s=time.time() + 3600)

    assert sorted(deleted) == sorted(streams)
    assert await raw.exists(*streams) == 0


async def test_append_after_script_flush_on_every_master(raw: RedisCluster, cluster_broker: Broker) -> None:
    streams = [new_stream() for _ in range(SPREAD_STREAM_COUNT)]
    for stream in streams:
        await cluster_broker.append(stream, b"before flush", end=False)
    # redis-py sends SCRIPT FLUSH to every master of a cluster.
    await raw.script_flush()

    for stream in streams:
        await cluster_broker.append(stream, b"after flush", end=False)

    for stream in streams:
        assert await raw.xlen(stream) == 2


async def test_read_many_across_slots_raises(cluster_broker: Broker) -> None:
    streams: list[str] = []
    while len({cluster_broker.read_group(stream) for stream in streams}) < 2:
        streams.append(new_stream())

    with pytest.raises(ValueError) as raised:
        await cluster_broker.read_many(dict.fromkeys(streams, "0-0"), count=10, block_ms=0)

    assert str(raised.value) == (
        f"read_many streams must share one read_group, got {len(streams)} streams "
        "in 2 Redis Cluster hash slots; group them with read_group first"
    )


@pytest.mark.parametrize("operation", ["append", "read", "ping", "delete_idle"])
async def test_closed_port_raises_broker_unavailable(operation: str) -> None:
    port = free_port()
    broker = create_broker(BrokerSettings(redis_url=f"redis://:hunter2@127.0.0.1:{port}", redis_cluster=True))
    stream = new_stream()
    calls = {
        "append": lambda: broker.append(stream, b"lost", end=False),
        "read": lambda: broker.read(stream, "0-0", count=1, block_ms=100),
        "ping": broker.ping,
        "delete_idle": lambda: broker.delete_idle(60),
    }
    try:
        with pytest.raises(BrokerUnavailable) as raised:
            await asyncio.wait_for(calls[operation](), WAIT_TIMEOUT_S)
    finally:
        await broker.close()

    message = str(raised.value)
    assert message.startswith("Redis ")
    assert "hunter2" not in message
    assert str(port) not in message
    assert raised.value.__cause__ is not None


async def test_blocked_reads_beyond_default_pool_succeed(cluster_broker: Broker) -> None:
    # More blocked reads than DEFAULT_MAX_CONNECTIONS per master, as a gateway
    # hub with one reader per busy slot holds them.
    streams = [new_stream() for _ in range(BLOCKED_READ_COUNT)]

    results = await asyncio.wait_for(
        asyncio.gather(
            *(cluster_broker.read(stream, "0-0", count=1, block_ms=BLOCKED_READ_MS) for stream in streams),
            return_exceptions=True,
        ),
        WAIT_TIMEOUT_S,
    )

    failures = [result for result in results if isinstance(result, BaseException)]
    assert failures == []
    assert results == [[]] * BLOCKED_READ_COUNT
