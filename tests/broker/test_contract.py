"""The Broker contract, run against Redis and against the embedded broker."""

from __future__ import annotations

import asyncio
import time
import uuid

import pytest

from broker.base import Broker
from broker.ids import parse_entry_id
from broker.keys import stream_key
from conduit.errors import BrokerUnavailable, InvalidArgument, RateLimited
from tests.broker.conftest import Backend

# A wait that a working broker ends long before this: only a guard against hangs.
WAIT_TIMEOUT_S = 10.0
# Shorter than the Redis client's 3 s socket timeout, so an XREAD sent with
# BLOCK 0 (wait forever) fails this bound instead of ending in a socket error.
NON_BLOCKING_READ_TIMEOUT_S = 1.5
LONG_BLOCK_MS = 5000
# Redis trims MAXLEN ~ in whole radix-tree nodes of stream-node-max-entries
# (100 by default), so up to one node more than the maximum may remain.
REDIS_TRIM_NODE_ENTRIES = 100


def new_stream() -> str:
    return stream_key(123, str(uuid.uuid4()))


async def append_many(broker: Broker, stream: str, count: int) -> list[str]:
    return [await broker.append(stream, f"entry {index}".encode(), end=False) for index in range(count)]


async def wait_until_gone(broker: Broker, stream: str) -> None:
    deadline = time.monotonic() + WAIT_TIMEOUT_S
    while await broker.info(stream) is not None:
        if time.monotonic() > deadline:
            raise AssertionError(f"{stream} still exists after {WAIT_TIMEOUT_S} s")
        await asyncio.sleep(0.05)


async def test_append_ids_increase(broker: Broker) -> None:
    stream = new_stream()

    ids = await append_many(broker, stream, 50)

    parsed = [parse_entry_id(entry_id) for entry_id in ids]
    assert all(earlier < later for earlier, later in zip(parsed, parsed[1:]))
    assert all(entry_id.count("-") == 1 for entry_id in ids)


async def test_read_from_start_returns_all_in_order(broker: Broker) -> None:
    stream = new_stream()
    ids = await append_many(broker, stream, 5)

    entries = await broker.read(stream, "0-0", count=100, block_ms=0)

    assert [entry.id for entry in entries] == ids
    assert [entry.data for entry in entries] == [f"entry {index}".encode() for index in range(5)]


async def test_read_after_id_returns_later_entries(broker: Broker) -> None:
    stream = new_stream()
    ids = await append_many(broker, stream, 5)

    entries = await broker.read(stream, ids[1], count=100, block_ms=0)

    assert [entry.id for entry in entries] == ids[2:]


async def test_read_count_limits_entries(broker: Broker) -> None:
    stream = new_stream()
    ids = await append_many(broker, stream, 5)

    entries = await broker.read(stream, "0-0", count=2, block_ms=0)

    assert [entry.id for entry in entries] == ids[:2]


async def test_read_after_last_id_returns_empty(broker: Broker) -> None:
    stream = new_stream()
    ids = await append_many(broker, stream, 3)

    entries = await broker.read(stream, ids[-1], count=10, block_ms=0)

    assert entries == []


async def test_read_missing_stream_returns_empty(broker: Broker) -> None:
    entries = await broker.read(new_stream(), "0-0", count=10, block_ms=0)

    assert entries == []


async def test_read_zero_block_returns_at_once(broker: Broker) -> None:
    entries = await asyncio.wait_for(
        broker.read(new_stream(), "0-0", count=10, block_ms=0), NON_BLOCKING_READ_TIMEOUT_S
    )

    assert entries == []


async def test_read_blocked_is_woken_by_append(backend: Backend, broker: Broker) -> None:
    stream = new_stream()
    first_id = await broker.append(stream, b"first", end=False)
    reader = asyncio.create_task(broker.read(stream, first_id, count=10, block_ms=LONG_BLOCK_MS))
    await backend.wait_until_reader_blocked()

    second_id = await broker.append(stream, b"second", end=False)
    entries = await asyncio.wait_for(reader, WAIT_TIMEOUT_S)

    assert [entry.id for entry in entries] == [second_id]
    assert entries[0].data == b"second"


async def test_read_blocked_on_missing_stream_is_woken(backend: Backend, broker: Broker) -> None:
    stream = new_stream()
    reader = asyncio.create_task(broker.read(stream, "0-0", count=10, block_ms=LONG_BLOCK_MS))
    await backend.wait_until_reader_blocked()

    entry_id = await broker.append(stream, b"first", end=False)
    entries = await asyncio.wait_for(reader, WAIT_TIMEOUT_S)

    assert [entry.id for entry in entries] == [entry_id]


