"""Tracking before the append (skipped for a stream tracked moments ago, never for a new stream) and batched appends."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

import pytest
import redis.asyncio
from redis.asyncio.cluster import RedisCluster

from broker.keys import stream_key, tracking_key
from broker.redis_broker import RedisBroker
from tests.broker.conftest import TEST_SETTINGS, Backend

# Far longer than any test runs, so every publish after the first skips the ZADD.
LONG_REFRESH_S = 3600.0


def new_stream() -> str:
    return stream_key(42, str(uuid.uuid4()))


@pytest.fixture
async def make_broker(any_redis_backend: Backend) -> AsyncIterator[Callable[[float], RedisBroker]]:
    """Return a factory of RedisBrokers on the backend with a given tracking_refresh_s."""
    made: list[RedisBroker] = []
    url = any_redis_backend.redis_url
    assert url is not None
    settings = replace(TEST_SETTINGS, redis_url=url, redis_cluster=any_redis_backend.cluster)

    def make(tracking_refresh_s: float) -> RedisBroker:
        client = RedisCluster.from_url(url) if any_redis_backend.cluster else redis.asyncio.Redis.from_url(url)
        broker = RedisBroker(client, settings, tracking_refresh_s=tracking_refresh_s)
        made.append(broker)
        return broker

    yield make
    for broker in made:
        await broker.close()


async def test_tracking_recent_stream_skips_zadd(
    any_redis_backend: Backend, make_broker: Callable[[float], RedisBroker]
) -> None:
    raw = any_redis_backend.raw
    assert raw is not None
    broker = make_broker(LONG_REFRESH_S)
    stream = new_stream()
    await broker.append(stream, b"first", end=False)
    # Removed directly in Redis, so a second ZADD would add it back.
    await raw.zrem(tracking_key(stream), stream)

    await broker.append(stream, b"second", end=False)

    assert await raw.zscore(tracking_key(stream), stream) is None
    assert await raw.xlen(stream) == 2


async def test_tracking_zero_refresh_tracks_every_append(
    any_redis_backend: Backend, make_broker: Callable[[float], RedisBroker]
) -> None:
    raw = any_redis_backend.raw
    assert raw is not None
    broker = make_broker(0)
    stream = new_stream()
    await broker.append(stream, b"first", end=False)
    await raw.zrem(tracking_key(stream), stream)

    await broker.append(stream, b"second", end=False)

    assert await raw.zscore(tracking_key(stream), stream) is not None


async def test_tracking_deleted_stream_tracked_before_recreated(
    any_redis_backend: Backend, make_broker: Callable[[float], RedisBroker]
) -> None:
    raw = any_redis_backend.raw
    assert raw is not None
    broker = make_broker(LONG_REFRESH_S)
    stream = new_stream()
    await broker.append(stream, b"old", end=False)
    assert await broker.delete_idle(0, now_s=time.time() + 60) == [stream]
    assert await raw.zscore(tracking_key(stream), stream) is None

    entry_id = await broker.append(stream, b"new", end=False)

    assert await raw.zscore(tracking_key(stream), stream) is not None
    assert [raw_id.decode() for raw_id, _ in await raw.xrange(stream)] == [entry_id]


async def test_tracking_stream_after_end_tracked_again(
    any_redis_backend: Backend, make_broker: Callable[[float], RedisBroker]
) -> None:
    raw = any_redis_backend.raw
    assert raw is not None
    broker = make_broker(LONG_REFRESH_S)
    stream = new_stream()
    await broker.append(stream, b"end", end=True)
    assert await raw.zscore(tracking_key(stream), stream) is None
    # Deleting it has the same effect as its expiry after the END.
    await raw.delete(stream)

    await broker.append(stream, b"again", end=False)

    assert await raw.zscore(tracking_key(stream), stream) is not None
    assert await raw.xlen(stream) == 1


async def test_tracking_negative_refresh_rejected() -> None:
    client = redis.asyncio.Redis()

    with pytest.raises(ValueError) as caught:
        RedisBroker(client, TEST_SETTINGS, tracking_refresh_s=-1)

    assert str(caught.value) == "tracking_refresh_s must be at least 0, got -1"
    await client.aclose()


async def test_batched_appends_keep_call_order(redis_backend: Backend) -> None:
    # A single Redis batches appends in call order. A cluster sends each one
    # on its own connection, so concurrent appends there have no order.
    raw = redis_backend.raw
    assert raw is not None and redis_backend.redis_url is not None
    client = redis.asyncio.Redis.from_url(redis_backend.redis_url)
    broker = RedisBroker(
        client, replace(TEST_SETTINGS, redis_url=redis_backend.redis_url), tracking_refresh_s=LONG_REFRESH_S
    )
    stream = new_stream()
    await broker.append(stream, b"first", end=False)

    entry_ids = await asyncio.gather(*(broker.append(stream, b"%d" % n, end=False) for n in range(50)))

    stored = await raw.xrange(stream)
    assert [fields[b"data"] for _, fields in stored] == [b"first", *(b"%d" % n for n in range(50))]
    assert [raw_id.decode() for raw_id, _ in stored[1:]] == list(entry_ids)
    await broker.close()


async def test_batched_append_cancelled_before_send_stores_nothing(redis_backend: Backend) -> None:
    raw = redis_backend.raw
    assert raw is not None and redis_backend.redis_url is not None
    client = redis.asyncio.Redis.from_url(redis_backend.redis_url)
    broker = RedisBroker(
        client, replace(TEST_SETTINGS, redis_url=redis_backend.redis_url), tracking_refresh_s=LONG_REFRESH_S
    )
    stream = new_stream()
    await broker.append(stream, b"first", end=False)

    # The task queues its append and creates the batch task, which runs only
    # after this test resumes, so the cancel comes before the batch is sent.
    task = asyncio.create_task(broker.append(stream, b"cancelled", end=False))
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await broker.append(stream, b"last", end=False)

    assert [fields[b"data"] for _, fields in await raw.xrange(stream)] == [b"first", b"last"]
    await broker.close()


async def test_cleanup_host_clock_ahead_keeps_live_stream(
    any_redis_backend: Backend, make_broker: Callable[[float], RedisBroker], monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = any_redis_backend.raw
    assert raw is not None
    broker = make_broker(LONG_REFRESH_S)
    stream = new_stream()
    await broker.append(stream, b"live", end=False)
    real_time = time.time
    # The cleanup host's clock runs an hour ahead of Redis's, which stamped the entry.
    monkeypatch.setattr(time, "time", lambda: real_time() + 3600)

    deleted = await broker.delete_idle(120)

    assert deleted == []
    assert await raw.xlen(stream) == 1
    assert await raw.zscore(tracking_key(stream), stream) is not None


async def test_cleanup_deletes_stream_idle_by_redis_clock(
    any_redis_backend: Backend, make_broker: Callable[[float], RedisBroker]
) -> None:
    raw = any_redis_backend.raw
    assert raw is not None
    broker = make_broker(LONG_REFRESH_S)
    stream = new_stream()
    await broker.append(stream, b"old", end=False)
    await asyncio.sleep(0.05)

    deleted = await broker.delete_idle(0.01)

    assert deleted == [stream]
    assert await raw.exists(stream) == 0
