"""Broker.append_many: several entries of one stream in one call, as the same append calls would store them."""

from __future__ import annotations

import time
import uuid

import pytest

from broker.base import Broker, NewEntry
from conduit.errors import BrokerUnavailable, RateLimited
from tests.broker.conftest import Backend
from tests.broker.test_contract import new_stream


def entries(count: int, *, prefix: str = "entry") -> list[NewEntry]:
    return [NewEntry(f"{prefix} {index}".encode(), message_id=str(uuid.uuid4())) for index in range(count)]


async def test_append_many_stores_in_order(broker: Broker) -> None:
    stream = new_stream()
    first_id = await broker.append(stream, b"before", end=False)

    result = await broker.append_many(stream, entries(5))

    assert result.rate_limited is None
    assert len(result.ids) == 5
    stored = await broker.read(stream, "0-0", count=10, block_ms=0)
    assert [entry.id for entry in stored] == [first_id, *result.ids]
    assert [entry.data for entry in stored[1:]] == [f"entry {index}".encode() for index in range(5)]


async def test_append_many_then_append_ids_increase(broker: Broker) -> None:
    stream = new_stream()

    batch = await broker.append_many(stream, entries(3))
    after_id = await broker.append(stream, b"after", end=False)

    stored = await broker.read(stream, "0-0", count=10, block_ms=0)
    assert [entry.id for entry in stored] == [*batch.ids, after_id]


async def test_append_many_without_message_ids(broker: Broker) -> None:
    stream = new_stream()

    result = await broker.append_many(stream, [NewEntry(b"same"), NewEntry(b"same")])

    assert len(set(result.ids)) == 2
    info = await broker.info(stream)
    assert info is not None
    assert info.length == 2


async def test_append_many_returns_original_id_of_duplicate(broker: Broker) -> None:
    stream = new_stream()
    message_id = str(uuid.uuid4())
    original_id = await broker.append(stream, b"original", end=False, message_id=message_id)

    result = await broker.append_many(
        stream, [NewEntry(b"new"), NewEntry(b"retried", message_id=message_id), NewEntry(b"newer")]
    )

    assert result.rate_limited is None
    assert result.ids[1] == original_id
    stored = await broker.read(stream, "0-0", count=10, block_ms=0)
    assert [entry.data for entry in stored] == [b"original", b"new", b"newer"]


async def test_append_many_repeated_id_in_one_call(broker: Broker) -> None:
    stream = new_stream()
    message_id = str(uuid.uuid4())

    result = await broker.append_many(
        stream, [NewEntry(b"first", message_id=message_id), NewEntry(b"second", message_id=message_id)]
    )

    assert result.ids[0] == result.ids[1]
    retried_id = await broker.append(stream, b"third", end=False, message_id=message_id)
    assert retried_id == result.ids[0]
    info = await broker.info(stream)
    assert info is not None
    assert info.length == 1


async def test_append_many_stops_at_rate_limit(backend: Backend) -> None:
    broker = backend.make(rate_limit=3, rate_window_s=60)
    stream = new_stream()
    await broker.append(stream, b"before", end=False)

    result = await broker.append_many(stream, entries(4))

    assert len(result.ids) == 2
    assert isinstance(result.rate_limited, RateLimited)
    assert 0 < result.rate_limited.retry_after_s <= 60
    assert f"publish rate limit exceeded for {stream}" in str(result.rate_limited)
    info = await broker.info(stream)
    assert info is not None
    assert info.length == 3
    with pytest.raises(RateLimited):
        await broker.append(stream, b"after", end=False)


async def test_append_many_limited_first_entry(backend: Backend) -> None:
    broker = backend.make(rate_limit=1, rate_window_s=60)
    stream = new_stream()
    await broker.append(stream, b"before", end=False)

    result = await broker.append_many(stream, [NewEntry(b"end", end=True)])

    assert result.ids == []
    assert isinstance(result.rate_limited, RateLimited)
    info = await broker.info(stream)
    assert info is not None
    assert info.length == 1
    assert info.ttl_s is None
    assert await backend.tracked_score(broker, stream) is not None


async def test_append_many_counts_against_limit(backend: Backend) -> None:
    broker = backend.make(rate_limit=3, rate_window_s=60)
    stream = new_stream()

    result = await broker.append_many(stream, entries(3))

    assert result.rate_limited is None
    with pytest.raises(RateLimited):
        await broker.append(stream, b"over", end=False)


async def test_append_many_duplicate_skips_rate_limit(backend: Backend) -> None:
    broker = backend.make(rate_limit=1, rate_window_s=60)
    stream = new_stream()
    message_id = str(uuid.uuid4())
    original_id = await broker.append(stream, b"original", end=False, message_id=message_id)

    result = await broker.append_many(
        stream, [NewEntry(b"retried", message_id=message_id), NewEntry(b"over", message_id=str(uuid.uuid4()))]
    )

    assert result.ids == [original_id]
    assert isinstance(result.rate_limited, RateLimited)


async def test_append_many_zero_dedup_window_appends_each(backend: Backend) -> None:
    broker = backend.make(dedup_window_s=0)
    stream = new_stream()
    message_id = str(uuid.uuid4())

    result = await broker.append_many(
        stream, [NewEntry(b"first", message_id=message_id), NewEntry(b"second", message_id=message_id)]
    )

    assert len(set(result.ids)) == 2
    info = await broker.info(stream)
    assert info is not None
    assert info.length == 2


async def test_append_many_end_sets_ttl_and_untracks(backend: Backend) -> None:
    broker = backend.make(stream_ttl_s=120)
    stream = new_stream()

    result = await broker.append_many(stream, [NewEntry(b"delta"), NewEntry(b"end", end=True)])

    info = await broker.info(stream)
    assert info is not None
    assert info.last_id == result.ids[-1]
    assert info.ttl_s is not None
    assert 100 < info.ttl_s <= 120
    assert await backend.tracked_score(broker, stream) is None


async def test_append_many_entry_after_end_stays_tracked(backend: Backend) -> None:
    broker = backend.make(stream_ttl_s=120)
    stream = new_stream()

    await broker.append_many(stream, [NewEntry(b"end", end=True), NewEntry(b"late")])

    info = await broker.info(stream)
    assert info is not None
    assert info.length == 2
    assert info.ttl_s is not None
    assert await backend.tracked_score(broker, stream) is not None


async def test_append_many_tracks_stream(backend: Backend, broker: Broker) -> None:
    stream = new_stream()

    await broker.append_many(stream, entries(2))

    assert await backend.tracked_score(broker, stream) is not None


async def test_append_many_empty_raises(broker: Broker) -> None:
    with pytest.raises(ValueError, match="at least one entry"):
        await broker.append_many(new_stream(), [])


async def test_append_many_closed_broker_raises(broker: Broker) -> None:
    await broker.close()

    with pytest.raises(BrokerUnavailable) as raised:
        await broker.append_many(new_stream(), entries(1))

    assert str(raised.value) == "broker is closed"


async def test_append_many_recreates_deleted_stream(backend: Backend, broker: Broker) -> None:
    stream = new_stream()
    await broker.append_many(stream, entries(1))
    assert await broker.delete_idle(60, now_s=time.time() + 120) == [stream]

    result = await broker.append_many(stream, entries(2, prefix="again"))

    assert len(result.ids) == 2
    assert await backend.tracked_score(broker, stream) is not None
    stored = await broker.read(stream, "0-0", count=10, block_ms=0)
    assert [entry.data for entry in stored] == [b"again 0", b"again 1"]
