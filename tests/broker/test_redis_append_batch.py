"""Batched appends on a single Redis: missing scripts, outages and cancellation while a batch is in flight.

A batch is held in flight with CLIENT PAUSE WRITE, which makes Redis postpone
every EVALSHA until CLIENT UNPAUSE while reads such as INFO still run.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio
from redis.asyncio import BlockingConnectionPool
from redis.connection import PythonRespSerializer
from redis.exceptions import NoScriptError
from redis.utils import HIREDIS_AVAILABLE

from broker.base import Broker, NewEntry
from broker.keys import stream_key
from broker.redis_broker import RedisBroker
from broker.redis_evalsha import run_evalsha_batch
from conduit.errors import BrokerUnavailable
from tests.broker.conftest import TEST_SETTINGS, Backend
from tests.redis_process import RedisProcess

# Guards against hangs only: each awaited step is expected to end long before.
STEP_TIMEOUT_S = 10.0
PAUSE_MS = 60_000
ECHO_SCRIPT = "return ARGV[1]"


def new_stream() -> str:
    return stream_key(42, str(uuid.uuid4()))


@pytest.fixture
async def raw(redis_backend: Backend) -> AsyncIterator[redis.asyncio.Redis]:
    """The backend's plain client; unpauses Redis at teardown so that a failed test leaves it writable."""
    assert redis_backend.raw is not None
    yield redis_backend.raw
    await redis_backend.raw.client_unpause()


@pytest.fixture
async def one_connection_client(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    """A client whose pool has a single connection, so every batch reuses the one before it."""
    pool = BlockingConnectionPool.from_url(redis_url, max_connections=1, timeout=STEP_TIMEOUT_S, socket_timeout=STEP_TIMEOUT_S)
    client = redis.asyncio.Redis.from_pool(pool)
    yield client
    await client.aclose()


async def wait_until_postponed(raw: redis.asyncio.Redis, count: int) -> None:
    """Return once ``count`` clients wait for Redis to run a postponed command."""
    deadline = time.monotonic() + STEP_TIMEOUT_S
    while (await raw.info("clients"))["blocked_clients"] < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"fewer than {count} clients postponed within the time-out")
        await asyncio.sleep(0.01)


async def test_batch_returns_replies_in_order(one_connection_client: redis.asyncio.Redis) -> None:
    sha = await one_connection_client.script_load(ECHO_SCRIPT)

    replies = await run_evalsha_batch(one_connection_client, [(sha, [], [word]) for word in ["a", "é", b"\x00", 7]])

    assert replies == [b"a", "é".encode(), b"\x00", b"7"]


async def test_batch_noscript_fails_only_its_call(one_connection_client: redis.asyncio.Redis) -> None:
    sha = await one_connection_client.script_load(ECHO_SCRIPT)
    missing_sha = "0" * 40

    replies = await run_evalsha_batch(
        one_connection_client, [(sha, [], ["first"]), (missing_sha, [], ["lost"]), (sha, [], ["last"])]
    )

    assert replies[0] == b"first"
    assert isinstance(replies[1], NoScriptError)
    assert replies[2] == b"last"


@pytest.mark.skipif(not HIREDIS_AVAILABLE, reason="hiredis is not installed")
def test_hiredis_packs_as_redis_py() -> None:
    import hiredis

    command = ("EVALSHA", "a" * 40, 3, "conduit:{é}", "rate", "dedup", b"\x00\xff data", 1200, -1, 0)
    python_packer = PythonRespSerializer(buffer_cutoff=1 << 20, encode=redis.asyncio.Redis().get_encoder().encode)

    assert hiredis.pack_command(command) == b"".join(python_packer.pack(*command))