async def test_read_cancelled_leaves_broker_usable(backend: Backend, broker: Broker) -> None:
    stream = new_stream()
    reader = asyncio.create_task(broker.read(stream, "0-0", count=10, block_ms=LONG_BLOCK_MS))
    await backend.wait_until_reader_blocked()

    reader.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reader
    entry_id = await broker.append(stream, b"after cancel", end=False)

    entries = await broker.read(stream, "0-0", count=10, block_ms=0)
    assert [entry.id for entry in entries] == [entry_id]


async def test_read_invalid_after_id_raises(broker: Broker) -> None:
    with pytest.raises(InvalidArgument) as raised:
        await broker.read(new_stream(), "not-an-id", count=10, block_ms=0)

    assert "invalid entry id 'not-an-id'" in str(raised.value)


async def test_read_bare_milliseconds_means_sequence_zero(broker: Broker) -> None:
    stream = new_stream()
    ids = await append_many(broker, stream, 3)
    ms, _seq = parse_entry_id(ids[0])

    entries = await broker.read(stream, str(ms - 1), count=10, block_ms=0)

    assert [entry.id for entry in entries] == ids


async def test_read_zero_count_raises(broker: Broker) -> None:
    with pytest.raises(ValueError) as raised:
        await broker.read(new_stream(), "0-0", count=0, block_ms=0)

    assert str(raised.value) == "count must be at least 1, got 0"


async def test_read_negative_block_raises(broker: Broker) -> None:
    with pytest.raises(ValueError) as raised:
        await broker.read(new_stream(), "0-0", count=1, block_ms=-1)

    assert str(raised.value) == "block_ms must be at least 0, got -1"


async def test_rate_limit_rejects_publish_over_limit(backend: Backend) -> None:
    broker = backend.make(rate_limit=3, rate_window_s=60)
    stream = new_stream()
    await append_many(broker, stream, 3)

    with pytest.raises(RateLimited) as raised:
        await broker.append(stream, b"one too many", end=False)

    assert 0 < raised.value.retry_after_s <= 60
    assert f"publish rate limit exceeded for {stream}" in str(raised.value)
    assert "at most 3 publishes per 60 s" in str(raised.value)
    info = await broker.info(stream)
    assert info is not None
    assert info.length == 3


async def test_rate_limit_rejected_end_changes_nothing(backend: Backend) -> None:
    broker = backend.make(rate_limit=1, rate_window_s=60)
    stream = new_stream()
    await broker.append(stream, b"start", end=False)

    with pytest.raises(RateLimited):
        await broker.append(stream, b"end", end=True)

    info = await broker.info(stream)
    assert info is not None
    assert info.length == 1
    assert info.ttl_s is None
    assert await backend.tracked_score(broker, stream) is not None


async def test_rate_limit_concurrent_allows_exactly_limit(backend: Backend) -> None:
    broker = backend.make(rate_limit=5, rate_window_s=60)
    stream = new_stream()

    results = await asyncio.gather(
        *(broker.append(stream, b"racing", end=False) for _ in range(20)), return_exceptions=True
    )

    appended = [result for result in results if isinstance(result, str)]
    rejected = [result for result in results if isinstance(result, RateLimited)]
    assert len(appended) == 5
    assert len(rejected) == 15
    info = await broker.info(stream)
    assert info is not None
    assert info.length == 5


async def test_rate_limit_is_per_stream(backend: Backend) -> None:
    broker = backend.make(rate_limit=1, rate_window_s=60)
    await broker.append(new_stream(), b"one", end=False)

    entry_id = await broker.append(new_stream(), b"other stream", end=False)

    assert entry_id


async def test_rate_limit_window_resets(backend: Backend) -> None:
    broker = backend.make(rate_limit=2, rate_window_s=2)
    stream = new_stream()
    await append_many(broker, stream, 2)
    with pytest.raises(RateLimited) as raised:
        await broker.append(stream, b"over", end=False)

    await asyncio.sleep(raised.value.retry_after_s + 0.05)
    ids = await append_many(broker, stream, 2)

    assert len(ids) == 2
    info = await broker.info(stream)
    assert info is not None
    assert info.length == 4


async def test_append_trims_to_max_stream_len(backend: Backend) -> None:
    broker = backend.make(max_stream_len=150)
    stream = new_stream()
    ids = await append_many(broker, stream, 400)

    entries = await broker.read(stream, "0-0", count=1000, block_ms=0)

    assert 150 <= len(entries) < 150 + REDIS_TRIM_NODE_ENTRIES
    assert [entry.id for entry in entries] == ids[-len(entries):]


