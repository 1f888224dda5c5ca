"""Subscribers that stop reading or connect and vanish by the thousand must cost the gateway nothing lasting.

A client that never reads is disconnected after a bounded backlog or the send
timeout while a normal subscriber on the same channel keeps receiving. 1,000
connect/disconnect cycles, many of them in the middle of a history replay,
leave no task, file descriptor, Redis connection or memory behind.
"""

from __future__ import annotations

import asyncio
import enum
import gc
import socket
from collections.abc import Callable
from typing import Any
from urllib.parse import urlencode

import httpx
import redis

from broker.keys import stream_key
from conduit.v1alpha import publish_pb2
from tests.services import LocalService
from tests.faults.helpers import (
    ORG_ID,
    Subscriber,
    delta_request,
    metric_value,
    open_fd_count,
    post_publish,
    rss_bytes,
)
from tests.redis_process import RedisProcess

_OPEN_STREAMS = "conduit_gateway_open_streams"
_SEND_TIMEOUT_S = 1.0
# About 10 KiB per message, so the messages below (about 12 MiB) overflow every
# socket buffer between the gateway and a client that does not read.
_PAYLOAD_TEXT = "x" * 10_000
_SLOW_CLIENT_MESSAGES = 1200
_SLOW_CLIENT_RCVBUF_BYTES = 4096
_PUBLISH_CONCURRENCY = 8
_REQUEST_TIMEOUT_S = 10.0
_WAIT_TIMEOUT_S = 30.0

_HISTORY_ENTRIES = 1000
_CHURN_CYCLES = 1000
_WARMUP_CYCLES = 100
_CHURN_CONCURRENCY = 10
_READ_CHUNK_BYTES = 4096
_SETTLE_TIMEOUT_S = 15.0
# Tolerances for what may differ after the churn: pools and caches that a
# warm-up already filled may still move a little, but nothing may scale with the cycle count.
_TASK_TOLERANCE = 2
_FD_TOLERANCE = 10
_REDIS_CLIENT_TOLERANCE = 10
_RSS_TOLERANCE_BYTES = 32 * 1024 * 1024


async def _open_streams(client: httpx.AsyncClient, service: LocalService) -> float:
    response = await client.get(f"{service.gateway_url}/metrics", timeout=_REQUEST_TIMEOUT_S)
    return metric_value(response.text, _OPEN_STREAMS)


async def _wait_open_streams(client: httpx.AsyncClient, service: LocalService, expected: float) -> None:
    async with asyncio.timeout(_WAIT_TIMEOUT_S):
        while await _open_streams(client, service) != expected:
            await asyncio.sleep(0.05)


def _request_bytes(service: LocalService, channel_id: str) -> bytes:
    query = urlencode({"token": service.subscriber_token(channel_id), "channel_id": channel_id})
    return f"GET /events/{ORG_ID}?{query} HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n\r\n".encode()


