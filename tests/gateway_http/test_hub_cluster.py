"""HubFeed on Redis Cluster: one reader per hash slot in use, each stopping with its last channel."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import pytest

from broker import create_broker
from broker.base import Broker
from broker.keys import stream_key
from conduit.settings import BrokerSettings
from conduit.v1alpha import publish_pb2
from gateway_http.hub import HubFeed
from tests.gateway_http.helpers import BROKER_LIMITS, ORG_ID, publish, wait_until
from tests.gateway_http.hub_helpers import collect, collect_until_end, sequences

MAX_STREAM_LEN = 1200
MAX_SEARCH_KEYS = 1000


@pytest.fixture
async def cluster_broker(redis_cluster_url: str) -> AsyncIterator[Broker]:
    instance = create_broker(BrokerSettings(redis_url=redis_cluster_url, redis_cluster=True, **BROKER_LIMITS))
    yield instance
    await instance.close()


@pytest.fixture
async def hub(cluster_broker: Broker) -> AsyncIterator[HubFeed]:
    feed = HubFeed(cluster_broker, max_stream_len=MAX_STREAM_LEN)
    yield feed
    await feed.close()


def channels_in_distinct_slots(broker: Broker, count: int) -> list[str]:
    """Return ``count`` channel ids whose streams hash to different slots."""
    channels: dict[str, str] = {}
    for _ in range(MAX_SEARCH_KEYS):
        channel = str(uuid.uuid4())
        channels.setdefault(broker.read_group(stream_key(ORG_ID, channel)), channel)
        if len(channels) == count:
            return list(channels.values())
    raise AssertionError(f"fewer than {count} slots among {MAX_SEARCH_KEYS} channels")


async def test_hub_cluster_reader_per_slot(hub: HubFeed, cluster_broker: Broker) -> None:
    channels = channels_in_distinct_slots(cluster_broker, 3)
    for channel in channels:
        await publish(cluster_broker, channel, sequence=0, phase=publish_pb2.PHASE_START)
    subscriptions = [await hub.subscribe(stream_key(ORG_ID, channel), "0-0") for channel in channels]
    for subscription in subscriptions:
        assert sequences(await collect(subscription, 1)) == [0]
    tasks = [asyncio.create_task(collect_until_end(subscription)) for subscription in subscriptions]

    for channel in channels:
        await publish(cluster_broker, channel, sequence=1)
        await publish(cluster_broker, channel, sequence=2, phase=publish_pb2.PHASE_END)

    assert hub.reader_count == 3
    for task in tasks:
        assert sequences(await task) == [1, 2]
    for subscription in subscriptions:
        await subscription.close()
    assert hub.active_streams == frozenset()
    await wait_until(lambda: hub.reader_count == 0)
