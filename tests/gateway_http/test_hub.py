"""HubFeed over both brokers: hand-over from history to live, fan-out, bounds and the reader's lifetime."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest
from prometheus_client import REGISTRY

from broker.base import Broker
from broker.instrumented import InstrumentedBroker
from broker.keys import stream_key
from conduit.v1alpha import publish_pb2
from gateway_http.feed import SubscriberLagging
from gateway_http.hub import HubFeed
from tests.gateway_http.helpers import BROKER_LIMITS, ORG_ID, publish, wait_until
from tests.gateway_http.hub_helpers import collect, collect_until_end, sequences

MAX_STREAM_LEN = 1200

HubFactory = Callable[..., HubFeed]


@pytest.fixture
async def make_hub(broker: Broker) -> AsyncIterator[HubFactory]:
    """Build HubFeeds over ``broker``; each is closed at teardown."""
    hubs: list[HubFeed] = []

    def make(**options: Any) -> HubFeed:
        hub = HubFeed(broker, max_stream_len=MAX_STREAM_LEN, **options)
        hubs.append(hub)
        return hub

    yield make
    for hub in hubs:
        await hub.close()


@pytest.fixture
def hub(make_hub: HubFactory) -> HubFeed:
    return make_hub()


def test_broker_limits_allow_fast_publishing() -> None:
    # The tests below publish hundreds of entries at once.
    assert BROKER_LIMITS["rate_limit"] >= 1000


async def test_hub_history_then_live(hub: HubFeed, broker: Broker, stream: str, channel_id: str) -> None:
    history = [await publish(broker, channel_id, sequence=sequence) for sequence in range(3)]
    subscription = await hub.subscribe(stream, "0-0")

    replayed = await collect(subscription, 3)
    live = [await publish(broker, channel_id, sequence=3), await publish(broker, channel_id, sequence=4)]
    received = replayed + await collect(subscription, 2)

    assert [event.entry_id for event in received] == history + live
    assert sequences(received) == [0, 1, 2, 3, 4]
    await subscription.close()


async def test_hub_resume_after_id(hub: HubFeed, broker: Broker, stream: str, channel_id: str) -> None:
    ids = [await publish(broker, channel_id, sequence=sequence) for sequence in range(4)]
    subscription = await hub.subscribe(stream, ids[1])

    received = await collect(subscription, 2)

    assert [event.entry_id for event in received] == ids[2:]
    await subscription.close()


async def test_hub_replay_is_paged(make_hub: HubFactory, broker: Broker, stream: str, channel_id: str) -> None:
    ids = [await publish(broker, channel_id, sequence=sequence) for sequence in range(5)]
    subscription = await make_hub(replay_page=2).subscribe(stream, "0-0")

    batches = [await subscription.next_batch(5) for _ in range(3)]

    assert [[event.entry_id for event in batch] for batch in batches] == [ids[0:2], ids[2:4], ids[4:5]]
    await subscription.close()


async def test_hub_handover_live_entries_during_replay(
    make_hub: HubFactory, broker: Broker, stream: str, channel_id: str
) -> None:
    hub = make_hub(replay_page=2)
    await publish(broker, channel_id, sequence=0, phase=publish_pb2.PHASE_START)
    for sequence in (1, 2):
        await publish(broker, channel_id, sequence=sequence)
    watcher = await hub.subscribe(stream, "0-0")
    assert sequences(await collect(watcher, 3)) == [0, 1, 2]

    joiner = await hub.subscribe(stream, "0-0")
    # The first batch joins the live channel and replays one page.
    first_page = await joiner.next_batch(5)
    for sequence in (3, 4, 5):
        await publish(broker, channel_id, sequence=sequence)
    # Once the watcher has them, the joiner's queue contains them too, while its
    # replay is still one page behind and its next page reaches past them.
    assert sequences(await collect(watcher, 3)) == [3, 4, 5]
    rest = await collect(joiner, 6 - len(first_page))

    assert sequences(first_page) == [0, 1]
    assert sequences(first_page + rest) == [0, 1, 2, 3, 4, 5]
    await watcher.close()
    await joiner.close()


async def test_hub_join_mid_stream_no_gap_no_duplicate(
    make_hub: HubFactory, broker: Broker, stream: str, channel_id: str
) -> None:
    hub = make_hub(replay_page=7)
    total = 120
    ids: list[str] = []
    joined: list[tuple[int, asyncio.Task[list[Any]]]] = []

    async def join(after_index: int) -> None:
        after_id = "0-0" if after_index < 0 else ids[after_index]
        subscription = await hub.subscribe(stream, after_id)
        joined.append((after_index, asyncio.create_task(collect_until_end(subscription))))

    await join(-1)
    for sequence in range(total):
        phase = publish_pb2.PHASE_END if sequence == total - 1 else publish_pb2.PHASE_DELTA
        ids.append(await publish(broker, channel_id, sequence=sequence, phase=phase))
        if sequence % 15 == 7:
            # One subscriber from the start and one resuming a few entries back, both mid-stream.
            await join(-1)
            await join(sequence - 3)
        await asyncio.sleep(0)

    for after_index, task in joined:
        events = await task
        assert [event.entry_id for event in events] == ids[after_index + 1:], f"joined after {after_index}"
        assert sequences(events) == list(range(after_index + 1, total))


async def test_hub_channel_churn_no_gap_no_duplicate(hub: HubFeed, broker: Broker) -> None:
    """Channels leave and join one shared reader while entries arrive on all of them."""
    channel_ids = [str(uuid.uuid4()) for _ in range(12)]
    streams = [stream_key(ORG_ID, channel_id) for channel_id in channel_ids]
    rounds = 8
    ids: dict[str, list[str]] = {stream: [] for stream in streams}
    received: dict[str, list[Any]] = {stream: [] for stream in streams}
    subscriptions = {stream: await hub.subscribe(stream, "0-0") for stream in streams}

    for round_index in range(rounds):
        for channel_id, stream in zip(channel_ids, streams, strict=True):
            ids[stream].append(await publish(broker, channel_id, sequence=round_index))
        # Every third channel closes after this round and opens again from its last event.
        for stream in streams[round_index % 3::3]:
            events = await collect(subscriptions[stream], len(ids[stream]) - len(received[stream]))
            received[stream].extend(events)
            await subscriptions[stream].close()
            subscriptions[stream] = await hub.subscribe(stream, received[stream][-1].entry_id)
        await asyncio.sleep(0)

    for stream in streams:
        received[stream].extend(await collect(subscriptions[stream], rounds - len(received[stream])))
        assert [event.entry_id for event in received[stream]] == ids[stream], stream
        assert sequences(received[stream]) == list(range(rounds)), stream
        await subscriptions[stream].close()


async def test_hub_subscribers_get_identical_sequences(
    hub: HubFeed, broker: Broker, stream: str, channel_id: str
) -> None:
    subscriptions = [await hub.subscribe(stream, "0-0") for _ in range(10)]
    tasks = [asyncio.create_task(collect_until_end(subscription)) for subscription in subscriptions]
    await wait_until(lambda: hub.subscriber_count(stream) == 10)

    for sequence in range(30):
        await publish(broker, channel_id, sequence=sequence)
    await publish(broker, channel_id, sequence=30, phase=publish_pb2.PHASE_END)
    results = [await task for task in tasks]

    assert sequences(results[0]) == list(range(31))
    for events in results[1:]:
        assert [event.frame for event in events] == [event.frame for event in results[0]]
    for subscription in subscriptions:
        await subscription.close()


async def test_hub_encodes_live_entries_once(hub: HubFeed, broker: Broker, stream: str, channel_id: str) -> None:
    subscriptions = [await hub.subscribe(stream, "0-0") for _ in range(5)]
    tasks = [asyncio.create_task(collect(subscription, 8)) for subscription in subscriptions]
    await wait_until(lambda: hub.subscriber_count(stream) == 5)
    encoded_before = REGISTRY.get_sample_value("conduit_gateway_encoded_entries_total") or 0

    for sequence in range(8):
        await publish(broker, channel_id, sequence=sequence)
    results = [await task for task in tasks]

    assert REGISTRY.get_sample_value("conduit_gateway_encoded_entries_total") == encoded_before + 8
    # Every subscriber received the very same frame objects.
    for events in results[1:]:
        assert all(mine is first for mine, first in zip(events, results[0], strict=True))
    for subscription in subscriptions:
        await subscription.close()


async def test_hub_concurrent_joins_open_channel_once(broker: Broker, stream: str, channel_id: str) -> None:
    # The broker fixture comes from create_broker, which records each call in the broker metrics.
    assert isinstance(broker, InstrumentedBroker)
    hub = HubFeed(broker, max_stream_len=MAX_STREAM_LEN)
    info_calls = {"operation": "info"}
    info_before = REGISTRY.get_sample_value("conduit_broker_duration_seconds_count", info_calls) or 0
    try:
        subscriptions = [await hub.subscribe(stream, "0-0") for _ in range(20)]
        tasks = [asyncio.create_task(collect(subscription, 1)) for subscription in subscriptions]
        await wait_until(lambda: hub.subscriber_count(stream) == 20)

        assert REGISTRY.get_sample_value("conduit_broker_duration_seconds_count", info_calls) == info_before + 1
        await publish(broker, channel_id, sequence=0)
        results = [await task for task in tasks]
        assert all(sequences(events) == [0] for events in results)
        for subscription in subscriptions:
            await subscription.close()
    finally:
        await hub.close()


async def test_hub_slow_subscriber_dropped_others_continue(
    make_hub: HubFactory, broker: Broker, stream: str, channel_id: str
) -> None:
    hub = make_hub(buffer_events=5)
    lagging_before = REGISTRY.get_sample_value("conduit_gateway_lagging_subscribers_total") or 0
    slow = await hub.subscribe(stream, "0-0")
    assert await slow.next_batch(0.1) == []
    fast = await hub.subscribe(stream, "0-0")
    fast_task = asyncio.create_task(collect_until_end(fast))
    await wait_until(lambda: hub.subscriber_count(stream) == 2)

    for sequence in range(20):
        await publish(broker, channel_id, sequence=sequence)
        await asyncio.sleep(0)
    await publish(broker, channel_id, sequence=20, phase=publish_pb2.PHASE_END)

    assert sequences(await fast_task) == list(range(21))
    with pytest.raises(SubscriberLagging, match="fell more than 5 events behind"):
        await slow.next_batch(1)
    assert hub.subscriber_count(stream) == 1
    assert REGISTRY.get_sample_value("conduit_gateway_lagging_subscribers_total") == lagging_before + 1
    await slow.close()
    await fast.close()


async def test_hub_reader_stopped_after_last_subscriber_leaves(hub: HubFeed, broker: Broker, stream: str) -> None:
    other = stream_key(ORG_ID, str(uuid.uuid4()))
    first, second = [await hub.subscribe(stream, "0-0") for _ in range(2)]
    third = await hub.subscribe(other, "0-0")
    for subscription in (first, second, third):
        assert await subscription.next_batch(0.05) == []

    assert hub.active_streams == {stream, other}
    assert hub.reader_count == 1

    await first.close()
    assert hub.active_streams == {stream, other}
    await second.close()
    assert hub.active_streams == {other}
    assert hub.reader_count == 1
    await third.close()
    assert hub.active_streams == frozenset()
    await wait_until(lambda: hub.reader_count == 0)


async def test_hub_reader_stops_before_first_step(hub: HubFeed, stream: str) -> None:
    # A zero timeout opens the channel, which creates its reader's task, and
    # returns at once. Closing next, with no await between, cancels that task
    # before its first step, as a client that leaves right after joining does.
    subscription = await hub.subscribe(stream, "0-0")
    assert await subscription.next_batch(0) == []
    assert hub.active_streams == {stream}

    await subscription.close()

    assert hub.active_streams == frozenset()
    await wait_until(lambda: hub.reader_count == 0)


async def test_hub_reader_restarts_for_new_subscriber(
    hub: HubFeed, broker: Broker, stream: str, channel_id: str
) -> None:
    first = await hub.subscribe(stream, "0-0")
    assert await first.next_batch(0.05) == []
    await first.close()
    await wait_until(lambda: hub.reader_count == 0)

    second = await hub.subscribe(stream, "0-0")
    assert await second.next_batch(0.05) == []
    entry_id = await publish(broker, channel_id, sequence=1)

    assert [event.entry_id for event in await collect(second, 1)] == [entry_id]
    assert hub.reader_count == 1
    await second.close()


async def test_hub_new_channel_joins_running_read(hub: HubFeed, broker: Broker, stream: str) -> None:
    # The first channel's reader is blocked when the second channel arrives.
    first = await hub.subscribe(stream, "0-0")
    assert await first.next_batch(0.05) == []
    other_channel = str(uuid.uuid4())
    second = await hub.subscribe(stream_key(ORG_ID, other_channel), "0-0")
    assert await second.next_batch(0.05) == []

    entry_id = await publish(broker, other_channel, sequence=1)

    assert [event.entry_id for event in await collect(second, 1)] == [entry_id]
    assert hub.reader_count == 1
    await first.close()
    await second.close()


async def test_hub_closed_subscription_raises(hub: HubFeed, stream: str) -> None:
    subscription = await hub.subscribe(stream, "0-0")
    await subscription.close()
    await subscription.close()

    with pytest.raises(RuntimeError, match="subscription is closed"):
        await subscription.next_batch(0.1)


async def test_hub_cancelled_next_batch_leaves_hub_usable(
    hub: HubFeed, broker: Broker, stream: str, channel_id: str
) -> None:
    subscription = await hub.subscribe(stream, "0-0")
    waiting = asyncio.create_task(subscription.next_batch(10))
    await wait_until(lambda: hub.subscriber_count(stream) == 1)

    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    await subscription.close()
    entry_id = await publish(broker, channel_id, sequence=1)

    fresh = await hub.subscribe(stream, "0-0")
    assert [event.entry_id for event in await collect(fresh, 1)] == [entry_id]
    await fresh.close()


async def test_hub_closed_hub_rejects_subscribe(hub: HubFeed, stream: str) -> None:
    live = await hub.subscribe(stream, "0-0")
    assert await live.next_batch(0.05) == []

    await hub.close()

    with pytest.raises(Exception, match="the gateway is shutting down"):
        await live.next_batch(0.1)
    with pytest.raises(Exception, match="the gateway is shutting down"):
        await hub.subscribe(stream, "0-0")
    assert hub.reader_count == 0


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"retry_budget_s": -1}, "retry_budget_s must be at least 0, got -1"),
        ({"read_count": 0}, "read_count must be at least 1, got 0"),
        ({"max_block_ms": 0}, "max_block_ms must be at least 1, got 0"),
        ({"replay_page": 0}, "replay_page must be at least 1, got 0"),
        ({"buffer_events": 0}, "buffer_events must be at least 1, got 0"),
    ],
    ids=["negative budget", "zero count", "zero block", "zero page", "zero buffer"],
)
@pytest.mark.parametrize("broker_kind", ["memory"], indirect=True)
def test_hub_rejects_bad_options(broker: Broker, options: dict[str, float], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        HubFeed(broker, max_stream_len=MAX_STREAM_LEN, **options)  # type: ignore[arg-type]
