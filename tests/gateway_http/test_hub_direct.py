"""The hub's direct writes: live events framed once per pass and written to the transport a subscription offers."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from prometheus_client import REGISTRY

from broker.base import Broker
from conduit.v1alpha import publish_pb2
from gateway_http.events import SseEvent
from gateway_http.feed import Subscription
from gateway_http.hub import HubFeed
from tests.gateway_http.helpers import publish, wait_until
from tests.gateway_http.hub_helpers import collect, sequences

MAX_STREAM_LEN = 1200
WAIT_S = 10.0


def frame(events: list[SseEvent]) -> bytes | None:
    """Frame stream events as the gateway's chunks would be, but recognisably; decline the END."""
    if any(event.kind != "stream" or event.is_end for event in events):
        return None
    return b"<" + b"".join(event.frame for event in events) + b">"


class OfferedTransport(asyncio.WriteTransport):
    """A transport that keeps every write and can report buffered bytes, closing, or fail its writes."""

    def __init__(self) -> None:
        super().__init__()
        self.written: list[bytes] = []
        self.buffered = 0
        self.closing = False
        self.error: Exception | None = None

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self.error is not None:
            raise self.error
        self.written.append(bytes(data))

    def get_write_buffer_size(self) -> int:
        return self.buffered

    def is_closing(self) -> bool:
        return self.closing


class Consumer:
    """Waits in ``next_batch`` as an SSE response does, with a sink that records what it accepts."""

    def __init__(self, subscription: Subscription, transport: OfferedTransport | None, timeout_s: float) -> None:
        self.subscription = subscription
        self.sunk: list[SseEvent] = []
        self.batches: list[list[SseEvent]] = []
        self.offers = 0
        self.transport = transport
        subscription.set_sink(self.sink, self.offer)
        self._task = asyncio.create_task(self._run(timeout_s))

    def offer(self) -> asyncio.WriteTransport | None:
        self.offers += 1
        return self.transport

    def sink(self, events: list[SseEvent]) -> bool:
        if any(event.kind != "stream" or event.is_end for event in events):
            return False
        self.sunk.extend(events)
        return True

    async def _run(self, timeout_s: float) -> None:
        while True:
            self.batches.append(await self.subscription.next_batch(timeout_s))

    async def close(self) -> None:
        self._task.cancel()
        await asyncio.wait([self._task])
        await self.subscription.close()


@pytest.fixture
async def hub(broker: Broker) -> AsyncIterator[HubFeed]:
    hub = HubFeed(broker, max_stream_len=MAX_STREAM_LEN, frame_live=frame)
    yield hub
    await hub.close()


async def live_consumer(
    hub: HubFeed, broker: Broker, stream: str, channel_id: str, transport: OfferedTransport | None, timeout_s: float = 30
) -> Consumer:
    """Return a consumer that has joined the live channel and waits, after one replayed START."""
    await publish(broker, channel_id, sequence=0, phase=publish_pb2.PHASE_START)
    subscription = await hub.subscribe(stream, "0-0")
    assert sequences(await collect(subscription, 1)) == [0]
    consumer = Consumer(subscription, transport, timeout_s)
    await wait_until(lambda: consumer.offers == 1, timeout_s=WAIT_S)
    return consumer


def sent_stream_events() -> float:
    return REGISTRY.get_sample_value("conduit_gateway_events_sent_total", {"event": "stream"}) or 0.0


def written_sequences(transport: OfferedTransport) -> list[int]:
    return [int(chunk.split(b'"sequence":')[1].split(b",")[0].split(b"}")[0]) for chunk in transport.written]


async def test_live_events_written_to_offered_transport(
    hub: HubFeed, broker: Broker, stream: str, channel_id: str
) -> None:
    transport = OfferedTransport()
    consumer = await live_consumer(hub, broker, stream, channel_id, transport)
    before = sent_stream_events()

    for sequence in (1, 2, 3):
        await publish(broker, channel_id, sequence=sequence)
        await wait_until(lambda count=sequence: len(transport.written) == count, timeout_s=WAIT_S)

    assert written_sequences(transport) == [1, 2, 3]
    assert all(chunk.startswith(b"<event: stream") and chunk.endswith(b">") for chunk in transport.written)
    assert consumer.sunk == []
    assert consumer.batches == []
    assert sent_stream_events() == before + 3
    await consumer.close()


