"""SIGTERM to ``conduit serve`` processes while they work: the gateway drains, the publish service finishes.

Subscribers of a draining gateway get ``server_draining`` and reconnect to a
second gateway with their Last-Event-ID, so the two connections together carry
every entry of the stream exactly once. The publish service responds to every
request that was in flight when the signal came, then exits 0.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from broker.keys import stream_key
from conduit.tokens import mint_publisher_token, mint_subscriber_token
from conduit.v1alpha import publish_pb2, publish_pb2_grpc
from tests.faults.helpers import (
    GATEWAY_AUDIENCE,
    ISSUER,
    ORG_ID,
    PUBLISH_AUDIENCE,
    PUBLISH_SECRET,
    Subscriber,
    delta_request,
    post_publish,
)
from tests.faults.processes import ChildProcess, child_environment
from tests.redis_process import RedisProcess

_SUBSCRIBERS = 20
_EVENTS_BEFORE_SIGNAL = 3
_PUBLISH_INTERVAL_S = 0.02
_PUBLISH_AFTER_DRAIN_S = 0.5
_BODY_PAUSE_S = 0.3
_QUICK_PUBLISHERS = 4
_REQUEST_TIMEOUT_S = 10.0
_WAIT_TIMEOUT_S = 20.0
_JWT_PREFIX = "eyJ"

StartChild = Callable[[str, list[str]], Awaitable[ChildProcess]]


@pytest.fixture
async def start_child(
    redis_url: str, rsa_keys: tuple[str, str], tmp_path: Path
) -> AsyncIterator[StartChild]:
    """``await start_child(name, arguments)`` runs ``conduit <arguments>`` on the test Redis; all are killed at teardown."""
    children: list[ChildProcess] = []

    async def start(name: str, arguments: list[str]) -> ChildProcess:
        child = await ChildProcess.start(
            arguments, child_environment(redis_url, rsa_keys[1]), tmp_path / f"{name}.log"
        )
        children.append(child)
        return child

    yield start
    for child in children:
        await child.close()


def _publisher_token() -> str:
    return mint_publisher_token(PUBLISH_SECRET, issuer=ISSUER, audience=PUBLISH_AUDIENCE)


def _stored_message_ids(redis_process: RedisProcess, channel_id: str) -> list[tuple[str, str]]:
    client = redis_process.client()
    try:
        entries = client.xrange(stream_key(ORG_ID, channel_id))
    finally:
        client.close()
    return [
        (entry_id.decode(), publish_pb2.PublishRequest.FromString(fields[b"data"]).message_id)
        for entry_id, fields in entries
    ]


async def _publish_until(client: httpx.AsyncClient, publish_url: str, channel_id: str,
                         stopping: asyncio.Event) -> list[str]:
    """Publish START, DELTAs until ``stopping`` is set, then END; return the acknowledged entry ids."""
    token = _publisher_token()
    acknowledged = []
    sequence = 1
    phase = publish_pb2.PHASE_START
    while True:
        request = delta_request(channel_id, sequence, phase=phase)
        response = await post_publish(client, publish_url, request, token, timeout_s=_REQUEST_TIMEOUT_S)
        assert response.status_code == 200, response.text
        acknowledged.append(response.text)
        if phase == publish_pb2.PHASE_END:
            return acknowledged
        sequence += 1
        phase = publish_pb2.PHASE_END if stopping.is_set() else publish_pb2.PHASE_DELTA
        await asyncio.sleep(_PUBLISH_INTERVAL_S)


async def test_drain_gateway_sigterm_clients_resume_elsewhere(
    start_child: StartChild, rsa_keys: tuple[str, str], redis_process: RedisProcess
) -> None:
    gateway_a, gateway_b, publish = await asyncio.gather(
        start_child("gateway-a", ["serve", "gateway"]),
        start_child("gateway-b", ["serve", "gateway"]),
        start_child("publish", ["serve", "publish"]),
    )
    ports = await asyncio.gather(
        gateway_a.wait_for_port("gateway"), gateway_b.wait_for_port("gateway"), publish.wait_for_port("publish")
    )
    url_a, url_b = (f"http://127.0.0.1:{port}/events/{ORG_ID}" for port in ports[:2])
    publish_url = f"http://127.0.0.1:{ports[2]}"
    channel_id = "00000000-0000-4000-8000-0000000d2a1e"
    token = mint_subscriber_token(
        rsa_keys[0], issuer=ISSUER, audience=GATEWAY_AUDIENCE, org_id=ORG_ID, channel_id=channel_id
    )
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=None)
    stopping = asyncio.Event()

    async with httpx.AsyncClient(limits=limits, timeout=httpx.Timeout(10.0, read=30.0)) as client:
        subscribers = [
            Subscriber(client, [url_a, url_b], channel_id=channel_id, token=token) for _ in range(_SUBSCRIBERS)
        ]
        publishing = asyncio.create_task(_publish_until(client, publish_url, channel_id, stopping))
        async with asyncio.timeout(_WAIT_TIMEOUT_S):
            while any(len(subscriber.stream_events) < _EVENTS_BEFORE_SIGNAL for subscriber in subscribers):
                await asyncio.sleep(0.02)

        gateway_a.send_signal(signal.SIGTERM)
        status_a = await gateway_a.wait()
        late = await _subscribe_once(client, url_a, channel_id, token)
        await asyncio.sleep(_PUBLISH_AFTER_DRAIN_S)
        stopping.set()
        async with asyncio.timeout(_WAIT_TIMEOUT_S):
            acknowledged = await publishing
            await asyncio.gather(*(subscriber.task for subscriber in subscribers))

    stored = _stored_message_ids(redis_process, channel_id)
    log_a = gateway_a.log
    assert status_a == 0, log_a
    assert f"gateway draining open_streams={_SUBSCRIBERS}" in log_a
    assert "gateway stopped" in log_a
    assert late == "refused", "gateway A accepted a subscriber after it exited"
    for child in (gateway_a, gateway_b, publish):
        # Every JWT starts with the base64 of '{"', so no token of any kind reached a log.
        assert _JWT_PREFIX not in child.log
    assert [entry_id for entry_id, _ in stored] == acknowledged
    for subscriber in subscribers:
        first, second = subscriber.connections
        assert (first.url, second.url) == (url_a, url_b)
        assert first.events[-1].event == "control"
        assert first.events[-1].data["control_type"] == "server_draining"
        assert first.ended_by_server
        assert second.last_event_id == [event for event in first.events if event.event == "stream"][-1].id
        assert [event.event for event in second.events] == ["stream"] * len(second.events)
        # Both connections together: every stored entry once, in order, without a gap.
        assert [(event.id, event.data["message_id"]) for event in subscriber.stream_events] == stored


async def _subscribe_once(client: httpx.AsyncClient, url: str, channel_id: str, token: str) -> str:
    """Try one subscription; return "refused" when the connection fails, else its status and body."""
    try:
        async with client.stream("GET", url, params={"token": token, "channel_id": channel_id}) as response:
            return f"{response.status_code} {await response.aread()!r}"
    except httpx.TransportError:
        return "refused"


async def _slow_body(first: bytes, rest: bytes, sent_first: asyncio.Event, release: asyncio.Event) -> AsyncIterator[bytes]:
    yield first
    sent_first.set()
    await release.wait()
    yield rest


async def _quick_publisher(client: httpx.AsyncClient, publish_url: str, channel_id: str,
                           stopping: asyncio.Event) -> list[tuple[int | str, str, str]]:
    """Publish DELTAs back to back until ``stopping``; return ``(status or error, entry id, message_id)``."""
    token = _publisher_token()
    outcomes: list[tuple[int | str, str, str]] = []
    sequence = 1
    while not stopping.is_set():
        request = delta_request(channel_id, sequence)
        sequence += 1
        try:
            response = await post_publish(client, publish_url, request, token, timeout_s=_REQUEST_TIMEOUT_S)
        except httpx.TransportError as error:
            outcomes.append((type(error).__name__, "", request.message_id))
            # Connections refused once the listener is closed come back at once; pace the retries.
            await asyncio.sleep(_PUBLISH_INTERVAL_S)
            continue
        outcomes.append((response.status_code, response.text, request.message_id))
    return outcomes


async def test_drain_publish_sigterm_finishes_in_flight(
    start_child: StartChild, redis_process: RedisProcess, record_figures: Callable[[str, dict[str, Any]], Any]
) -> None:
    publish = await start_child("publish", ["serve", "publish"])
    http_port = await publish.wait_for_port("publish")
    grpc_port = await publish.wait_for_port("publish gRPC")
    publish_url = f"http://127.0.0.1:{http_port}"
    channel_id = "00000000-0000-4000-8000-00000000f11e"
    token = _publisher_token()
    metadata = (("authorization", f"Bearer {token}"),)
    stopping = asyncio.Event()

    async with (
        httpx.AsyncClient() as client,
        grpc.aio.insecure_channel(f"127.0.0.1:{grpc_port}") as channel,
    ):
        call = publish_grpc_stub(channel).PublishStream(metadata=metadata, timeout=_WAIT_TIMEOUT_S)
        await call.write(delta_request(channel_id, 1, phase=publish_pb2.PHASE_START))
        grpc_ids = [(await call.read()).stream_id]

        slow = delta_request(channel_id, 1000)
        body = slow.SerializeToString()
        sent_first, release = asyncio.Event(), asyncio.Event()
        slow_post = asyncio.create_task(client.post(
            f"{publish_url}/publish/{ORG_ID}/{channel_id}",
            content=_slow_body(body[:10], body[10:], sent_first, release),
            headers={"authorization": f"Bearer {token}"},
            timeout=_REQUEST_TIMEOUT_S,
        ))
        quick = [
            asyncio.create_task(_quick_publisher(client, publish_url, channel_id, stopping))
            for _ in range(_QUICK_PUBLISHERS)
        ]
        await asyncio.wait_for(sent_first.wait(), _WAIT_TIMEOUT_S)
        # The body is half sent, so the server is reading it when the signal comes.
        await asyncio.sleep(_BODY_PAUSE_S)

        publish.send_signal(signal.SIGTERM)
        await asyncio.sleep(_BODY_PAUSE_S)
        release.set()
        for sequence in (2, 3):
            await call.write(delta_request(channel_id, sequence))
            grpc_ids.append((await call.read()).stream_id)
        await call.write(delta_request(channel_id, 4, phase=publish_pb2.PHASE_END, payload={}))
        grpc_ids.append((await call.read()).stream_id)
        await call.done_writing()
        grpc_code = await call.code()
        slow_response = await asyncio.wait_for(slow_post, _WAIT_TIMEOUT_S)
        status = await publish.wait()
        stopping.set()
        quick_outcomes = [outcome for outcomes in await asyncio.gather(*quick) for outcome in outcomes]

    stored = dict(_stored_message_ids(redis_process, channel_id))
    quick_acknowledged = [(entry_id, message_id) for code, entry_id, message_id in quick_outcomes if code == 200]
    record_figures(
        "publish_drain",
        {
            "quick_publishes": len(quick_outcomes),
            "quick_acknowledged": len(quick_acknowledged),
            "quick_outcomes": sorted({str(code) for code, _, _ in quick_outcomes}),
            "stored": len(stored),
        },
    )

    assert status == 0, publish.log
    assert "stop signal received" in publish.log
    assert _JWT_PREFIX not in publish.log
    assert grpc_code == grpc.StatusCode.OK
    assert [stored.get(entry_id) is not None for entry_id in grpc_ids] == [True] * 4
    assert slow_response.status_code == 200, slow_response.text
    assert stored.get(slow_response.text) == slow.message_id
    # A quick publish either ended before the listener closed or was never accepted.
    # None failed with a server error, every acknowledged one is stored, and none
    # that got no response is stored.
    assert {code for code, _, _ in quick_outcomes} <= {200, 503, "ConnectError", "RemoteProtocolError", "ReadError"}
    assert [entry for entry in quick_acknowledged if stored.get(entry[0]) != entry[1]] == []
    stored_message_ids = set(stored.values())
    unanswered = [message_id for code, _, message_id in quick_outcomes if isinstance(code, str)]
    assert [message_id for message_id in unanswered if message_id in stored_message_ids] == []


def publish_grpc_stub(channel: grpc.aio.Channel) -> publish_pb2_grpc.PublishServiceStub:
    return publish_pb2_grpc.PublishServiceStub(channel)