async def test_cancelled_batch_leaves_clean_connection(
    raw: redis.asyncio.Redis, one_connection_client: redis.asyncio.Redis
) -> None:
    sha = await one_connection_client.script_load(ECHO_SCRIPT)
    await raw.client_pause(PAUSE_MS, all=False)
    batch = asyncio.create_task(run_evalsha_batch(one_connection_client, [(sha, [], ["stale 1"]), (sha, [], ["stale 2"])]))
    await wait_until_postponed(raw, 1)

    batch.cancel()
    with pytest.raises(asyncio.CancelledError):
        await batch
    # Sent while Redis still postpones the stale calls, so that a reused
    # connection would read their replies first.
    next_batch = asyncio.create_task(run_evalsha_batch(one_connection_client, [(sha, [], ["fresh"])]))
    for _ in range(10):
        await asyncio.sleep(0)
    await raw.client_unpause()

    assert await asyncio.wait_for(next_batch, STEP_TIMEOUT_S) == [b"fresh"]


async def test_cancelled_caller_keeps_batch_replies_paired(
    redis_backend: Backend, raw: redis.asyncio.Redis
) -> None:
    broker = redis_backend.make()
    streams = [new_stream() for _ in range(4)]
    for stream in streams:
        await broker.append(stream, b"tracked", end=False)
    await raw.client_pause(PAUSE_MS, all=False)
    appends = [asyncio.create_task(broker.append(stream, stream.encode(), end=False)) for stream in streams]
    await wait_until_postponed(raw, 1)

    appends[0].cancel()
    appends[2].cancel()
    await raw.client_unpause()
    results = await asyncio.wait_for(asyncio.gather(*appends, return_exceptions=True), STEP_TIMEOUT_S)

    assert isinstance(results[0], asyncio.CancelledError)
    assert isinstance(results[2], asyncio.CancelledError)
    for stream in streams:
        # The batch was already sent, so a cancelled caller's entry is stored all the same.
        assert await raw.xlen(stream) == 2
    for stream in streams:
        entry_id = await asyncio.wait_for(broker.append(stream, b"after", end=False), STEP_TIMEOUT_S)
        entries = await broker.read(stream, "0-0", count=10, block_ms=0)
        assert (entries[-1].id, entries[-1].data) == (entry_id, b"after")


async def test_close_during_batch_fails_callers(redis_backend: Backend, raw: redis.asyncio.Redis) -> None:
    broker = redis_backend.make()
    stream = new_stream()
    await broker.append(stream, b"tracked", end=False)
    await raw.client_pause(PAUSE_MS, all=False)
    append = asyncio.create_task(broker.append(stream, b"in flight", end=False))
    await wait_until_postponed(raw, 1)

    await asyncio.wait_for(broker.close(), STEP_TIMEOUT_S)

    with pytest.raises(BrokerUnavailable, match="broker is closed"):
        await asyncio.wait_for(append, STEP_TIMEOUT_S)


async def test_noscript_mid_batch_reruns_only_missing(
    redis_backend: Backend, raw: redis.asyncio.Redis
) -> None:
    broker = redis_backend.make()
    streams = [new_stream() for _ in range(3)]
    for stream in streams:
        await broker.append(stream, b"tracked", end=False)
    await raw.script_flush()
    # append.lua is back while append_many.lua stays missing, so one batch
    # contains calls that run and calls that get NOSCRIPT.
    await broker.append(streams[0], b"reloads append.lua", end=False)
    await raw.client_pause(PAUSE_MS, all=False)
    calls = [
        broker.append(streams[0], b"single 1", end=False),
        broker.append_many(streams[1], [NewEntry(b"many 1"), NewEntry(b"many 2")]),
        broker.append(streams[2], b"single 2", end=False),
    ]
    tasks = [asyncio.create_task(call) for call in calls]
    await wait_until_postponed(raw, 1)
    await raw.client_unpause()

    results = await asyncio.wait_for(asyncio.gather(*tasks), STEP_TIMEOUT_S)

    assert len(results[1].ids) == 2
    assert await raw.xlen(streams[0]) == 3
    assert await raw.xlen(streams[1]) == 3
    assert await raw.xlen(streams[2]) == 2
    stored = [entry.data for entry in await broker.read(streams[1], "0-0", count=10, block_ms=0)]
    assert stored == [b"tracked", b"many 1", b"many 2"]


