"""Redis stops while publishers and 200 subscribers are active, then comes back with its data.

The short outage must cost nothing that was acknowledged: publishing returns
503 at once while Redis is down, readiness turns 503 and back, and every
subscriber receives each stored message exactly once, in order, on its first
connection. A longer outage than the gateway's retry budget ends every stream
with the ``error`` event.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable
from typing import Any

import httpx
import pytest

from broker.keys import stream_key
from conduit.v1alpha import publish_pb2
from tests.services import LocalService
from tests.faults.helpers import ORG_ID, Subscriber, delta_request, post_publish
from tests.redis_process import RedisProcess

_CHANNELS = 4
_SUBSCRIBERS_PER_CHANNEL = 50
_OUTAGE_S = 3.0
_PUBLISH_BEFORE_S = 1.0
_PUBLISH_AFTER_S = 1.0
_PUBLISH_INTERVAL_S = 0.02
_READINESS_INTERVAL_S = 0.1
# The service must respond within one second while Redis is down. A client
# timeout of twice that tells a prompt 503 from a hanging request.
_REQUEST_TIMEOUT_S = 2.0
_END_ATTEMPTS = 50
_WAIT_TIMEOUT_S = 30.0
_SUBSCRIBER_TIMEOUT = httpx.Timeout(10.0, read=30.0)


@dataclasses.dataclass
class Attempt:
    """One publish request and how it ended."""

    sequence: int
    message_id: str
    started_at: float
    finished_at: float = 0.0
    status_code: int | None = None
    text: str = ""
    error: str | None = None


class ChannelPublisher:
    """Publishes START, then a DELTA every few milliseconds until stopped, then END; records every attempt."""

    def __init__(self, client: httpx.AsyncClient, service: LocalService, channel_id: str) -> None:
        self._client = client
        self._service = service
        self.channel_id = channel_id
        self.attempts: list[Attempt] = []

    @property
    def acknowledged(self) -> list[tuple[str, str]]:
        """``(entry id, message_id)`` of every acknowledged publish, in the order acknowledged."""
        return [(attempt.text, attempt.message_id) for attempt in self.attempts if attempt.status_code == 200]

    async def run(self, stopping: asyncio.Event) -> None:
        token = self._service.publisher_token()
        sequence = 1
        await self._publish(delta_request(self.channel_id, sequence, phase=publish_pb2.PHASE_START), token)
        while not stopping.is_set():
            sequence += 1
            await self._publish(delta_request(self.channel_id, sequence), token)
            await asyncio.sleep(_PUBLISH_INTERVAL_S)
        for _ in range(_END_ATTEMPTS):
            sequence += 1
            end = delta_request(self.channel_id, sequence, phase=publish_pb2.PHASE_END, payload={})
            if (await self._publish(end, token)).status_code == 200:
                return
            await asyncio.sleep(_PUBLISH_INTERVAL_S)
        raise AssertionError(f"END was never acknowledged on channel {self.channel_id}")

    async def _publish(self, request: publish_pb2.PublishRequest, token: str) -> Attempt:
        attempt = Attempt(request.sequence, request.message_id, time.monotonic())
        self.attempts.append(attempt)
        try:
            response = await post_publish(
                self._client, self._service.publish_url, request, token, timeout_s=_REQUEST_TIMEOUT_S
            )
        except httpx.HTTPError as error:
            attempt.error = f"{type(error).__name__}: {error}"
        else:
            attempt.status_code = response.status_code
            attempt.text = response.text
        attempt.finished_at = time.monotonic()
        return attempt


class ReadinessProbe:
    """Polls ``/readyz`` of one service until stopped and records every status."""

    def __init__(self, client: httpx.AsyncClient, url: str) -> None:
        self._client = client
        self._url = url
        self.statuses: list[tuple[float, int | str]] = []

    async def run(self, stopping: asyncio.Event) -> None:
        while not stopping.is_set():
            try:
                response = await self._client.get(self._url, timeout=_REQUEST_TIMEOUT_S)
                self.statuses.append((time.monotonic(), response.status_code))
            except httpx.HTTPError as error:
                self.statuses.append((time.monotonic(), type(error).__name__))
            await asyncio.sleep(_READINESS_INTERVAL_S)

    def between(self, start: float, end: float) -> list[int | str]:
        return [status for at, status in self.statuses if start <= at <= end]


async def _wait_ready(client: httpx.AsyncClient, url: str) -> None:
    async with asyncio.timeout(_WAIT_TIMEOUT_S):
        while (await client.get(url, timeout=_REQUEST_TIMEOUT_S)).status_code != 200:
            await asyncio.sleep(_READINESS_INTERVAL_S)


def _stored_entries(redis_process: RedisProcess, channel_id: str) -> list[tuple[str, str]]:
    """``(entry id, message_id)`` of every entry of the channel's stream, read from Redis directly."""
    client = redis_process.client()
    try:
        entries = client.xrange(stream_key(ORG_ID, channel_id))
    finally:
        client.close()
    return [
        (entry_id.decode(), publish_pb2.PublishRequest.FromString(fields[b"data"]).message_id)
        for entry_id, fields in entries
    ]


