"""The SDK's publishers over gRPC and HTTP against in-process servers on Redis."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable

import pytest

from broker import create_broker
from broker.keys import stream_key
from conduit.sdk import (
    GrpcPublisher,
    HttpPublisher,
    Publisher,
    PublishRejected,
    PublishUnreachable,
    StreamEvent,
    Subscriber,
)
from conduit.settings import BrokerSettings
from conduit.v1alpha import publish_pb2
from publish_grpc.server import PublishServer
from tests.redis_process import free_port
from tests.sdk.conftest import ORG_ID
from tests.services import LocalService

_TIMEOUT_S = 15

PublisherFactory = Callable[[LocalService, str], Publisher]


def grpc_publisher(service: LocalService, token: str) -> Publisher:
    return GrpcPublisher(service.grpc_target, token, org_id=ORG_ID)


def http_publisher(service: LocalService, token: str) -> Publisher:
    return HttpPublisher(service.publish_url, token, org_id=ORG_ID)


both_transports = pytest.mark.parametrize("make", [grpc_publisher, http_publisher], ids=["grpc", "http"])


async def _read_all(service: LocalService, channel_id: str) -> list[StreamEvent]:
    events: list[StreamEvent] = []
    async with asyncio.timeout(_TIMEOUT_S), Subscriber(
        service.gateway_url, service.subscriber_token(channel_id), org_id=ORG_ID, channel_id=channel_id
    ) as subscriber:
        async for event in subscriber:
            assert isinstance(event, StreamEvent)
            events.append(event)
    return events


async def _stored_phases(service: LocalService, channel_id: str) -> list[int]:
    entries = await service.broker.read(stream_key(ORG_ID, channel_id), "0-0", count=100, block_ms=0)
    return [publish_pb2.PublishRequest.FromString(entry.data).phase for entry in entries]


@both_transports
async def test_stream_sends_start_deltas_end_with_sequences(
    service: LocalService, channel_id: str, make: PublisherFactory
) -> None:
    async with make(service, service.publisher_token()) as publisher, asyncio.timeout(_TIMEOUT_S):
        async with publisher.stream(channel_id) as stream:
            await stream.delta({"value": "hello,"})
            await stream.delta({"value": " world!"})

    events = await _read_all(service, channel_id)

    assert [event.phase for event in events] == ["PHASE_START", "PHASE_DELTA", "PHASE_DELTA", "PHASE_END"]
    assert [event.sequence for event in events] == [1, 2, 3, 4]
    assert [event.payload for event in events] == [{}, {"value": "hello,"}, {"value": " world!"}, {}]
    assert len({event.message_id for event in events}) == 4
    assert [event.id for event in events] == stream.stream_ids
    assert stream.finished


@both_transports
async def test_send_one_message_returns_stream_id(service: LocalService, channel_id: str, make: PublisherFactory) -> None:
    async with make(service, service.publisher_token()) as publisher, asyncio.timeout(_TIMEOUT_S):
        first = await publisher.send(channel_id, "delta", {"value": "one"}, sequence=1)
        second = await publisher.send(channel_id, publish_pb2.PHASE_END, sequence=2)

    events = await _read_all(service, channel_id)

    assert [event.id for event in events] == [first, second]
    assert events[0].payload == {"value": "one"}


@both_transports
async def test_stream_block_raising_sends_error(service: LocalService, channel_id: str, make: PublisherFactory) -> None:
    async with make(service, service.publisher_token()) as publisher, asyncio.timeout(_TIMEOUT_S):
        with pytest.raises(KeyError):
            async with publisher.stream(channel_id) as stream:
                await stream.delta({"value": "partial"})
                raise KeyError("model failed")

    assert await _stored_phases(service, channel_id) == [
        publish_pb2.PHASE_START, publish_pb2.PHASE_DELTA, publish_pb2.PHASE_ERROR
    ]


@both_transports
async def test_stream_cancelled_in_the_middle_sends_nothing_more(
    service: LocalService, channel_id: str, make: PublisherFactory
) -> None:
    delta_sent = asyncio.Event()

    async def produce(publisher: Publisher) -> None:
        async with publisher.stream(channel_id) as stream:
            await stream.delta({"value": "first"})
            delta_sent.set()
            await asyncio.Event().wait()

    async with make(service, service.publisher_token()) as publisher, asyncio.timeout(_TIMEOUT_S):
        task = asyncio.create_task(produce(publisher))
        await delta_sent.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # The publisher stays usable for the next stream.
        other_channel = str(uuid.uuid4())
        async with publisher.stream(other_channel):
            pass

    assert await _stored_phases(service, channel_id) == [publish_pb2.PHASE_START, publish_pb2.PHASE_DELTA]
    assert await _stored_phases(service, other_channel) == [publish_pb2.PHASE_START, publish_pb2.PHASE_END]


@pytest.mark.parametrize(
    ("make", "status"), [(grpc_publisher, "gRPC UNAUTHENTICATED"), (http_publisher, "HTTP 401")], ids=["grpc", "http"]
)
async def test_publish_bad_token_raises_rejected(
    service: LocalService, channel_id: str, make: PublisherFactory, status: str
) -> None:
    async with make(service, "not-a-jwt") as publisher, asyncio.timeout(_TIMEOUT_S):
        with pytest.raises(PublishRejected) as caught:
            async with publisher.stream(channel_id) as stream:
                await stream.delta({"value": "never"})

    assert caught.value.status == status
    assert "token" in caught.value.message
    assert await _stored_phases(service, channel_id) == []


async def test_http_publish_unreachable_raises_unreachable(channel_id: str) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    async with HttpPublisher(url, "token", org_id=ORG_ID, timeout_s=5) as publisher:
        with pytest.raises(PublishUnreachable) as caught:
            await publisher.send(channel_id, "start", sequence=1)

    assert caught.value.status == "unreachable"
    assert "ConnectError" in caught.value.message


async def test_grpc_publish_unreachable_raises_unreachable(channel_id: str) -> None:
    async with GrpcPublisher(f"127.0.0.1:{free_port()}", "token", org_id=ORG_ID, timeout_s=5) as publisher:
        with pytest.raises(PublishUnreachable) as caught:
            await publisher.send(channel_id, "start", sequence=1)

    assert caught.value.status == "unreachable"
    assert "UNAVAILABLE" in caught.value.message


async def test_publisher_bad_phase_raises_value_error(service: LocalService, channel_id: str) -> None:
    async with grpc_publisher(service, service.publisher_token()) as publisher:
        with pytest.raises(ValueError, match="phase must be one of start, delta, end, error, got 'middle'"):
            await publisher.send(channel_id, "middle", sequence=1)


def test_publisher_repr_hides_token() -> None:
    publisher = HttpPublisher("http://127.0.0.1:1", "secret-token-value", org_id=3)
    assert "secret-token-value" not in repr(publisher)
    assert repr(publisher) == "HttpPublisher(org_id=3)"


@pytest.fixture
async def rate_limited_publish_url(service: LocalService, redis_url: str) -> AsyncIterator[str]:
    """A second publish service on the same Redis that accepts one publish per channel per second."""
    broker = create_broker(BrokerSettings(redis_url=redis_url, rate_limit=1, rate_window_s=1))
    publish = PublishServer(service.settings, broker)
    await publish.start()
    yield f"http://127.0.0.1:{publish.http_port}"
    await publish.stop(grace_s=5)
    await broker.close()


async def test_http_publish_rate_limited_raises_429(
    service: LocalService, rate_limited_publish_url: str, channel_id: str
) -> None:
    async with asyncio.timeout(_TIMEOUT_S), HttpPublisher(
        rate_limited_publish_url, service.publisher_token(), org_id=ORG_ID, max_rate_limit_retries=0
    ) as publisher:
        await publisher.send(channel_id, "start", sequence=1)
        with pytest.raises(PublishRejected) as caught:
            await publisher.send(channel_id, "delta", {"value": "too soon"}, sequence=2)

    assert caught.value.status == "HTTP 429"
    assert "rate" in caught.value.message.lower()
    assert caught.value.retry_after_s is not None


async def test_http_publish_rate_limited_retries_after(
    service: LocalService, rate_limited_publish_url: str, channel_id: str
) -> None:
    async with asyncio.timeout(_TIMEOUT_S), HttpPublisher(
        rate_limited_publish_url, service.publisher_token(), org_id=ORG_ID
    ) as publisher:
        async with publisher.stream(channel_id) as stream:
            await stream.delta({"value": "waits for its slot"})

    assert await _stored_phases(service, channel_id) == [
        publish_pb2.PHASE_START, publish_pb2.PHASE_DELTA, publish_pb2.PHASE_END
    ]
