"""Broker.append_nowait on every broker: same outcomes as append, or None where it cannot start at once."""

from __future__ import annotations

import asyncio
import gc
import uuid

import pytest

from broker.base import Broker
from broker.keys import stream_key, tracking_key
from conduit.errors import BrokerUnavailable, RateLimited
from tests.broker.conftest import Backend

# Guards against hangs only: each future is expected to settle long before.
SETTLE_TIMEOUT_S = 10.0


def new_stream() -> str:
    return stream_key(42, str(uuid.uuid4()))


async def settle(future: asyncio.Future[str] | None) -> str:
    assert future is not None
    return await asyncio.wait_for(future, SETTLE_TIMEOUT_S)


async def test_append_nowait_after_append_stores_entry(backend: Backend, broker: Broker) -> None:
    stream = new_stream()
    first_id = await broker.append(stream, b"first", end=False)

    future = broker.append_nowait(stream, b"second")

    if backend.cluster:
        # Every append on a cluster is its own call, so there is nothing to start without awaiting.
        assert future is None
        return
    second_id = await settle(future)
    entries = await broker.read(stream, "0-0", count=10, block_ms=0)
    assert [(entry.id, entry.data) for entry in entries] == [(first_id, b"first"), (second_id, b"second")]


async def test_append_nowait_untracked_stream(backend: Backend, broker: Broker) -> None:
    stream = new_stream()

    future = broker.append_nowait(stream, b"first")

    if backend.raw is not None:
        # Redis needs the tracking ZADD before the stream's first append, which takes a round trip.
        assert future is None
        assert await broker.info(stream) is None
        return
    entry_id = await settle(future)
    entries = await broker.read(stream, "0-0", count=10, block_ms=0)
    assert [(entry.id, entry.data) for entry in entries] == [(entry_id, b"first")]
    assert await backend.tracked_score(broker, stream) is not None


async def test_append_nowait_rate_limited(backend: Backend) -> None:
    broker = backend.make(rate_limit=1, rate_window_s=60)
    stream = new_stream()
    await broker.append(stream, b"the only one", end=False)

    future = broker.append_nowait(stream, b"one too many")

    if backend.cluster:
        assert future is None
        return
    with pytest.raises(RateLimited, match=f"publish rate limit exceeded for {stream}: at most 1 publishes per 60 s"):
        await settle(future)
    info = await broker.info(stream)
    assert info is not None
    assert info.length == 1


async def test_append_nowait_duplicate_returns_original(backend: Backend) -> None:
    broker = backend.make(dedup_window_s=60)
    stream = new_stream()
    message_id = str(uuid.uuid4())
    original_id = await broker.append(stream, b"original", end=False, message_id=message_id)

    future = broker.append_nowait(stream, b"retry", message_id=message_id)

    if backend.cluster:
        assert future is None
        return
    assert await settle(future) == original_id
    entries = await broker.read(stream, "0-0", count=10, block_ms=0)
    assert [(entry.id, entry.data) for entry in entries] == [(original_id, b"original")]


async def test_append_nowait_vanished_stream_tracked_again(redis_backend: Backend) -> None:
    broker = redis_backend.make()
    raw = redis_backend.raw
    assert raw is not None
    stream = new_stream()
    await broker.append(stream, b"deleted by cleanup", end=False)
    # What a cleanup sweep does to an idle stream between two publishes.
    await raw.delete(stream)
    await raw.zrem(tracking_key(stream), stream)

    entry_id = await settle(broker.append_nowait(stream, b"after cleanup"))

    entries = await broker.read(stream, "0-0", count=10, block_ms=0)
    assert [(entry.id, entry.data) for entry in entries] == [(entry_id, b"after cleanup")]
    assert await raw.zscore(tracking_key(stream), stream) is not None


async def test_append_nowait_after_close_raises(backend: Backend) -> None:
    broker = backend.make()
    stream = new_stream()
    await broker.append(stream, b"tracked", end=False)
    await broker.close()

    with pytest.raises(BrokerUnavailable, match="broker is closed"):
        broker.append_nowait(stream, b"too late")


async def test_append_nowait_cancelled_while_retracking(
    redis_backend: Backend, caplog: pytest.LogCaptureFixture
) -> None:
    broker = redis_backend.make(rate_limit=2, rate_window_s=60)
    raw = redis_backend.raw
    assert raw is not None
    stream = new_stream()
    await broker.append(stream, b"uses one of two", end=False)
    await raw.delete(stream)
    first = broker.append_nowait(stream, b"tracks it again")
    second = broker.append_nowait(stream, b"then over the limit")
    assert first is not None and second is not None
    retracking: list[asyncio.Task[str]] = []

    class CancelOnSecondTask(set):
        """Cancels ``second`` as soon as its retracking task starts: what a caller's asyncio.wait_for does on time-out."""

        def add(self, task: asyncio.Task[str]) -> None:
            super().add(task)
            retracking.append(task)
            if len(retracking) == 2:
                second.cancel()

    broker.inner._retracking_tasks = CancelOnSecondTask()  # type: ignore[attr-defined]

    await settle(first)
    await asyncio.wait(retracking, timeout=SETTLE_TIMEOUT_S)
    retracking.clear()
    gc.collect()

    # The second append was over the limit, and its RateLimited has no future left to go to.
    assert await raw.xlen(stream) == 1
    assert [record.getMessage() for record in caplog.records if "never retrieved" in record.getMessage()] == []
