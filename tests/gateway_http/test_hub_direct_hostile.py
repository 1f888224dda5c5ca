"""Hostile clients against a running gateway: raw sockets that read slowly, vanish, pipeline or stop mid-burst.

Every test checks the stream contract on the wire: each event of the channel
once, in order, with the END or the drain's control event last, and every
stream closed once its client is gone.
"""

from __future__ import annotations

import asyncio
import logging
import random
import socket
from collections.abc import Callable

import pytest
from prometheus_client import REGISTRY

from broker.base import Broker
from conduit.v1alpha import publish_pb2
from gateway_http import sse
from gateway_http.events import SseEvent
from gateway_http.server import GatewayServer
from tests.gateway_http.helpers import ORG_ID, GatewayFactory, publish, wait_until
from tests.gateway_http.sse_client import RawSseClient

LARGE_BUFFER = 1 << 20
SMALL_BUFFER = 2048


def sent_stream_events() -> float:
    return REGISTRY.get_sample_value("conduit_gateway_events_sent_total", {"event": "stream"}) or 0.0


async def connected(
    server: GatewayServer, token: str, channel_id: str, receive_buffers: list[int]
) -> list[RawSseClient]:
    """Return clients that have each read the channel's START, one per receive buffer size."""
    clients = [RawSseClient(server.port, token, channel_id, receive_buffer=size) for size in receive_buffers]
    for client in clients:
        await client.connect()
        await client.read_until(lambda client: len(client.sequences()) >= 1)
    return clients


async def pipelined_stream(server: GatewayServer, token: str, channel_id: str) -> socket.socket:
    """Open a stream whose client sends a second request behind the first, as HTTP/1.1 pipelining allows."""
    loop = asyncio.get_running_loop()
    sock = socket.socket()
    sock.setblocking(False)
    await loop.sock_connect(sock, ("127.0.0.1", server.port))
    events = f"GET /events/{ORG_ID}?token={token}&channel_id={channel_id} HTTP/1.1\r\nHost: test\r\n\r\n"
    health = "GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n"
    await loop.sock_sendall(sock, (events + health).encode())
    await wait_until(lambda: server.open_stream_count == 1)
    return sock


async def test_burst_to_mixed_readers_exactly_once(
    start_gateway: GatewayFactory, broker: Broker, channel_id: str, mint: Callable[..., str]
) -> None:
    rng = random.Random(1)
    server = await start_gateway(keepalive_interval_s=0.3)
    token = mint(channel_id)
    await publish(broker, channel_id, sequence=0, phase=publish_pb2.PHASE_START)
    # Slow readers fill their buffers, so their streams can leave the direct
    # write for the sink or the queue and come back at a later wait.
    fast = await connected(server, token, channel_id, [LARGE_BUFFER] * 4)
    slow = await connected(server, token, channel_id, [SMALL_BUFFER] * 4)
    total = 200

    async def read(client: RawSseClient, pauses: bool) -> None:
        while not client.ended:
            if pauses and rng.random() < 0.2:
                await asyncio.sleep(rng.uniform(0.01, 0.05))
            await client.read_some(max_bytes=rng.choice([4096, 65536]), timeout_s=20)

    readers = [asyncio.create_task(read(client, False)) for client in fast]
    readers += [asyncio.create_task(read(client, True)) for client in slow]
    late: list[RawSseClient] = []
    for sequence in range(1, total + 1):
        await publish(broker, channel_id, sequence=sequence, payload={"text": "y" * 3000})
        if sequence % 20 == 0:
            await asyncio.sleep(0)
        if sequence in (50, 150):
            # Joins mid-burst from the stream's start: replay, then hand-over to live.
            joined = RawSseClient(server.port, token, channel_id, receive_buffer=LARGE_BUFFER)
            await joined.connect()
            late.append(joined)
            readers.append(asyncio.create_task(read(joined, False)))
    await publish(broker, channel_id, sequence=total + 1, phase=publish_pb2.PHASE_END)
    async with asyncio.timeout(60):
        await asyncio.gather(*readers)

    for client in fast + slow + late:
        client.close()
        assert client.sequences() == list(range(total + 2))
        assert client.frames[-1].event == "stream"
        assert client.ended