async def test_append_end_sets_ttl_and_untracks(backend: Backend) -> None:
    broker = backend.make(stream_ttl_s=120)
    stream = new_stream()
    await broker.append(stream, b"start", end=False)
    assert await backend.tracked_score(broker, stream) is not None

    end_id = await broker.append(stream, b"end", end=True)

    info = await broker.info(stream)
    assert info is not None
    assert info.last_id == end_id
    assert info.ttl_s is not None
    assert 100 < info.ttl_s <= 120
    assert await backend.tracked_score(broker, stream) is None


async def test_append_without_end_has_no_ttl(broker: Broker) -> None:
    stream = new_stream()
    ids = await append_many(broker, stream, 2)

    info = await broker.info(stream)

    assert info is not None
    assert info.length == 2
    assert info.first_id == ids[0]
    assert info.last_id == ids[1]
    assert info.ttl_s is None


async def test_info_missing_stream_returns_none(broker: Broker) -> None:
    assert await broker.info(new_stream()) is None


async def test_append_tracks_last_publish_second(backend: Backend, broker: Broker) -> None:
    stream = new_stream()
    before_s = int(time.time())

    await broker.append(stream, b"tracked", end=False)

    score = await backend.tracked_score(broker, stream)
    assert score is not None
    assert before_s <= score <= time.time()


async def test_delete_idle_removes_idle_stream(backend: Backend, broker: Broker) -> None:
    stream = new_stream()
    await broker.append(stream, b"left open", end=False)

    deleted = await broker.delete_idle(60, now_s=time.time() + 120)

    assert deleted == [stream]
    assert await broker.info(stream) is None
    assert await backend.tracked_score(broker, stream) is None


async def test_delete_idle_keeps_fresh_stream(backend: Backend, broker: Broker) -> None:
    stream = new_stream()
    await broker.append(stream, b"fresh", end=False)

    deleted = await broker.delete_idle(60)

    assert deleted == []
    assert await broker.info(stream) is not None
    assert await backend.tracked_score(broker, stream) is not None


async def test_delete_idle_keeps_late_publish(backend: Backend, broker: Broker) -> None:
    idle_stream = new_stream()
    fresh_stream = new_stream()
    await broker.append(idle_stream, b"old", end=False)
    # Tracking scores are whole seconds, so the publishes are more than a
    # second apart to put the cutoff below between them.
    await asyncio.sleep(1.1)
    cutoff_s = time.time() - 0.05
    await broker.append(fresh_stream, b"new", end=False)

    deleted = await broker.delete_idle(0, now_s=cutoff_s)

    assert deleted == [idle_stream]
    assert await broker.info(fresh_stream) is not None
    assert await backend.tracked_score(broker, fresh_stream) is not None


async def test_delete_idle_untracks_vanished_stream(backend: Backend) -> None:
    broker = backend.make(stream_ttl_s=1)
    stream = new_stream()
    await broker.append(stream, b"end", end=True)
    # A publish after the END tracks the stream again, and the stream keeps its expiry.
    await broker.append(stream, b"late delta", end=False)
    await wait_until_gone(broker, stream)
    assert await backend.tracked_score(broker, stream) is not None

    deleted = await broker.delete_idle(0, now_s=time.time() + 10)

    assert deleted == []
    assert await backend.tracked_score(broker, stream) is None


async def test_delete_idle_negative_idle_raises(broker: Broker) -> None:
    with pytest.raises(ValueError) as raised:
        await broker.delete_idle(-1)

    assert str(raised.value) == "idle_s must be at least 0, got -1"


async def test_ping_returns(broker: Broker) -> None:
    await broker.ping()


async def test_close_wakes_blocked_reader(backend: Backend, broker: Broker) -> None:
    reader = asyncio.create_task(broker.read(new_stream(), "0-0", count=10, block_ms=LONG_BLOCK_MS))
    await backend.wait_until_reader_blocked()

    await broker.close()

    with pytest.raises(BrokerUnavailable) as raised:
        await asyncio.wait_for(reader, WAIT_TIMEOUT_S)
    assert str(raised.value) == "broker is closed"


async def test_closed_broker_rejects_calls(broker: Broker) -> None:
    await broker.close()

    with pytest.raises(BrokerUnavailable) as append_raised:
        await broker.append(new_stream(), b"late", end=False)
    with pytest.raises(BrokerUnavailable) as read_raised:
        await broker.read(new_stream(), "0-0", count=1, block_ms=0)
    with pytest.raises(BrokerUnavailable) as ping_raised:
        await broker.ping()

    assert str(append_raised.value) == "broker is closed"
    assert str(read_raised.value) == "broker is closed"
    assert str(ping_raised.value) == "broker is closed"