def _connect_without_reading(service: LocalService, channel_id: str) -> socket.socket:
    """Open a subscription from a socket with a small receive buffer that is never read."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _SLOW_CLIENT_RCVBUF_BYTES)
    assert service.gateway is not None
    sock.connect(("127.0.0.1", service.gateway.port))
    sock.sendall(_request_bytes(service, channel_id))
    return sock


async def _publish_many(client: httpx.AsyncClient, service: LocalService, channel_id: str, count: int) -> None:
    token = service.publisher_token()
    sequences = iter(range(2, count + 2))

    async def worker() -> None:
        for sequence in sequences:
            request = delta_request(channel_id, sequence, payload={"text": _PAYLOAD_TEXT})
            response = await post_publish(client, service.publish_url, request, token, timeout_s=_REQUEST_TIMEOUT_S)
            assert response.status_code == 200, response.text

    await asyncio.gather(*(worker() for _ in range(_PUBLISH_CONCURRENCY)))


async def test_slow_client_dropped_others_continue(
    service_factory: Callable[..., Any],
    record_figures: Callable[[str, dict[str, Any]], Any],
) -> None:
    service: LocalService = await service_factory(send_timeout_s=_SEND_TIMEOUT_S)
    channel_id = "00000000-0000-4000-8000-00000000510e"
    token = service.publisher_token()

    async with httpx.AsyncClient(timeout=httpx.Timeout(10.0, read=30.0)) as client:
        baseline = await _open_streams(client, service)
        start = delta_request(channel_id, 1, phase=publish_pb2.PHASE_START)
        assert (await post_publish(client, service.publish_url, start, token, timeout_s=_REQUEST_TIMEOUT_S)).status_code == 200
        normal = Subscriber(client, [service.events_url], channel_id=channel_id,
                            token=service.subscriber_token(channel_id), max_connections=1)
        slow = await asyncio.to_thread(_connect_without_reading, service, channel_id)
        try:
            await _wait_open_streams(client, service, baseline + 2)
            rss_before = rss_bytes()
            await _publish_many(client, service, channel_id, _SLOW_CLIENT_MESSAGES)
            # The slow client is gone while the normal subscriber still follows the stream.
            await _wait_open_streams(client, service, baseline + 1)
            rss_after = rss_bytes()
            end = delta_request(channel_id, _SLOW_CLIENT_MESSAGES + 2, phase=publish_pb2.PHASE_END, payload={})
            assert (await post_publish(client, service.publish_url, end, token, timeout_s=_REQUEST_TIMEOUT_S)).status_code == 200
            await asyncio.wait_for(normal.task, _WAIT_TIMEOUT_S)
        finally:
            slow.close()

    record_figures(
        "slow_client",
        {
            "messages": _SLOW_CLIENT_MESSAGES,
            "published_bytes": _SLOW_CLIENT_MESSAGES * len(_PAYLOAD_TEXT),
            "rss_before_bytes": rss_before,
            "rss_after_bytes": rss_after,
        },
    )
    # Concurrent publishers store the DELTAs in any order, so the sequences are compared as a set
    # and the order is checked on the entry ids.
    sequences = [event.data["sequence"] for event in normal.stream_events]
    entry_ids = [tuple(map(int, str(event.id).split("-"))) for event in normal.stream_events]
    assert sorted(sequences) == list(range(1, _SLOW_CLIENT_MESSAGES + 3))
    assert entry_ids == sorted(set(entry_ids))
    assert normal.events_of("error") == []
    assert normal.connections[0].ended_by_server


def _fill_history(redis_process: RedisProcess, channel_id: str) -> None:
    """Write a stream of START and DELTAs straight into Redis, as the publish service stores them."""
    client: redis.Redis = redis_process.client()
    try:
        pipeline = client.pipeline(transaction=False)
        for sequence in range(1, _HISTORY_ENTRIES + 1):
            phase = publish_pb2.PHASE_START if sequence == 1 else publish_pb2.PHASE_DELTA
            data = delta_request(channel_id, sequence, phase=phase).SerializeToString()
            pipeline.xadd(stream_key(ORG_ID, channel_id), {"data": data})
        pipeline.execute()
    finally:
        client.close()


def _redis_client_count(redis_process: RedisProcess) -> int:
    """Count the clients connected to the test Redis, leaving out this query's own connection."""
    client = redis_process.client()
    try:
        return len(client.client_list()) - 1
    finally:
        client.close()


class Leave(enum.Enum):
    """When and how a churning client leaves."""

    MID_REPLAY_CLOSE = "close in the middle of the history replay"
    MID_REPLAY_RESET = "reset in the middle of the history replay"
    BEFORE_RESPONSE = "close right after sending the request for a live channel"
    LIVE_CLOSE = "close after the first frame of a live channel"