@pytest.mark.parametrize("broker_kind", ["memory"], indirect=True)
async def test_keepalive_only_after_idle_interval(
    start_gateway: GatewayFactory, broker: Broker, channel_id: str, mint: Callable[..., str]
) -> None:
    # Events every 50 ms keep a 1 s keep-alive deadline moving, so none may
    # appear while they flow, and one must follow once they stop.
    server = await start_gateway(keepalive_interval_s=1.0)
    token = mint(channel_id)
    await publish(broker, channel_id, sequence=0, phase=publish_pb2.PHASE_START)
    (client,) = await connected(server, token, channel_id, [LARGE_BUFFER])
    reading = asyncio.create_task(client.read_until(lambda c: c.frames[-1].event == "comment", timeout_s=20))

    total = 40
    for sequence in range(1, total + 1):
        await publish(broker, channel_id, sequence=sequence)
        await asyncio.sleep(0.05)
    flowing = list(client.frames)
    async with asyncio.timeout(10):
        await reading
    client.close()

    assert [frame.event for frame in flowing].count("comment") == 0
    assert client.sequences() == list(range(total + 1))
    assert client.frames[-1].raw == b": keep-alive\n\n"


@pytest.mark.parametrize("broker_kind", ["memory"], indirect=True)
async def test_prompt_readers_take_direct_writes(
    start_gateway: GatewayFactory,
    broker: Broker,
    channel_id: str,
    mint: Callable[..., str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Readers that keep up get every live event from the hub's own write, never through the sink."""
    sink_writes: list[int] = []
    write_live = sse.write_live

    def counting_write_live(cycle: object, batch: list[SseEvent]) -> bool:
        sink_writes.append(len(batch))
        return write_live(cycle, batch)

    monkeypatch.setattr(sse, "write_live", counting_write_live)
    server = await start_gateway(keepalive_interval_s=30)
    token = mint(channel_id)
    await publish(broker, channel_id, sequence=0, phase=publish_pb2.PHASE_START)
    clients = await connected(server, token, channel_id, [LARGE_BUFFER] * 3)
    total = 20

    for sequence in range(1, total + 1):
        await publish(broker, channel_id, sequence=sequence)
        async with asyncio.timeout(10):
            for client in clients:
                await client.read_until(lambda c, expected=sequence: expected in c.sequences())

    for client in clients:
        client.close()
        assert client.sequences() == list(range(total + 1))
    assert sink_writes == []


@pytest.mark.parametrize("broker_kind", ["memory"], indirect=True)
async def test_events_sent_counts_each_delivery_once(
    start_gateway: GatewayFactory, broker: Broker, channel_id: str, mint: Callable[..., str]
) -> None:
    server = await start_gateway(keepalive_interval_s=30)
    token = mint(channel_id)
    await publish(broker, channel_id, sequence=0, phase=publish_pb2.PHASE_START)
    clients = await connected(server, token, channel_id, [LARGE_BUFFER] * 5)
    before = sent_stream_events()
    total = 100

    readers = [
        asyncio.create_task(client.read_until(lambda c: total in c.sequences(), timeout_s=20)) for client in clients
    ]
    for sequence in range(1, total + 1):
        await publish(broker, channel_id, sequence=sequence)
        if sequence % 7 == 0:
            await asyncio.sleep(0)
    async with asyncio.timeout(30):
        await asyncio.gather(*readers)
    # Writes through write_live are counted once the loop pass ends.
    await asyncio.sleep(0.05)

    for client in clients:
        client.close()
        assert client.sequences() == list(range(total + 1))
    assert sent_stream_events() - before == total * len(clients)


@pytest.mark.parametrize("broker_kind", ["memory"], indirect=True)
async def test_drain_mid_burst_control_last(
    start_gateway: GatewayFactory, broker: Broker, channel_id: str, mint: Callable[..., str]
) -> None:
    server = await start_gateway(keepalive_interval_s=30)
    token = mint(channel_id)
    await publish(broker, channel_id, sequence=0, phase=publish_pb2.PHASE_START)
    clients = await connected(server, token, channel_id, [LARGE_BUFFER, LARGE_BUFFER, 4096, SMALL_BUFFER])
    readers = [asyncio.create_task(client.read_until(lambda c: False, timeout_s=20)) for client in clients]

    stopping = None
    for sequence in range(1, 300):
        await publish(broker, channel_id, sequence=sequence, payload={"text": "z" * 2000})
        if sequence == 150:
            stopping = asyncio.create_task(server.stop(grace_s=5))
        if sequence % 10 == 0:
            await asyncio.sleep(0)
    async with asyncio.timeout(30):
        await asyncio.gather(*readers)
        assert stopping is not None
        await stopping

    for client in clients:
        client.close()
        sequences = client.sequences()
        assert sequences == list(range(len(sequences)))
        assert [frame.event for frame in client.frames if frame.event != "comment"][-1] == "control"
        assert client.frames[-1].data is not None
        assert client.frames[-1].data["control_type"] == "server_draining"
        assert client.ended


@pytest.mark.parametrize("broker_kind", ["memory"], indirect=True)
async def test_slow_reader_dropped_then_resumes(
    start_gateway: GatewayFactory, broker: Broker, channel_id: str, mint: Callable[..., str]
) -> None:
    server = await start_gateway(keepalive_interval_s=30, subscriber_buffer_events=20, send_timeout_s=1)
    token = mint(channel_id)
    await publish(broker, channel_id, sequence=0, phase=publish_pb2.PHASE_START)
    stalled, fast = await connected(server, token, channel_id, [SMALL_BUFFER, LARGE_BUFFER])
    total = 600

    reading = asyncio.create_task(fast.read_until(lambda c: total in c.sequences(), timeout_s=30))
    # About 9 MB in all, more than loopback's socket buffers hold, so the
    # stalled client's stream overflows whichever bound it meets first.
    for sequence in range(1, total):
        await publish(broker, channel_id, sequence=sequence, payload={"text": "q" * 15_000})
        if sequence % 5 == 0:
            await asyncio.sleep(0)
    await publish(broker, channel_id, sequence=total, phase=publish_pb2.PHASE_END)
    async with asyncio.timeout(30):
        await reading
    await wait_until(lambda: server.open_stream_count == 0, timeout_s=10)
    await stalled.read_until(lambda c: False, timeout_s=10)
    received = stalled.sequences()
    resumed = RawSseClient(
        server.port, token, channel_id, last_event_id=stalled.stream_frames()[-1].entry_id, receive_buffer=LARGE_BUFFER
    )
    await resumed.connect()
    await resumed.read_until(lambda c: False, timeout_s=10)

    for client in (stalled, fast, resumed):
        client.close()
    assert len(received) < total + 1
    assert received == list(range(len(received)))
    assert received + resumed.sequences() == list(range(total + 1))
    assert fast.sequences() == list(range(total + 1))


@pytest.mark.parametrize("broker_kind", ["memory"], indirect=True)
async def test_vanishing_clients_mid_burst_freed(
    start_gateway: GatewayFactory, broker: Broker, channel_id: str, stream: str, mint: Callable[..., str]
) -> None:
    server = await start_gateway(keepalive_interval_s=0.3)
    token = mint(channel_id)
    await publish(broker, channel_id, sequence=0, phase=publish_pb2.PHASE_START)
    staying = await connected(server, token, channel_id, [LARGE_BUFFER] * 3)
    leaving = await connected(server, token, channel_id, [LARGE_BUFFER, SMALL_BUFFER] * 4)
    total = 240

    readers = [
        asyncio.create_task(client.read_until(lambda c: total in c.sequences(), timeout_s=30)) for client in staying
    ]
    for sequence in range(1, total + 1):
        await publish(broker, channel_id, sequence=sequence, payload={"text": "a" * 1000})
        if sequence % 30 == 0 and leaving:
            leaving.pop().abort()
            await asyncio.sleep(0)
    async with asyncio.timeout(30):
        await asyncio.gather(*readers)
    await wait_until(lambda: server.open_stream_count == len(staying), timeout_s=5)
    for client in staying:
        client.close()
        assert client.sequences() == list(range(total + 1))
    await wait_until(lambda: server.open_stream_count == 0, timeout_s=5)

    assert server.feed.subscriber_count(stream) == 0


@pytest.mark.parametrize("broker_kind", ["memory"], indirect=True)
async def test_pipelined_client_gone_while_events_flow(
    start_gateway: GatewayFactory, broker: Broker, channel_id: str, mint: Callable[..., str]
) -> None:
    # uvicorn stops reading a connection that pipelined a request behind the
    # stream, and reports its close to the pipelined request, not to the stream.
    server = await start_gateway(keepalive_interval_s=30)
    token = mint(channel_id)
    sock = await pipelined_stream(server, token, channel_id)
    sock.close()

    async with asyncio.timeout(10):
        for sequence in range(1, 50):
            await publish(broker, channel_id, sequence=sequence)
            await asyncio.sleep(0.05)
            if server.open_stream_count == 0:
                break

    assert server.open_stream_count == 0


@pytest.mark.parametrize("broker_kind", ["memory"], indirect=True)
async def test_pipelined_client_gone_while_idle(
    start_gateway: GatewayFactory,
    broker: Broker,
    channel_id: str,
    mint: Callable[..., str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="gateway_http.sse")
    server = await start_gateway(keepalive_interval_s=0.1)
    token = mint(channel_id)
    sock = await pipelined_stream(server, token, channel_id)
    sock.close()

    await wait_until(lambda: server.open_stream_count == 0, timeout_s=5)

    assert server.open_stream_count == 0
    reasons = [record.__dict__.get("reason") for record in caplog.records if record.getMessage() == "stream closed"]
    assert reasons == ["client disconnected"]
    assert not [record for record in caplog.records if record.levelname == "ERROR"]