async def _start_subscribers(client: httpx.AsyncClient, service: LocalService, channel_ids: list[str],
                             per_channel: int) -> list[Subscriber]:
    subscribers = [
        Subscriber(client, [service.events_url], channel_id=channel_id,
                   token=service.subscriber_token(channel_id), max_connections=1)
        for channel_id in channel_ids
        for _ in range(per_channel)
    ]
    async with asyncio.timeout(_WAIT_TIMEOUT_S):
        await asyncio.gather(*(subscriber.connected.wait() for subscriber in subscribers))
    assert {subscriber.connections[0].status_code for subscriber in subscribers} == {200}
    return subscribers


async def test_outage_short_loses_nothing_acknowledged(
    service_factory: Callable[..., Any],
    redis_process: RedisProcess,
    record_figures: Callable[[str, dict[str, Any]], Any],
) -> None:
    service: LocalService = await service_factory(broker_retry_budget_s=30)
    channel_ids = [f"00000000-0000-4000-8000-{index:012d}" for index in range(_CHANNELS)]
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    stopping = asyncio.Event()

    async with (
        httpx.AsyncClient(limits=limits, timeout=_SUBSCRIBER_TIMEOUT) as subscriber_client,
        httpx.AsyncClient(limits=limits) as publisher_client,
    ):
        subscribers = await _start_subscribers(subscriber_client, service, channel_ids, _SUBSCRIBERS_PER_CHANNEL)
        publishers = [ChannelPublisher(publisher_client, service, channel_id) for channel_id in channel_ids]
        probes = {
            "gateway": ReadinessProbe(publisher_client, f"{service.gateway_url}/readyz"),
            "publish": ReadinessProbe(publisher_client, f"{service.publish_url}/readyz"),
        }
        probe_stopping = asyncio.Event()
        tasks = [asyncio.create_task(publisher.run(stopping)) for publisher in publishers]
        tasks += [asyncio.create_task(probe.run(probe_stopping)) for probe in probes.values()]
        try:
            await asyncio.sleep(_PUBLISH_BEFORE_S)
            await asyncio.to_thread(redis_process.stop, save=True)
            down_at = time.monotonic()
            await asyncio.sleep(_OUTAGE_S)
            up_at = time.monotonic()
            await asyncio.to_thread(redis_process.start)
            await _wait_ready(publisher_client, f"{service.gateway_url}/readyz")
            await _wait_ready(publisher_client, f"{service.publish_url}/readyz")
            await asyncio.sleep(_PUBLISH_AFTER_S)
        finally:
            stopping.set()
            if redis_process.process is None:
                await asyncio.to_thread(redis_process.start)
            async with asyncio.timeout(_WAIT_TIMEOUT_S):
                await asyncio.gather(*tasks[: len(publishers)])
            probe_stopping.set()
            async with asyncio.timeout(_WAIT_TIMEOUT_S):
                await asyncio.gather(*tasks)
                await asyncio.gather(*(subscriber.task for subscriber in subscribers))

    attempts = [attempt for publisher in publishers for attempt in publisher.attempts]
    during_outage = [attempt for attempt in attempts if down_at <= attempt.started_at and attempt.finished_at <= up_at]
    timed_out = [attempt for attempt in attempts if attempt.error is not None]
    stored = {channel_id: _stored_entries(redis_process, channel_id) for channel_id in channel_ids}
    acknowledged = {publisher.channel_id: publisher.acknowledged for publisher in publishers}

    lost = 0
    duplicated = 0
    for subscriber in subscribers:
        delivered = [(event.id, event.data["message_id"]) for event in subscriber.stream_events]
        delivered_set = set(delivered)
        lost += sum(1 for entry in acknowledged[subscriber.channel_id] if entry not in delivered_set)
        duplicated += len(delivered) - len(delivered_set)
    acknowledged_count = sum(len(entries) for entries in acknowledged.values())
    stored_count = sum(len(entries) for entries in stored.values())
    record_figures(
        "broker_outage",
        {
            "subscribers": len(subscribers),
            "outage_s": _OUTAGE_S,
            "published": len(attempts),
            "published_during_outage": len(during_outage),
            "acknowledged": acknowledged_count,
            "rejected_503": sum(1 for attempt in attempts if attempt.status_code == 503),
            "stored": stored_count,
            "stored_not_acknowledged": stored_count - acknowledged_count,
            "delivered": sum(len(subscriber.stream_events) for subscriber in subscribers),
            "expected_deliveries": sum(len(stored[subscriber.channel_id]) for subscriber in subscribers),
            "lost": lost,
            "duplicated": duplicated,
            "slowest_503_during_outage_s": round(
                max((attempt.finished_at - attempt.started_at for attempt in during_outage), default=0.0), 3
            ),
        },
    )

    assert timed_out == [], f"publishes with no answer within {_REQUEST_TIMEOUT_S} s: {timed_out[:3]}"
    assert during_outage, "no publish was attempted while Redis was down"
    assert {attempt.status_code for attempt in during_outage} == {503}
    assert all(attempt.text.startswith("Redis append failed (") for attempt in during_outage), during_outage[0].text
    assert {attempt.status_code for attempt in attempts} <= {200, 503}
    for name, probe in probes.items():
        assert 503 in probe.between(down_at, up_at), f"{name} /readyz never reported 503 while Redis was down"
        assert probe.statuses[-1][1] == 200, f"{name} /readyz did not return to 200"

    assert lost == 0
    assert duplicated == 0
    for channel_id, entries in acknowledged.items():
        stored_set = set(stored[channel_id])
        assert [entry for entry in entries if entry not in stored_set] == [], "acknowledged but not stored"
    for subscriber in subscribers:
        connections = subscriber.connections
        statuses = [connection.status_code for connection in connections]
        assert len(connections) == 1, f"{subscriber.channel_id}: {len(connections)} connections, statuses {statuses}"
        assert connections[0].ended_by_server, f"{subscriber.channel_id}: the stream did not end by the server"
        assert subscriber.events_of("error") == [], f"{subscriber.channel_id}: {subscriber.events_of('error')}"
        assert subscriber.events_of("control") == [], f"{subscriber.channel_id}: {subscriber.events_of('control')}"
        delivered = [(event.id, event.data["message_id"]) for event in subscriber.stream_events]
        # Exactly the stored entries, each once and in stream order, which is the order acknowledged.
        assert delivered == stored[subscriber.channel_id]
        assert subscriber.stream_events[-1].data["phase"] == "PHASE_END"


