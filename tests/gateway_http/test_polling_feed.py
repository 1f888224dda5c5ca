"""PollingFeed over both brokers: history, live entries, time-outs, outages and cancellation."""

from __future__ import annotations

import asyncio

import pytest

from broker.base import Broker
from conduit.errors import BrokerUnavailable
from gateway_http.polling_feed import PollingFeed
from tests.gateway_http.helpers import publish
from tests.redis_process import RedisProcess


async def test_polling_feed_reads_history_in_order(broker: Broker, stream: str, channel_id: str) -> None:
    ids = [await publish(broker, channel_id, sequence=sequence) for sequence in range(3)]
    subscription = await PollingFeed(broker).subscribe(stream, "0-0")

    batch = await subscription.next_batch(1)

    assert [entry.id for entry in batch] == ids
    await subscription.close()


async def test_polling_feed_starts_after_id(broker: Broker, stream: str, channel_id: str) -> None:
    ids = [await publish(broker, channel_id, sequence=sequence) for sequence in range(3)]
    subscription = await PollingFeed(broker).subscribe(stream, ids[0])

    batch = await subscription.next_batch(1)

    assert [entry.id for entry in batch] == ids[1:]
    await subscription.close()


async def test_polling_feed_batches_bounded_by_read_count(broker: Broker, stream: str, channel_id: str) -> None:
    ids = [await publish(broker, channel_id, sequence=sequence) for sequence in range(5)]
    subscription = await PollingFeed(broker, read_count=2).subscribe(stream, "0-0")

    batches = [await subscription.next_batch(1) for _ in range(3)]

    assert [[entry.id for entry in batch] for batch in batches] == [ids[0:2], ids[2:4], ids[4:5]]
    await subscription.close()


async def test_polling_feed_idle_returns_empty(broker: Broker, stream: str) -> None:
    subscription = await PollingFeed(broker).subscribe(stream, "0-0")

    assert await asyncio.wait_for(subscription.next_batch(0.1), 5) == []
    await subscription.close()


async def test_polling_feed_wakes_for_live_entry(broker: Broker, stream: str, channel_id: str) -> None:
    subscription = await PollingFeed(broker).subscribe(stream, "0-0")
    waiting = asyncio.create_task(subscription.next_batch(10))
    await asyncio.sleep(0.1)

    entry_id = await publish(broker, channel_id, sequence=1)
    batch = await asyncio.wait_for(waiting, 5)

    assert [entry.id for entry in batch] == [entry_id]
    await subscription.close()


async def test_polling_feed_cancelled_read_leaves_broker_usable(broker: Broker, stream: str, channel_id: str) -> None:
    subscription = await PollingFeed(broker).subscribe(stream, "0-0")
    waiting = asyncio.create_task(subscription.next_batch(10))
    await asyncio.sleep(0.1)

    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await subscription.close()

    entry_id = await publish(broker, channel_id, sequence=1)
    fresh = await PollingFeed(broker).subscribe(stream, "0-0")
    assert [entry.id for entry in await fresh.next_batch(1)] == [entry_id]
    await fresh.close()


async def test_polling_feed_closed_subscription_raises(broker: Broker, stream: str) -> None:
    subscription = await PollingFeed(broker).subscribe(stream, "0-0")
    await subscription.close()
    await subscription.close()

    with pytest.raises(RuntimeError, match="subscription is closed"):
        await subscription.next_batch(0.1)


@pytest.mark.parametrize("broker_kind", ["redis"], indirect=True)
async def test_polling_feed_gives_up_after_retry_budget(
    broker: Broker, stream: str, redis_process: RedisProcess
) -> None:
    subscription = await PollingFeed(broker, retry_budget_s=0.5).subscribe(stream, "0-0")
    await asyncio.to_thread(redis_process.stop)

    results: list[list[object]] = []
    with pytest.raises(BrokerUnavailable, match="broker unreachable for"):
        async with asyncio.timeout(15):
            while True:
                results.append(await subscription.next_batch(0.1))

    # Within the budget an outage reads as an idle stream, so the caller keeps its connection alive.
    assert all(batch == [] for batch in results)
    with pytest.raises(RuntimeError, match="has failed"):
        await subscription.next_batch(0.1)
    await subscription.close()


@pytest.mark.parametrize(
    "options",
    [{"retry_budget_s": -1}, {"read_count": 0}, {"max_block_ms": 0}],
    ids=["negative budget", "zero count", "zero block"],
)
@pytest.mark.parametrize("broker_kind", ["memory"], indirect=True)
def test_polling_feed_rejects_bad_options(broker: Broker, options: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="retry_budget_s must be >= 0"):
        PollingFeed(broker, **options)  # type: ignore[arg-type]
