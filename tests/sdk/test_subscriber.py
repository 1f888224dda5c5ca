"""The SDK's subscriber: typed events, resume across a gateway restart, rejection and cancellation."""

from __future__ import annotations

import asyncio

import pytest

from conduit.sdk import ControlEvent, GrpcPublisher, StreamEvent, Subscriber, SubscribeFailed
from tests.redis_process import free_port
from tests.sdk.conftest import ORG_ID
from tests.services import LocalService

_TIMEOUT_S = 15


def _subscriber(service: LocalService, channel_id: str, **options: object) -> Subscriber:
    return Subscriber(
        service.gateway_url, service.subscriber_token(channel_id), org_id=ORG_ID, channel_id=channel_id,
        **options,  # type: ignore[arg-type]
    )


async def test_subscriber_resumes_after_gateway_drain_and_restart(service: LocalService, channel_id: str) -> None:
    events: list[StreamEvent | ControlEvent] = []
    first_delta = asyncio.Event()
    refreshed: list[str] = []

    async def refresh_token() -> str:
        refreshed.append(channel_id)
        return service.subscriber_token(channel_id)

    async def follow() -> None:
        async with _subscriber(service, channel_id, refresh_token=refresh_token) as subscriber:
            async for event in subscriber:
                events.append(event)
                if isinstance(event, StreamEvent) and event.phase == "PHASE_DELTA":
                    first_delta.set()
            assert subscriber.reconnects == 1

    async with asyncio.timeout(_TIMEOUT_S), GrpcPublisher(
        service.grpc_target, service.publisher_token(), org_id=ORG_ID
    ) as publisher:
        follower = asyncio.create_task(follow())
        async with publisher.stream(channel_id) as stream:
            await stream.delta({"value": "before"})
            await first_delta.wait()
            await service.restart_gateway()
            await stream.delta({"value": "after"})
        await follower

    stream_events = [event for event in events if isinstance(event, StreamEvent)]
    controls = [event for event in events if isinstance(event, ControlEvent)]
    assert [event.payload.get("value") for event in stream_events] == [None, "before", "after", None]
    assert [event.id for event in stream_events] == stream.stream_ids
    assert [control.control_type for control in controls] == ["server_draining"]
    assert refreshed == [channel_id]


async def test_subscriber_starts_after_last_event_id(service: LocalService, channel_id: str) -> None:
    async with GrpcPublisher(service.grpc_target, service.publisher_token(), org_id=ORG_ID) as publisher:
        async with publisher.stream(channel_id) as stream:
            await stream.delta({"value": "seen"})
            await stream.delta({"value": "missed"})

    async with asyncio.timeout(_TIMEOUT_S), _subscriber(
        service, channel_id, last_event_id=stream.stream_ids[1]
    ) as subscriber:
        events = [event async for event in subscriber]

    assert [event.id for event in events] == stream.stream_ids[2:]


async def test_subscriber_token_for_other_channel_raises_403(service: LocalService, channel_id: str) -> None:
    other = Subscriber(
        service.gateway_url, service.subscriber_token(channel_id, org_id=ORG_ID + 1),
        org_id=ORG_ID, channel_id=channel_id,
    )
    async with asyncio.timeout(_TIMEOUT_S), other:
        with pytest.raises(SubscribeFailed) as caught:
            [event async for event in other]

    assert caught.value.status == "HTTP 403"
    assert "org_id" in caught.value.message
    assert not caught.value.message.startswith("{"), "the message is the gateway's detail, not its JSON body"


async def test_subscriber_unreachable_gives_up_after_max_reconnects(channel_id: str) -> None:
    subscriber = Subscriber(
        f"http://127.0.0.1:{free_port()}", "token", org_id=ORG_ID, channel_id=channel_id, max_reconnects=1
    )
    async with asyncio.timeout(_TIMEOUT_S), subscriber:
        with pytest.raises(SubscribeFailed) as caught:
            [event async for event in subscriber]

    assert caught.value.status == "gave up"
    assert "after 1 reconnect)" in caught.value.message


async def test_subscriber_cancelled_in_the_middle_closes_its_stream(service: LocalService, channel_id: str) -> None:
    started = asyncio.Event()

    async def follow() -> None:
        async with _subscriber(service, channel_id) as subscriber:
            async for _ in subscriber:
                started.set()

    async with asyncio.timeout(_TIMEOUT_S), GrpcPublisher(
        service.grpc_target, service.publisher_token(), org_id=ORG_ID
    ) as publisher:
        await publisher.send(channel_id, "start", sequence=1)
        task = asyncio.create_task(follow())
        await started.wait()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        while service.gateway.open_stream_count:
            await asyncio.sleep(0.05)

    assert service.gateway.open_stream_count == 0


async def test_subscriber_break_closes_its_stream(service: LocalService, channel_id: str) -> None:
    async with asyncio.timeout(_TIMEOUT_S), GrpcPublisher(
        service.grpc_target, service.publisher_token(), org_id=ORG_ID
    ) as publisher:
        await publisher.send(channel_id, "start", sequence=1)
        subscriber = _subscriber(service, channel_id)
        events = subscriber.events()
        first = await anext(events)
        await events.aclose()
        while service.gateway.open_stream_count:
            await asyncio.sleep(0.05)
        await subscriber.close()

    assert isinstance(first, StreamEvent)
    assert first.phase == "PHASE_START"
    assert service.gateway.open_stream_count == 0