# Each block of twenty cycles: one closes and one resets in the middle of a
# history replay, the others leave a live channel. The mid-replay ones are
# few because each costs the gateway a replay of the rest of the history.
_CYCLE_PATTERN = (
    [Leave.MID_REPLAY_CLOSE, Leave.MID_REPLAY_RESET] + [Leave.BEFORE_RESPONSE] * 6 + [Leave.LIVE_CLOSE] * 12
)


async def _cycle(request: bytes, port: int, leave: Leave) -> None:
    """Connect, subscribe and leave at the moment and in the way that ``leave`` names."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(request)
        await writer.drain()
        if leave is Leave.BEFORE_RESPONSE:
            return
        received = b""
        marker = b"retry:" if leave is Leave.LIVE_CLOSE else b"event: stream"
        while marker not in received:
            chunk = await reader.read(_READ_CHUNK_BYTES)
            if not chunk:
                raise AssertionError(f"gateway closed the response early: {received[:200]!r}")
            received += chunk
        if leave is Leave.MID_REPLAY_RESET:
            writer.transport.abort()
    finally:
        writer.close()
        await writer.wait_closed()


async def _churn(service: LocalService, requests: dict[str, bytes], cycles: int) -> None:
    assert service.gateway is not None
    port = service.gateway.port
    numbers = iter(range(cycles))

    async def worker() -> None:
        for number in numbers:
            leave = _CYCLE_PATTERN[number % len(_CYCLE_PATTERN)]
            replay = leave in (Leave.MID_REPLAY_CLOSE, Leave.MID_REPLAY_RESET)
            request = requests["history"] if replay else requests["live"]
            await asyncio.wait_for(_cycle(request, port, leave), _REQUEST_TIMEOUT_S)

    await asyncio.gather(*(worker() for _ in range(_CHURN_CONCURRENCY)))


async def _settled_counts(client: httpx.AsyncClient, service: LocalService, redis_process: RedisProcess,
                          open_streams: float, task_limit: int | None) -> dict[str, int]:
    """Wait until no stream is open (and tasks are back under ``task_limit``), then measure."""
    await _wait_open_streams(client, service, open_streams)
    if task_limit is not None:
        async with asyncio.timeout(_SETTLE_TIMEOUT_S):
            while len(asyncio.all_tasks()) > task_limit:
                await asyncio.sleep(0.05)
    gc.collect()
    return {
        "tasks": len(asyncio.all_tasks()),
        "fds": open_fd_count(),
        "redis_clients": _redis_client_count(redis_process),
        "rss_bytes": rss_bytes(),
        "gc_objects": len(gc.get_objects()),
    }


async def test_churn_leaves_nothing_behind(
    service_factory: Callable[..., Any],
    redis_process: RedisProcess,
    record_figures: Callable[[str, dict[str, Any]], Any],
) -> None:
    service: LocalService = await service_factory()
    history_channel = "00000000-0000-4000-8000-0000000c0001"
    live_channel = "00000000-0000-4000-8000-0000000c0002"
    await asyncio.to_thread(_fill_history, redis_process, history_channel)
    requests = {"history": _request_bytes(service, history_channel), "live": _request_bytes(service, live_channel)}

    async with httpx.AsyncClient() as client:
        open_streams = await _open_streams(client, service)
        await _churn(service, requests, _WARMUP_CYCLES)
        before = await _settled_counts(client, service, redis_process, open_streams, None)
        await _churn(service, requests, _CHURN_CYCLES)
        after = await _settled_counts(
            client, service, redis_process, open_streams, before["tasks"] + _TASK_TOLERANCE
        )

    record_figures("churn", {"cycles": _CHURN_CYCLES, "before": before, "after": after})
    assert after["tasks"] <= before["tasks"] + _TASK_TOLERANCE
    assert after["fds"] <= before["fds"] + _FD_TOLERANCE
    assert after["redis_clients"] <= before["redis_clients"] + _REDIS_CLIENT_TOLERANCE
    assert after["rss_bytes"] <= before["rss_bytes"] + _RSS_TOLERANCE_BYTES

