"""The multi-stream read (``read_many``, ``read_group``), run against every broker kind."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from broker.base import Broker
from broker.keys import stream_key
from conduit.errors import BrokerUnavailable, InvalidArgument
from tests.broker.conftest import Backend

WAIT_TIMEOUT_S = 10.0
LONG_BLOCK_MS = 5000
# Bound on the keys tried while looking for two streams of one read group.
MAX_GROUP_SEARCH_KEYS = 5000


def new_stream() -> str:
    return stream_key(123, str(uuid.uuid4()))


def streams_of_one_group(broker: Broker, count: int) -> list[str]:
    """Return ``count`` distinct stream keys that share one read group (one hash slot on a cluster)."""
    by_group: dict[str, list[str]] = {}
    for _ in range(MAX_GROUP_SEARCH_KEYS):
        stream = new_stream()
        members = by_group.setdefault(broker.read_group(stream), [])
        members.append(stream)
        if len(members) == count:
            return members
    raise AssertionError(f"no {count} streams of one read group among {MAX_GROUP_SEARCH_KEYS} keys")


async def test_read_many_returns_entries_by_stream(broker: Broker) -> None:
    first, second, idle = streams_of_one_group(broker, 3)
    first_ids = [await broker.append(first, f"a{index}".encode(), end=False) for index in range(2)]
    second_id = await broker.append(second, b"b0", end=False)

    found = await broker.read_many({first: "0-0", second: "0-0", idle: "0-0"}, count=10, block_ms=0)

    assert set(found) == {first, second}
    assert [entry.id for entry in found[first]] == first_ids
    assert [entry.data for entry in found[first]] == [b"a0", b"a1"]
    assert [entry.id for entry in found[second]] == [second_id]


async def test_read_many_starts_after_each_position(broker: Broker) -> None:
    first, second = streams_of_one_group(broker, 2)
    first_ids = [await broker.append(first, b"a", end=False) for _ in range(3)]
    second_ids = [await broker.append(second, b"b", end=False) for _ in range(3)]

    found = await broker.read_many({first: first_ids[1], second: second_ids[2]}, count=10, block_ms=0)

    assert {stream: [entry.id for entry in entries] for stream, entries in found.items()} == {first: first_ids[2:]}


async def test_read_many_count_is_per_stream(broker: Broker) -> None:
    first, second = streams_of_one_group(broker, 2)
    first_ids = [await broker.append(first, b"a", end=False) for _ in range(3)]
    second_ids = [await broker.append(second, b"b", end=False) for _ in range(3)]

    found = await broker.read_many({first: "0-0", second: "0-0"}, count=2, block_ms=0)

    assert [entry.id for entry in found[first]] == first_ids[:2]
    assert [entry.id for entry in found[second]] == second_ids[:2]


async def test_read_many_nothing_new_returns_empty(broker: Broker) -> None:
    first, second = streams_of_one_group(broker, 2)

    found = await asyncio.wait_for(broker.read_many({first: "0-0", second: "0-0"}, count=10, block_ms=50), WAIT_TIMEOUT_S)

    assert found == {}


async def test_read_many_blocked_is_woken_by_append_to_any(backend: Backend, broker: Broker) -> None:
    first, second = streams_of_one_group(broker, 2)
    reading = asyncio.create_task(broker.read_many({first: "0-0", second: "0-0"}, count=10, block_ms=LONG_BLOCK_MS))
    await backend.wait_until_reader_blocked()

    entry_id = await broker.append(second, b"live", end=False)
    found = await asyncio.wait_for(reading, WAIT_TIMEOUT_S)

    assert list(found) == [second]
    assert [entry.id for entry in found[second]] == [entry_id]


async def test_read_many_cancelled_leaves_broker_usable(backend: Backend, broker: Broker) -> None:
    first, second = streams_of_one_group(broker, 2)
    reading = asyncio.create_task(broker.read_many({first: "0-0", second: "0-0"}, count=10, block_ms=LONG_BLOCK_MS))
    await backend.wait_until_reader_blocked()

    reading.cancel()
    with pytest.raises(asyncio.CancelledError):
        await reading
    entry_id = await broker.append(first, b"after", end=False)

    found = await asyncio.wait_for(broker.read_many({first: "0-0", second: "0-0"}, count=10, block_ms=0), WAIT_TIMEOUT_S)
    assert [entry.id for entry in found[first]] == [entry_id]


async def test_read_many_waiting_is_ended_by_close(backend: Backend) -> None:
    broker = backend.make()
    first, second = streams_of_one_group(broker, 2)
    reading = asyncio.create_task(broker.read_many({first: "0-0", second: "0-0"}, count=10, block_ms=LONG_BLOCK_MS))
    await backend.wait_until_reader_blocked()

    await broker.close()

    with pytest.raises(BrokerUnavailable, match="broker is closed"):
        await asyncio.wait_for(reading, WAIT_TIMEOUT_S)


async def test_read_many_empty_positions_raises(broker: Broker) -> None:
    with pytest.raises(ValueError, match="positions must name at least one stream"):
        await broker.read_many({}, count=10, block_ms=0)


async def test_read_many_invalid_position_raises(broker: Broker) -> None:
    with pytest.raises(InvalidArgument, match="invalid entry id 'later'"):
        await broker.read_many({new_stream(): "later"}, count=10, block_ms=0)


async def test_read_many_invalid_later_position_raises(broker: Broker) -> None:
    first, second = streams_of_one_group(broker, 2)

    with pytest.raises(InvalidArgument, match="invalid entry id '1-2-3'"):
        await broker.read_many({first: "0-0", second: "1-2-3"}, count=10, block_ms=0)


async def test_read_many_position_beyond_64_bits_raises(broker: Broker) -> None:
    with pytest.raises(InvalidArgument, match="invalid entry id '18446744073709551616-0'"):
        await broker.read_many({new_stream(): "18446744073709551616-0"}, count=10, block_ms=0)


async def test_read_many_padded_position_reads_after(broker: Broker) -> None:
    first, second = streams_of_one_group(broker, 2)
    first_ids = [await broker.append(first, b"a", end=False) for _ in range(3)]
    second_id = await broker.append(second, b"b", end=False)

    found = await broker.read_many({first: "00" + first_ids[1], second: "0"}, count=10, block_ms=0)

    assert {stream: [entry.id for entry in entries] for stream, entries in found.items()} == {
        first: first_ids[2:],
        second: [second_id],
    }


async def test_read_many_zero_count_raises(broker: Broker) -> None:
    with pytest.raises(ValueError, match="count must be at least 1, got 0"):
        await broker.read_many({new_stream(): "0-0"}, count=0, block_ms=0)


def test_read_group_is_stable_per_stream(broker: Broker) -> None:
    stream = new_stream()

    assert broker.read_group(stream) == broker.read_group(stream)


def test_read_group_per_slot_on_cluster_only(backend: Backend, broker: Broker) -> None:
    groups = {broker.read_group(new_stream()) for _ in range(50)}

    if backend.cluster:
        assert len(groups) > 1
    else:
        assert groups == {""}
