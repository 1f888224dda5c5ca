"""HubFeed on Redis: connections and blocked reads per subscriber count, and broker outages."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio

from broker.base import Broker
from broker.keys import stream_key
from conduit.errors import BrokerUnavailable
from conduit.v1alpha import publish_pb2
from gateway_http.feed import Subscription
from gateway_http.hub import HubFeed
from tests.gateway_http.helpers import ORG_ID, publish, wait_until
from tests.gateway_http.hub_helpers import collect, collect_until_end, sequences
from tests.redis_process import RedisProcess

pytestmark = pytest.mark.parametrize("broker_kind", ["redis"], indirect=True)

MAX_STREAM_LEN = 1200
# The name that broker.factory gives every connection of the broker's pool.
CLIENT_NAME = "conduit"


@pytest.fixture
async def raw_redis(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis.from_url(redis_url, socket_timeout=5)
    yield client
    await client.aclose()


async def broker_connections(raw_redis: redis.asyncio.Redis) -> int:
    """Return the number of connections of the broker's pool that are open on Redis."""
    return sum(1 for client in await raw_redis.client_list() if client.get("name") == CLIENT_NAME)


async def blocked_clients(raw_redis: redis.asyncio.Redis) -> int:
    return int((await raw_redis.info("clients"))["blocked_clients"])


async def test_hub_redis_connections_independent_of_subscribers(
    broker: Broker, raw_redis: redis.asyncio.Redis
) -> None:
    hub = HubFeed(broker, max_stream_len=MAX_STREAM_LEN)
    channels = [str(uuid.uuid4()) for _ in range(5)]
    for channel in channels:
        for sequence in range(3):
            await publish(broker, channel, sequence=sequence)
    subscriptions: list[Subscription] = []

    async def add_subscribers(per_channel: int) -> None:
        # Each joins and replays its history before the next starts.
        for channel in channels:
            for _ in range(per_channel):
                subscription = await hub.subscribe(stream_key(ORG_ID, channel), "0-0")
                assert sequences(await collect(subscription, 3)) == [0, 1, 2]
                subscriptions.append(subscription)

    await add_subscribers(1)
    await wait_until(lambda: hub.reader_count == 1)
    async with asyncio.timeout(10):
        while await blocked_clients(raw_redis) != 1:
            await asyncio.sleep(0.02)
    connections_with_few = await broker_connections(raw_redis)

    await add_subscribers(10)
    for channel in channels:
        await publish(broker, channel, sequence=3)
    for subscription in subscriptions:
        assert sequences(await collect(subscription, 1)) == [3]
    connections_with_many = await broker_connections(raw_redis)

    assert len(subscriptions) == 55
    assert connections_with_many == connections_with_few
    # One XREAD blocks for all five channels and all their subscribers.
    assert await blocked_clients(raw_redis) == 1
    for subscription in subscriptions:
        await subscription.close()
    await hub.close()


async def test_hub_redis_short_outage_loses_and_repeats_nothing(
    broker: Broker, redis_process: RedisProcess, stream: str, channel_id: str
) -> None:
    hub = HubFeed(broker, max_stream_len=MAX_STREAM_LEN, retry_budget_s=30)
    subscriptions = [await hub.subscribe(stream, "0-0") for _ in range(3)]
    tasks = [asyncio.create_task(collect_until_end(subscription, timeout_s=30)) for subscription in subscriptions]
    await wait_until(lambda: hub.subscriber_count(stream) == 3)
    ids = [
        await publish(broker, channel_id, sequence=0, phase=publish_pb2.PHASE_START),
        await publish(broker, channel_id, sequence=1),
    ]

    # The snapshot keeps the stream, as a Redis with persistence would.
    await asyncio.to_thread(redis_process.stop, save=True)
    await asyncio.sleep(0.5)
    await asyncio.to_thread(redis_process.start)
    ids.append(await publish(broker, channel_id, sequence=2))
    ids.append(await publish(broker, channel_id, sequence=3, phase=publish_pb2.PHASE_END))
    results = [await task for task in tasks]

    for events in results:
        assert [event.entry_id for event in events] == ids
        assert sequences(events) == [0, 1, 2, 3]
    for subscription in subscriptions:
        await subscription.close()
    await hub.close()


async def test_hub_redis_long_outage_fails_subscribers(
    broker: Broker, redis_process: RedisProcess, stream: str
) -> None:
    hub = HubFeed(broker, max_stream_len=MAX_STREAM_LEN, retry_budget_s=0.5)
    subscriptions = [await hub.subscribe(stream, "0-0") for _ in range(2)]
    for subscription in subscriptions:
        assert await subscription.next_batch(0.05) == []

    await asyncio.to_thread(redis_process.stop)

    for subscription in subscriptions:
        with pytest.raises(BrokerUnavailable, match="broker unreachable for"):
            async with asyncio.timeout(20):
                while True:
                    assert await subscription.next_batch(0.2) == []
    assert hub.active_streams == frozenset()
    assert hub.reader_count == 0
    for subscription in subscriptions:
        await subscription.close()
    await hub.close()


async def test_hub_redis_joining_during_outage_waits_then_replays(
    broker: Broker, redis_process: RedisProcess, stream: str, channel_id: str
) -> None:
    hub = HubFeed(broker, max_stream_len=MAX_STREAM_LEN, retry_budget_s=30)
    entry_id = await publish(broker, channel_id, sequence=0)
    await asyncio.to_thread(redis_process.stop, save=True)
    subscription = await hub.subscribe(stream, "0-0")

    # While Redis is down the subscription reads as idle.
    assert await subscription.next_batch(0.3) == []
    await asyncio.to_thread(redis_process.start)
    events = await collect(subscription, 1, timeout_s=20)

    assert [event.entry_id for event in events] == [entry_id]
    await subscription.close()
    await hub.close()


async def test_hub_redis_cancelled_consumers_end_and_leave(
    broker: Broker, raw_redis: redis.asyncio.Redis, channel_id: str
) -> None:
    hub = HubFeed(broker, max_stream_len=MAX_STREAM_LEN)
    history_channel = str(uuid.uuid4())
    for sequence in range(600):
        await publish(broker, history_channel, sequence=sequence)
    cycles = iter(range(400))

    async def cycle(number: int) -> None:
        # Every third consumer is cancelled during its history replay, the others while live.
        channel = history_channel if number % 3 == 0 else channel_id
        subscription = await hub.subscribe(stream_key(ORG_ID, channel), "0-0")

        async def consume() -> None:
            while True:
                await subscription.next_batch(1)

        consumer = asyncio.create_task(consume())
        await asyncio.sleep((number % 7) * 0.002)
        consumer.cancel()
        # A cancellation that redis-py swallowed would leave the consumer waiting here.
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(consumer, 5)
        await subscription.close()

    async def worker() -> None:
        for number in cycles:
            await cycle(number)

    await asyncio.gather(*(worker() for _ in range(10)))

    assert hub.active_streams == frozenset()
    await wait_until(lambda: hub.reader_count == 0)
    # The pool keeps what the ten concurrent consumers borrowed at most.
    assert await broker_connections(raw_redis) <= 10 + 2
    await hub.close()
