"""Redis-only behaviour: the stored layout, script loading, sweeps in batches and outages."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import pytest

from broker.base import Broker, NewEntry
from broker.factory import create_broker
from broker.keys import all_tracking_keys, dedup_key, rate_limit_key, stream_key, tracking_key
from conduit.errors import BrokerUnavailable, RateLimited
from conduit.settings import BrokerSettings
from tests.broker.conftest import Backend
from tests.redis_process import RedisProcess, free_port

# Only a guard against hangs: an outage must raise long before this.
OUTAGE_TIMEOUT_S = 10.0


def new_stream() -> str:
    return stream_key(42, str(uuid.uuid4()))


def streams_in_shard(shard: str, count: int) -> list[str]:
    """Return ``count`` new stream keys that all hash to ``shard``."""
    streams: list[str] = []
    for _ in range(count * 64 * 4):
        stream = new_stream()
        if tracking_key(stream) == shard:
            streams.append(stream)
            if len(streams) == count:
                return streams
    raise AssertionError(f"found only {len(streams)} streams for {shard}")


@pytest.fixture
def redis_broker(redis_backend: Backend) -> Broker:
    return redis_backend.make()


async def test_append_tracks_in_own_shard_only(redis_backend: Backend, redis_broker: Broker) -> None:
    raw = redis_backend.raw
    assert raw is not None
    stream = new_stream()

    await redis_broker.append(stream, b"tracked", end=False)

    holders = [shard for shard in all_tracking_keys() if await raw.zscore(shard, stream) is not None]
    assert holders == [tracking_key(stream)]


async def test_append_stores_data_field(redis_backend: Backend, redis_broker: Broker) -> None:
    raw = redis_backend.raw
    assert raw is not None
    stream = new_stream()

    entry_id = await redis_broker.append(stream, b"\x00encoded", end=False)

    assert await raw.xrange(stream) == [(entry_id.encode(), {b"data": b"\x00encoded"})]


async def test_rate_limit_counter_shares_slot_and_expires(redis_backend: Backend) -> None:
    raw = redis_backend.raw
    assert raw is not None
    broker = redis_backend.make(rate_limit=2, rate_window_s=60)
    stream = new_stream()
    await broker.append(stream, b"one", end=False)
    await broker.append(stream, b"two", end=False)

    with pytest.raises(RateLimited):
        await broker.append(stream, b"three", end=False)

    counter = rate_limit_key(stream)
    assert counter == f"conduit:rate:{{{stream}}}"
    assert await raw.get(counter) == b"2"
    assert 0 < await raw.pttl(counter) <= 60_000


async def test_rate_limit_counter_without_expiry_gets_one(redis_backend: Backend) -> None:
    raw = redis_backend.raw
    assert raw is not None
    broker = redis_backend.make(rate_limit=2, rate_window_s=5)
    stream = new_stream()
    await raw.set(rate_limit_key(stream), 2)

    with pytest.raises(RateLimited) as raised:
        await broker.append(stream, b"blocked", end=False)

    assert raised.value.retry_after_s == 5
    assert 0 < await raw.pttl(rate_limit_key(stream)) <= 5000


async def test_dedup_key_shares_slot_and_expires(any_redis_backend: Backend) -> None:
    raw = any_redis_backend.raw
    assert raw is not None
    broker = any_redis_backend.make(dedup_window_s=300)
    stream = new_stream()
    message_id = str(uuid.uuid4())

    entry_id = await broker.append(stream, b"remembered", end=False, message_id=message_id)

    key = dedup_key(stream, message_id)
    assert key == f"conduit:msg:{{{stream}}}:{message_id}"
    assert await raw.get(key) == entry_id.encode()
    assert 290_000 < await raw.pttl(key) <= 300_000


async def test_duplicate_leaves_keys_unchanged(any_redis_backend: Backend) -> None:
    raw = any_redis_backend.raw
    assert raw is not None
    broker = any_redis_backend.make(rate_limit=5, rate_window_s=60)
    stream = new_stream()
    message_id = str(uuid.uuid4())
    entry_id = await broker.append(stream, b"once", end=False, message_id=message_id)

    await broker.append(stream, b"once", end=False, message_id=message_id)

    assert await raw.get(rate_limit_key(stream)) == b"1"
    assert await raw.xrange(stream) == [(entry_id.encode(), {b"data": b"once"})]


async def test_append_without_dedup_writes_no_dedup_key(any_redis_backend: Backend) -> None:
    raw = any_redis_backend.raw
    assert raw is not None
    broker = any_redis_backend.make(dedup_window_s=0)
    stream = new_stream()
    message_id = str(uuid.uuid4())

    await broker.append(stream, b"not remembered", end=False, message_id=message_id)

    assert await raw.exists(dedup_key(stream, message_id)) == 0


async def test_append_after_script_flush_reloads_script(
    redis_backend: Backend, redis_broker: Broker
) -> None:
    raw = redis_backend.raw
    assert raw is not None
    stream = new_stream()
    await redis_broker.append(stream, b"before flush", end=False)
    await raw.script_flush()

    await redis_broker.append(stream, b"after flush", end=False)

    assert await raw.xlen(stream) == 2


async def test_append_many_after_script_flush_reloads_scripts(
    redis_backend: Backend, redis_broker: Broker
) -> None:
    raw = redis_backend.raw
    assert raw is not None
    stream = new_stream()
    await redis_broker.append_many(stream, [NewEntry(b"before flush")])
    await raw.script_flush()

    # Both scripts are missing now. Appends in flight together share one batch unless one tracks its stream first.
    results = await asyncio.gather(
        redis_broker.append_many(stream, [NewEntry(b"batch 1"), NewEntry(b"batch 2")]),
        redis_broker.append(stream, b"single", end=False),
    )

    assert len(results[0].ids) == 2
    entries = await redis_broker.read(stream, "0-0", count=10, block_ms=0)
    stored = [entry.data for entry in entries]
    assert sorted(stored) == [b"batch 1", b"batch 2", b"before flush", b"single"]
    assert stored.index(b"batch 1") + 1 == stored.index(b"batch 2")


async def test_read_skips_entry_without_data_field(
    redis_backend: Backend, redis_broker: Broker
) -> None:
    raw = redis_backend.raw
    assert raw is not None
    stream = new_stream()
    await raw.xadd(stream, {"other": "field"})
    entry_id = await redis_broker.append(stream, b"payload", end=False)

    entries = await redis_broker.read(stream, "0-0", count=10, block_ms=0)

    assert [entry.id for entry in entries] == [entry_id]


async def test_read_past_trailing_foreign_entry_waits(
    redis_backend: Backend, redis_broker: Broker
) -> None:
    raw = redis_backend.raw
    assert raw is not None
    stream = new_stream()
    first_id = await redis_broker.append(stream, b"first", end=False)
    await raw.xadd(stream, {"other": "field"})
    reader = asyncio.create_task(redis_broker.read(stream, first_id, count=10, block_ms=5000))
    await redis_backend.wait_until_reader_blocked()

    second_id = await redis_broker.append(stream, b"second", end=False)
    entries = await asyncio.wait_for(reader, OUTAGE_TIMEOUT_S)

    assert [entry.id for entry in entries] == [second_id]


async def test_read_foreign_entry_logged_once(
    redis_backend: Backend, redis_broker: Broker, caplog: pytest.LogCaptureFixture
) -> None:
    raw = redis_backend.raw
    assert raw is not None
    stream = new_stream()
    foreign_id = (await raw.xadd(stream, {"other": "field"})).decode()

    first = await redis_broker.read(stream, "0-0", count=10, block_ms=0)
    second = await redis_broker.read(stream, "0-0", count=10, block_ms=0)

    assert first == []
    assert second == []
    records = [r for r in caplog.records if r.getMessage() == "skipped stream entry without a data field"]
    assert len(records) == 1
    assert records[0].levelno == logging.WARNING
    assert records[0].entry_id == foreign_id  # type: ignore[attr-defined]


async def test_read_long_block_is_capped(redis_broker: Broker) -> None:
    # A block longer than the client's 3 s socket timeout would end in a
    # socket error, so the broker waits at most 2 s and returns empty.
    entries = await redis_broker.read(new_stream(), "0-0", count=10, block_ms=60_000)

    assert entries == []


async def test_delete_idle_sweeps_shard_in_batches(redis_backend: Backend, redis_broker: Broker) -> None:
    raw = redis_backend.raw
    assert raw is not None
    shard = all_tracking_keys()[0]
    streams = streams_in_shard(shard, 260)
    idle, vanished, fresh = streams[:90], streams[90:200], streams[200:]
    old_score_s = time.time() - 3600
    # Interleave the three kinds by score, so that kept members sit between
    # removed ones in every batch.
    for index, stream in enumerate(streams):
        await raw.zadd(shard, {stream: old_score_s + index % 7})
    for stream in idle:
        await raw.xadd(stream, {"data": b"old"}, id="1000-0")
    for stream in fresh:
        await raw.xadd(stream, {"data": b"new"})

    deleted = await redis_broker.delete_idle(60)

    assert sorted(deleted) == sorted(idle)
    assert [await raw.exists(stream) for stream in idle] == [0] * len(idle)
    assert await raw.zcard(shard) == len(fresh)
    assert sorted(member.decode() for member in await raw.zrange(shard, 0, -1)) == sorted(fresh)


async def test_delete_idle_untracks_key_of_other_type(redis_backend: Backend, redis_broker: Broker) -> None:
    raw = redis_backend.raw
    assert raw is not None
    stream = new_stream()
    await raw.set(stream, "not a stream")
    await raw.zadd(tracking_key(stream), {stream: 1})

    deleted = await redis_broker.delete_idle(60)

    assert deleted == []
    assert await raw.get(stream) == b"not a stream"
    assert await raw.zscore(tracking_key(stream), stream) is None


async def test_delete_idle_deletes_empty_stream(redis_backend: Backend, redis_broker: Broker) -> None:
    raw = redis_backend.raw
    assert raw is not None
    stream = new_stream()
    entry_id = await raw.xadd(stream, {"data": b"x"})
    await raw.xdel(stream, entry_id)
    await raw.zadd(tracking_key(stream), {stream: 1})

    deleted = await redis_broker.delete_idle(60)

    assert deleted == [stream]
    assert await raw.exists(stream) == 0


@pytest.mark.parametrize("operation", ["append", "read", "ping", "info", "delete_idle"])
async def test_closed_port_raises_broker_unavailable(operation: str) -> None:
    port = free_port()
    broker = create_broker(BrokerSettings(redis_url=f"redis://:hunter2@127.0.0.1:{port}/0"))
    stream = new_stream()
    calls = {
        "append": lambda: broker.append(stream, b"lost", end=False),
        "read": lambda: broker.read(stream, "0-0", count=1, block_ms=100),
        "ping": broker.ping,
        "info": lambda: broker.info(stream),
        "delete_idle": lambda: broker.delete_idle(60),
    }
    try:
        with pytest.raises(BrokerUnavailable) as raised:
            await asyncio.wait_for(calls[operation](), OUTAGE_TIMEOUT_S)
    finally:
        await broker.close()

    message = str(raised.value)
    assert message.startswith("Redis ")
    assert "ConnectionError" in message
    assert "hunter2" not in message
    assert str(port) not in message
    assert raised.value.__cause__ is not None


async def test_outage_append_leaves_no_trace(
    redis_process: RedisProcess, redis_backend: Backend, redis_broker: Broker
) -> None:
    raw = redis_backend.raw
    assert raw is not None
    stream = new_stream()
    await redis_broker.ping()

    redis_process.stop()
    try:
        with pytest.raises(BrokerUnavailable) as raised:
            await asyncio.wait_for(redis_broker.append(stream, b"lost", end=False), OUTAGE_TIMEOUT_S)
    finally:
        redis_process.start()

    assert "append failed" in str(raised.value)
    assert await raw.exists(stream) == 0
    assert await raw.zscore(tracking_key(stream), stream) is None
    entry_id = await redis_broker.append(stream, b"after restart", end=False)
    assert [entry.id for entry in await redis_broker.read(stream, "0-0", count=10, block_ms=0)] == [
        entry_id
    ]

