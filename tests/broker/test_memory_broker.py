"""Embedded-broker behaviour that the contract suite cannot reach through Redis."""

from __future__ import annotations

import pytest

from broker.ids import parse_entry_id
from broker.memory import MemoryBroker
from conduit.settings import BrokerSettings


async def test_append_ids_increase_when_clock_goes_back(monkeypatch: pytest.MonkeyPatch) -> None:
    broker = MemoryBroker(BrokerSettings())
    clock_s = iter([2_000_000.0, 1_000_000.0, 1_000_000.0])
    monkeypatch.setattr("broker.memory.time.time", lambda: next(clock_s))

    ids = [await broker.append("stream:1:clock", b"x", end=False) for _ in range(3)]

    assert ids == ["2000000000-0", "2000000000-1", "2000000000-2"]
    assert parse_entry_id(ids[0]) < parse_entry_id(ids[1]) < parse_entry_id(ids[2])
    await broker.close()


async def test_tracked_streams_returns_copy() -> None:
    broker = MemoryBroker(BrokerSettings())
    await broker.append("stream:1:copy", b"x", end=False)

    tracked = broker.tracked_streams()
    tracked.clear()

    assert list(broker.tracked_streams()) == ["stream:1:copy"]
    await broker.close()


async def test_remembered_ids_dropped_after_window(monkeypatch: pytest.MonkeyPatch) -> None:
    broker = MemoryBroker(BrokerSettings(rate_limit=100, dedup_window_s=60))
    clock_s = [1000.0]
    monkeypatch.setattr("broker.memory.time.monotonic", lambda: clock_s[0])
    for index in range(50):
        await broker.append("stream:1:dedup", b"x", end=False, message_id=f"message-{index}")
    remembered_before = len(broker._remembered)

    clock_s[0] += 61
    await broker.delete_idle(3600)

    assert remembered_before == 50
    assert len(broker._remembered) == 0
    await broker.close()