async def test_buffered_transport_hands_over_to_sink_in_order(
    hub: HubFeed, broker: Broker, stream: str, channel_id: str
) -> None:
    transport = OfferedTransport()
    consumer = await live_consumer(hub, broker, stream, channel_id, transport)

    await publish(broker, channel_id, sequence=1)
    await wait_until(lambda: len(transport.written) == 1, timeout_s=WAIT_S)
    transport.buffered = 10
    await publish(broker, channel_id, sequence=2)
    await wait_until(lambda: len(consumer.sunk) == 1, timeout_s=WAIT_S)
    # An empty buffer again does not bring the transport back within this
    # wait: the sink may still hold a send that is not on the wire yet.
    transport.buffered = 0
    await publish(broker, channel_id, sequence=3)
    await wait_until(lambda: len(consumer.sunk) == 2, timeout_s=WAIT_S)

    assert written_sequences(transport) == [1]
    assert sequences(consumer.sunk) == [2, 3]
    await consumer.close()


async def test_closing_transport_is_not_written(hub: HubFeed, broker: Broker, stream: str, channel_id: str) -> None:
    transport = OfferedTransport()
    transport.closing = True
    consumer = await live_consumer(hub, broker, stream, channel_id, transport)

    await publish(broker, channel_id, sequence=1)
    await wait_until(lambda: len(consumer.sunk) == 1, timeout_s=WAIT_S)

    assert transport.written == []
    await consumer.close()


async def test_failing_write_leaves_events_to_sink(hub: HubFeed, broker: Broker, stream: str, channel_id: str) -> None:
    transport = OfferedTransport()
    transport.error = ConnectionResetError("peer reset")
    consumer = await live_consumer(hub, broker, stream, channel_id, transport)

    await publish(broker, channel_id, sequence=1)
    await wait_until(lambda: len(consumer.sunk) == 1, timeout_s=WAIT_S)

    assert sequences(consumer.sunk) == [1]
    await consumer.close()


async def test_end_wakes_consumer(hub: HubFeed, broker: Broker, stream: str, channel_id: str) -> None:
    transport = OfferedTransport()
    consumer = await live_consumer(hub, broker, stream, channel_id, transport)

    await publish(broker, channel_id, sequence=1)
    await publish(broker, channel_id, sequence=2, phase=publish_pb2.PHASE_END)
    await wait_until(lambda: any(event.is_end for batch in consumer.batches for event in batch), timeout_s=WAIT_S)

    returned = [event for batch in consumer.batches for event in batch]
    # Both entries may arrive in one read, and a list with the END is never written directly.
    assert written_sequences(transport) + sequences(returned) == [1, 2]
    assert consumer.sunk == []
    await consumer.close()


async def test_no_transport_without_sink(hub: HubFeed, broker: Broker, stream: str, channel_id: str) -> None:
    transport = OfferedTransport()
    consumer = await live_consumer(hub, broker, stream, channel_id, transport)
    consumer.subscription.set_sink(None, consumer.offer)

    await publish(broker, channel_id, sequence=1)
    await wait_until(lambda: len(consumer.batches) == 1, timeout_s=WAIT_S)

    assert transport.written == []
    assert sequences(consumer.batches[0]) == [1]
    await consumer.close()


async def test_keepalive_deadline_counts_from_last_direct_write(
    hub: HubFeed, broker: Broker, stream: str, channel_id: str
) -> None:
    transport = OfferedTransport()
    consumer = await live_consumer(hub, broker, stream, channel_id, transport, timeout_s=2.0)
    subscription = consumer.subscription
    assert hasattr(subscription, "deadline_passed")

    await publish(broker, channel_id, sequence=1)
    await wait_until(lambda: len(transport.written) == 1, timeout_s=WAIT_S)
    subscription.deadline_passed()
    await asyncio.sleep(0)

    assert consumer.batches == []
    await wait_until(lambda: consumer.batches == [[]], timeout_s=WAIT_S)
    await consumer.close()