async def test_redis_stopped_mid_batch_raises_unavailable(
    redis_process: RedisProcess, redis_backend: Backend, raw: redis.asyncio.Redis
) -> None:
    broker: Broker = redis_backend.make()
    streams = [new_stream() for _ in range(3)]
    for stream in streams:
        await broker.append(stream, b"tracked", end=False)
    await raw.client_pause(PAUSE_MS, all=False)
    tasks = [asyncio.create_task(broker.append(stream, b"in flight", end=False)) for stream in streams]
    await wait_until_postponed(raw, 1)

    redis_process.stop()
    try:
        results = await asyncio.wait_for(asyncio.gather(*tasks, return_exceptions=True), STEP_TIMEOUT_S)
    finally:
        redis_process.start()

    for result in results:
        assert isinstance(result, BrokerUnavailable)
        assert str(result) == (
            "Redis append failed (ConnectionError): the message may or may not be stored,"
            " so retry it with the same message_id"
        )
    entry_id = await asyncio.wait_for(broker.append(streams[0], b"after restart", end=False), STEP_TIMEOUT_S)
    entries = await broker.read(streams[0], "0-0", count=10, block_ms=0)
    assert [(entry.id, entry.data) for entry in entries] == [(entry_id, b"after restart")]


async def test_killed_batch_connection_reconnects(redis_backend: Backend, raw: redis.asyncio.Redis) -> None:
    broker = redis_backend.make()
    stream = new_stream()
    await broker.append(stream, b"tracked", end=False)

    # The batch task keeps its connection between batches, so this kills it while idle.
    killed = await raw.client_kill_filter(_type="normal", skipme=True)
    entry_id = await asyncio.wait_for(broker.append(stream, b"after kill", end=False), STEP_TIMEOUT_S)

    assert killed >= 1
    entries = await broker.read(stream, "0-0", count=10, block_ms=0)
    assert (entries[-1].id, entries[-1].data) == (entry_id, b"after kill")
    await broker.close()


async def test_close_during_batch_fails_nowait_appends(redis_backend: Backend, raw: redis.asyncio.Redis) -> None:
    broker = redis_backend.make()
    stream = new_stream()
    await broker.append(stream, b"tracked", end=False)
    await raw.client_pause(PAUSE_MS, all=False)
    future = broker.append_nowait(stream, b"in flight")
    assert future is not None
    await wait_until_postponed(raw, 1)

    await asyncio.wait_for(broker.close(), STEP_TIMEOUT_S)

    with pytest.raises(BrokerUnavailable, match="broker is closed"):
        await asyncio.wait_for(future, STEP_TIMEOUT_S)


async def test_batch_past_deadline_raises_unavailable(redis_url: str, raw: redis.asyncio.Redis) -> None:
    # The batch connection has no socket timeout of its own: the pool's, 0.3 s here, bounds each batch.
    client = redis.asyncio.Redis.from_url(redis_url, socket_timeout=0.3)
    broker = RedisBroker(client, TEST_SETTINGS)
    stream = new_stream()
    try:
        await broker.append(stream, b"tracked", end=False)
        await raw.client_pause(PAUSE_MS, all=False)
        future = broker.append_nowait(stream, b"postponed")
        waiting = asyncio.create_task(broker.append(stream, b"also postponed", end=False))

        results = await asyncio.wait_for(asyncio.gather(future, waiting, return_exceptions=True), STEP_TIMEOUT_S)
        await raw.client_unpause()
        entry_id = await asyncio.wait_for(broker.append(stream, b"after the pause", end=False), STEP_TIMEOUT_S)
    finally:
        await raw.client_unpause()
        await broker.close()

    for result in results:
        assert isinstance(result, BrokerUnavailable)
        assert str(result) == (
            "Redis append failed (TimeoutError): the message may or may not be stored,"
            " so retry it with the same message_id"
        )
    entries = await raw.xrange(stream)
    # The postponed appends ran once Redis resumed: a timeout leaves their outcome unknown, as documented.
    assert entries[-1] == (entry_id.encode(), {b"data": b"after the pause"})