@pytest.mark.parametrize("subscriber_count", [20])
async def test_outage_longer_than_budget_sends_error(
    service_factory: Callable[..., Any],
    redis_process: RedisProcess,
    subscriber_count: int,
) -> None:
    service: LocalService = await service_factory(broker_retry_budget_s=1.0)
    channel_id = "00000000-0000-4000-8000-00000000beef"
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)

    async with httpx.AsyncClient(limits=limits, timeout=_SUBSCRIBER_TIMEOUT) as client:
        subscribers = await _start_subscribers(client, service, [channel_id], subscriber_count)
        start = delta_request(channel_id, 1, phase=publish_pb2.PHASE_START)
        response = await post_publish(client, service.publish_url, start, service.publisher_token(),
                                      timeout_s=_REQUEST_TIMEOUT_S)
        assert response.status_code == 200
        async with asyncio.timeout(_WAIT_TIMEOUT_S):
            while any(not subscriber.stream_events for subscriber in subscribers):
                await asyncio.sleep(0.05)

        await asyncio.to_thread(redis_process.stop)
        try:
            async with asyncio.timeout(_WAIT_TIMEOUT_S):
                await asyncio.gather(*(subscriber.task for subscriber in subscribers))
        finally:
            await asyncio.to_thread(redis_process.start)

    for subscriber in subscribers:
        events = subscriber.events
        assert [event.event for event in events] == ["stream", "error"]
        assert list(events[-1].data) == ["event_type", "message"]
        assert events[-1].data["event_type"] == "error"
        assert "broker" in str(events[-1].data["message"])
        assert subscriber.connections[0].ended_by_server
