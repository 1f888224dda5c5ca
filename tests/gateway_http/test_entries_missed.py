"""The ``entries_missed`` control event for history that trimming removed, on both brokers."""

from __future__ import annotations

import dataclasses
import json
import uuid
from collections.abc import AsyncIterator, Callable

import httpx
import pytest

from broker import create_broker
from broker.base import Broker
from conduit.settings import BrokerSettings
from conduit.v1alpha import publish_pb2
from gateway_http.events import SseEvent
from gateway_http.hub import HubFeed
from gateway_http.server import GatewayServer
from tests.gateway_http.helpers import BROKER_LIMITS, ORG_ID, FrameReader, make_settings, publish
from tests.gateway_http.hub_helpers import collect, data_line

MAX_STREAM_LEN = 10
# Redis trims MAXLEN ~ only in whole nodes of 100 entries, so a stream needs
# a few hundred entries before its start is surely gone.
PUBLISHED = 250


@pytest.fixture
async def short_broker(broker_redis_url: str | None) -> AsyncIterator[Broker]:
    """A broker of each kind that keeps about MAX_STREAM_LEN entries per stream."""
    instance = create_broker(BrokerSettings(redis_url=broker_redis_url, max_stream_len=MAX_STREAM_LEN, **BROKER_LIMITS))
    yield instance
    await instance.close()


@pytest.fixture
async def hub(short_broker: Broker) -> AsyncIterator[HubFeed]:
    feed = HubFeed(short_broker, max_stream_len=MAX_STREAM_LEN)
    yield feed
    await feed.close()


async def publish_long_stream(broker: Broker, channel_id: str, count: int = PUBLISHED) -> list[str]:
    """Publish a START and ``count - 1`` DELTAs; return the ids the stream still holds."""
    await publish(broker, channel_id, sequence=0, phase=publish_pb2.PHASE_START)
    for sequence in range(1, count):
        await publish(broker, channel_id, sequence=sequence)
    stream = f"stream:{ORG_ID}:{channel_id}"
    return [entry.id for entry in await broker.read(stream, "0-0", count=count, block_ms=0)]


def control_type(event: SseEvent) -> str:
    data = json.loads(data_line(event))
    assert list(data) == ["event_type", "message_id", "control_type"]
    assert data["event_type"] == "control"
    assert uuid.UUID(data["message_id"]).version == 4
    return str(data["control_type"])


async def test_entries_missed_joining_trimmed_stream(
    hub: HubFeed, short_broker: Broker, stream: str, channel_id: str
) -> None:
    remaining = await publish_long_stream(short_broker, channel_id)
    assert len(remaining) < PUBLISHED
    subscription = await hub.subscribe(stream, "0-0")

    events = await collect(subscription, len(remaining) + 1)

    assert events[0].kind == "control"
    assert control_type(events[0]) == "entries_missed"
    assert [event.entry_id for event in events[1:]] == remaining
    await subscription.close()


async def test_entries_missed_resuming_before_oldest_kept(
    hub: HubFeed, short_broker: Broker, stream: str, channel_id: str
) -> None:
    first_id = await publish(short_broker, channel_id, sequence=0, phase=publish_pb2.PHASE_START)
    remaining = await publish_long_stream(short_broker, channel_id)
    assert first_id not in remaining
    subscription = await hub.subscribe(stream, first_id)

    events = await collect(subscription, len(remaining) + 1)

    assert control_type(events[0]) == "entries_missed"
    assert [event.entry_id for event in events[1:]] == remaining
    await subscription.close()


async def test_entries_missed_not_sent_resuming_within_kept(
    hub: HubFeed, short_broker: Broker, stream: str, channel_id: str
) -> None:
    remaining = await publish_long_stream(short_broker, channel_id)
    subscription = await hub.subscribe(stream, remaining[-4])

    events = await collect(subscription, 3)

    assert [event.kind for event in events] == ["stream"] * 3
    assert [event.entry_id for event in events] == remaining[-3:]
    await subscription.close()


async def test_entries_missed_not_sent_for_untrimmed_stream(
    hub: HubFeed, short_broker: Broker, stream: str, channel_id: str
) -> None:
    ids = [await publish(short_broker, channel_id, sequence=0, phase=publish_pb2.PHASE_START)]
    ids += [await publish(short_broker, channel_id, sequence=sequence) for sequence in range(1, 4)]
    subscription = await hub.subscribe(stream, "1-0")

    events = await collect(subscription, len(ids))

    assert [event.entry_id for event in events] == ids
    await subscription.close()


async def test_entries_missed_not_sent_for_stream_without_start(
    hub: HubFeed, short_broker: Broker, stream: str, channel_id: str
) -> None:
    # A publisher that never sends START leaves a stream that starts with a DELTA, untrimmed.
    ids = [await publish(short_broker, channel_id, sequence=sequence) for sequence in range(1, MAX_STREAM_LEN)]
    subscription = await hub.subscribe(stream, "0-0")

    events = await collect(subscription, len(ids))

    assert [event.entry_id for event in events] == ids
    await subscription.close()


async def test_entries_missed_control_frame_over_http(
    short_broker: Broker, rsa_keys: tuple[str, str], channel_id: str, mint: Callable[..., str]
) -> None:
    base = make_settings(rsa_keys[1], None)
    settings = dataclasses.replace(base, broker=dataclasses.replace(base.broker, max_stream_len=MAX_STREAM_LEN))
    remaining = await publish_long_stream(short_broker, channel_id)
    server = GatewayServer(settings, short_broker)
    await server.start()
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=10) as http:
            params = {"token": mint(channel_id), "channel_id": channel_id}
            async with http.stream("GET", f"/events/{ORG_ID}", params=params) as response:
                reader = FrameReader(response)
                assert await reader.next_frame() == b"retry: 500\n\n"
                control = await reader.next_frame()
                first_entry = await reader.next_frame()
    finally:
        await server.stop(grace_s=2)

    lines = control.decode().split("\n")
    assert lines[0] == "event: control"
    data = json.loads(lines[1].removeprefix("data: "))
    assert data["control_type"] == "entries_missed"
    assert lines[2:] == ["", ""]
    assert first_entry.startswith(f"event: stream\nid: {remaining[0]}\n".encode())