async def test_append_retried_message_id_returns_original_id(broker: Broker) -> None:
    stream = new_stream()
    message_id = str(uuid.uuid4())
    original_id = await broker.append(stream, b"original", end=False, message_id=message_id)

    retried_id = await broker.append(stream, b"retried", end=False, message_id=message_id)

    assert retried_id == original_id
    entries = await broker.read(stream, "0-0", count=10, block_ms=0)
    assert [(entry.id, entry.data) for entry in entries] == [(original_id, b"original")]


async def test_append_concurrent_retries_append_once(broker: Broker) -> None:
    stream = new_stream()
    message_id = str(uuid.uuid4())

    ids = await asyncio.gather(
        *(broker.append(stream, b"racing", end=False, message_id=message_id) for _ in range(10))
    )

    assert len(set(ids)) == 1
    info = await broker.info(stream)
    assert info is not None
    assert info.length == 1


async def test_append_duplicate_skips_rate_limit(backend: Backend) -> None:
    broker = backend.make(rate_limit=2, rate_window_s=60)
    stream = new_stream()
    first_message_id = str(uuid.uuid4())
    first_id = await broker.append(stream, b"first", end=False, message_id=first_message_id)

    retried_ids = [
        await broker.append(stream, b"first", end=False, message_id=first_message_id) for _ in range(3)
    ]
    second_id = await broker.append(stream, b"second", end=False, message_id=str(uuid.uuid4()))
    with pytest.raises(RateLimited):
        await broker.append(stream, b"third", end=False, message_id=str(uuid.uuid4()))
    retried_over_limit_id = await broker.append(stream, b"first", end=False, message_id=first_message_id)

    assert retried_ids == [first_id] * 3
    assert second_id != first_id
    assert retried_over_limit_id == first_id
    info = await broker.info(stream)
    assert info is not None
    assert info.length == 2


async def test_append_message_id_is_per_stream(broker: Broker) -> None:
    message_id = str(uuid.uuid4())
    first_stream, second_stream = new_stream(), new_stream()

    first_id = await broker.append(first_stream, b"one", end=False, message_id=message_id)
    second_id = await broker.append(second_stream, b"two", end=False, message_id=message_id)

    assert [entry.id for entry in await broker.read(first_stream, "0-0", count=10, block_ms=0)] == [first_id]
    assert [entry.id for entry in await broker.read(second_stream, "0-0", count=10, block_ms=0)] == [second_id]


async def test_append_without_message_id_appends_each_time(broker: Broker) -> None:
    stream = new_stream()

    ids = [await broker.append(stream, b"same bytes", end=False) for _ in range(2)]

    assert ids[0] != ids[1]
    info = await broker.info(stream)
    assert info is not None
    assert info.length == 2


async def test_append_zero_dedup_window_appends_each_time(backend: Backend) -> None:
    broker = backend.make(dedup_window_s=0)
    stream = new_stream()
    message_id = str(uuid.uuid4())

    ids = [await broker.append(stream, b"same", end=False, message_id=message_id) for _ in range(2)]

    assert ids[0] != ids[1]
    info = await broker.info(stream)
    assert info is not None
    assert info.length == 2


async def test_append_after_dedup_window_appends_again(backend: Backend) -> None:
    broker = backend.make(dedup_window_s=1)
    stream = new_stream()
    message_id = str(uuid.uuid4())
    first_id = await broker.append(stream, b"first", end=False, message_id=message_id)

    await asyncio.sleep(1.1)
    second_id = await broker.append(stream, b"after window", end=False, message_id=message_id)

    assert second_id != first_id
    info = await broker.info(stream)
    assert info is not None
    assert info.length == 2


async def test_append_retried_end_keeps_ttl_and_untracks(backend: Backend) -> None:
    broker = backend.make(stream_ttl_s=120)
    stream = new_stream()
    message_id = str(uuid.uuid4())
    end_id = await broker.append(stream, b"end", end=True, message_id=message_id)

    retried_id = await broker.append(stream, b"end", end=True, message_id=message_id)

    assert retried_id == end_id
    info = await broker.info(stream)
    assert info is not None
    assert info.length == 1
    assert info.ttl_s is not None
    assert 100 < info.ttl_s <= 120
    assert await backend.tracked_score(broker, stream) is None
