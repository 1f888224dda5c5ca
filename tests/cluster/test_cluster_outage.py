"""A Redis Cluster master that stops: its channels fail fast, the others keep working, and it recovers."""

from __future__ import annotations

import asyncio
import os
import signal
import uuid

import pytest
from redis.asyncio.cluster import RedisCluster

from broker.keys import stream_key, tracking_key
from conduit.errors import BrokerUnavailable
from tests.broker.conftest import Backend, cluster_backend  # noqa: F401 (fixture)
from tests.redis_process import RedisClusterProcess

# Only a guard against hangs: an outage must raise long before this.
OUTAGE_TIMEOUT_S = 10.0
# Bound on the keys tried while looking for a stream on a given master.
MAX_KEY_SEARCH = 1000


async def stream_on(raw: RedisCluster, port: int, *, on_it: bool) -> str:
    """Return a new stream key whose slots the master on ``port`` serves (or, with ``on_it=False``, does not).

    A publish writes the stream and its tracking shard, so both slots count.
    """
    await raw.initialize()
    for _ in range(MAX_KEY_SEARCH):
        stream = stream_key(9, str(uuid.uuid4()))
        ports = {raw.get_node_from_key(stream).port, raw.get_node_from_key(tracking_key(stream)).port}
        served_there = ports == {port}
        served_elsewhere = port not in ports
        if (on_it and served_there) or (not on_it and served_elsewhere):
            return stream
    raise AssertionError(f"no stream key found for port {port} among {MAX_KEY_SEARCH} keys")


async def test_master_outage_fails_its_channels_only(
    redis_cluster_process: RedisClusterProcess, cluster_backend: Backend
) -> None:
    assert isinstance(cluster_backend.raw, RedisCluster)
    broker = cluster_backend.make()
    stopped = redis_cluster_process.nodes[1]
    down_stream = await stream_on(cluster_backend.raw, stopped.port, on_it=True)
    up_stream = await stream_on(cluster_backend.raw, stopped.port, on_it=False)
    await broker.append(down_stream, b"before", end=False)
    await broker.ping()

    stopped.stop()
    try:
        with pytest.raises(BrokerUnavailable) as append_raised:
            await asyncio.wait_for(broker.append(down_stream, b"lost", end=False), OUTAGE_TIMEOUT_S)
        with pytest.raises(BrokerUnavailable) as ping_raised:
            await asyncio.wait_for(broker.ping(), OUTAGE_TIMEOUT_S)
        up_id = await asyncio.wait_for(broker.append(up_stream, b"other master", end=False), OUTAGE_TIMEOUT_S)
    finally:
        redis_cluster_process.ensure_running()

    assert str(append_raised.value) == (
        "Redis append failed (ConnectionError): the message may or may not be stored,"
        " so retry it with the same message_id"
    )
    assert str(ping_raised.value) == "Redis ping failed (ConnectionError)"
    assert [entry.id for entry in await broker.read(up_stream, "0-0", count=10, block_ms=0)] == [up_id]
    # The stopped master kept no data, so the stream starts again with the next publish.
    after_id = await asyncio.wait_for(broker.append(down_stream, b"after", end=False), OUTAGE_TIMEOUT_S)
    assert [entry.id for entry in await broker.read(down_stream, "0-0", count=10, block_ms=0)] == [after_id]
    await broker.ping()


async def test_append_to_frozen_master_stored_once(
    redis_cluster_process: RedisClusterProcess, cluster_backend: Backend
) -> None:
    # Without deduplication, only the client can keep one publish from being
    # appended twice: a command that timed out may still run, so it must not
    # be sent again.
    assert isinstance(cluster_backend.raw, RedisCluster)
    broker = cluster_backend.make(dedup_window_s=0)
    frozen = redis_cluster_process.nodes[1]
    assert frozen.process is not None
    stream = await stream_on(cluster_backend.raw, frozen.port, on_it=True)
    # Concurrent appends leave several pooled connections to the master, so a
    # resend would go out at once on one of them instead of waiting to connect.
    await asyncio.gather(*(broker.append(stream, b"before", end=False) for _ in range(3)))

    os.kill(frozen.process.pid, signal.SIGSTOP)
    try:
        with pytest.raises(BrokerUnavailable) as raised:
            await asyncio.wait_for(broker.append(stream, b"timed out", end=False), OUTAGE_TIMEOUT_S)
    finally:
        os.kill(frozen.process.pid, signal.SIGCONT)
    # The master runs what it received while frozen once it resumes.
    await asyncio.to_thread(redis_cluster_process.wait_until_ok)
    stored = [fields[b"data"] for _, fields in await cluster_backend.raw.xrange(stream)]

    assert str(raised.value) == (
        "Redis append failed (TimeoutError): the message may or may not be stored,"
        " so retry it with the same message_id"
    )
    assert stored.count(b"timed out") <= 1
