"""``ReadCursors`` as the positions of repeated ``read_many`` calls, run against every broker kind."""

from __future__ import annotations

import pytest

from broker.base import Broker
from broker.cursors import ReadCursors
from conduit.errors import InvalidArgument
from tests.broker.conftest import Backend
from tests.broker.test_multi_read import new_stream, streams_of_one_group


def ids_by_stream(found: dict) -> dict[str, list[str]]:
    return {stream: [entry.id for entry in entries] for stream, entries in found.items()}


def test_cursors_record_set_and_deleted_streams() -> None:
    cursors = ReadCursors({"a": "0-0", "b": "0-0"})
    cursors.clear_changes()

    cursors["a"] = "1-0"
    cursors["b"] = "0-0"
    del cursors["a"]
    cursors["c"] = "2-0"

    assert list(cursors.changes) == ["a", "c"]
    assert dict(cursors) == {"b": "0-0", "c": "2-0"}


def test_cursors_clear_changes_forgets_them() -> None:
    cursors = ReadCursors({"a": "0-0"})

    cursors.clear_changes()

    assert list(cursors.changes) == []
    assert dict(cursors) == {"a": "0-0"}


async def test_read_many_follows_moved_cursor(broker: Broker) -> None:
    first, second = streams_of_one_group(broker, 2)
    first_ids = [await broker.append(first, b"a", end=False) for _ in range(3)]
    cursors = ReadCursors({first: "0-0", second: "0-0"})
    assert ids_by_stream(await broker.read_many(cursors, count=1, block_ms=0)) == {first: first_ids[:1]}

    cursors[first] = first_ids[0]
    second_id = await broker.append(second, b"b", end=False)

    found = await broker.read_many(cursors, count=10, block_ms=0)
    assert ids_by_stream(found) == {first: first_ids[1:], second: [second_id]}


async def test_read_many_unchanged_cursors_read_again(broker: Broker) -> None:
    first, second = streams_of_one_group(broker, 2)
    entry_id = await broker.append(first, b"a", end=False)
    cursors = ReadCursors({first: "0-0", second: "0-0"})

    for _ in range(2):
        found = await broker.read_many(cursors, count=10, block_ms=0)
        assert ids_by_stream(found) == {first: [entry_id]}


async def test_read_many_skips_deleted_cursor(broker: Broker) -> None:
    first, second = streams_of_one_group(broker, 2)
    cursors = ReadCursors({first: "0-0", second: "0-0"})
    await broker.read_many(cursors, count=10, block_ms=0)

    del cursors[first]
    await broker.append(first, b"gone", end=False)
    second_id = await broker.append(second, b"kept", end=False)

    found = await broker.read_many(cursors, count=10, block_ms=0)
    assert ids_by_stream(found) == {second: [second_id]}


async def test_read_many_includes_added_cursor(broker: Broker) -> None:
    first, second, third = streams_of_one_group(broker, 3)
    cursors = ReadCursors({first: "0-0"})
    await broker.read_many(cursors, count=10, block_ms=0)

    del cursors[first]
    cursors[second] = "0-0"
    cursors[third] = "0-0"
    third_id = await broker.append(third, b"c", end=False)
    second_id = await broker.append(second, b"b", end=False)

    found = await broker.read_many(cursors, count=10, block_ms=0)
    assert ids_by_stream(found) == {second: [second_id], third: [third_id]}


async def test_read_many_readded_cursor_starts_at_new_position(broker: Broker) -> None:
    first, second = streams_of_one_group(broker, 2)
    first_ids = [await broker.append(first, b"a", end=False) for _ in range(3)]
    cursors = ReadCursors({first: "0-0", second: "0-0"})
    await broker.read_many(cursors, count=10, block_ms=0)

    del cursors[first]
    cursors[first] = first_ids[1]

    found = await broker.read_many(cursors, count=10, block_ms=0)
    assert ids_by_stream(found) == {first: first_ids[2:]}


async def test_read_many_invalid_cursor_then_fixed(broker: Broker) -> None:
    first, second = streams_of_one_group(broker, 2)
    entry_id = await broker.append(second, b"b", end=False)
    cursors = ReadCursors({first: "0-0"})
    await broker.read_many(cursors, count=10, block_ms=0)

    cursors[second] = "later"
    with pytest.raises(InvalidArgument, match="invalid entry id 'later'"):
        await broker.read_many(cursors, count=10, block_ms=0)

    cursors[second] = "0"
    found = await broker.read_many(cursors, count=10, block_ms=0)
    assert ids_by_stream(found) == {second: [entry_id]}


async def test_read_many_cursors_shared_by_two_brokers(backend: Backend, broker: Broker) -> None:
    if backend.redis_url is None:
        pytest.skip("each embedded broker has streams of its own")
    first, second = streams_of_one_group(broker, 2)
    first_id = await broker.append(first, b"a", end=False)
    other = backend.make()
    cursors = ReadCursors({first: "0-0", second: "0-0"})
    await broker.read_many(cursors, count=10, block_ms=0)

    cursors[first] = first_id
    second_id = await broker.append(second, b"b", end=False)

    found = await other.read_many(cursors, count=10, block_ms=0)
    assert ids_by_stream(found) == {second: [second_id]}


async def test_read_many_cursors_across_slots_raise(backend: Backend, broker: Broker) -> None:
    if not backend.cluster:
        pytest.skip("every stream shares one read group outside Redis Cluster")
    first = new_stream()
    other_slot = next(stream for stream in (new_stream() for _ in range(100)) if broker.read_group(stream) != broker.read_group(first))
    cursors = ReadCursors({first: "0-0"})
    await broker.read_many(cursors, count=10, block_ms=0)

    cursors[other_slot] = "0-0"
    with pytest.raises(ValueError, match="in 2 Redis Cluster hash slots"):
        await broker.read_many(cursors, count=10, block_ms=0)

    del cursors[first]
    entry_id = await broker.append(other_slot, b"x", end=False)
    found = await broker.read_many(cursors, count=10, block_ms=0)
    assert ids_by_stream(found) == {other_slot: [entry_id]}
