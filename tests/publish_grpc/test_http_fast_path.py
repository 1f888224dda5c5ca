"""Publishes that start without a task (``start_publish``) on the raw publish port, on Redis and the embedded broker.

A publish on a channel that this process tracked within the last second,
with its whole body in one read, takes ``Broker.append_nowait``. Its response
must match the awaited path's byte for byte, come in request order, and
leave nothing behind when the client or the server goes away first.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import re
import socket
import struct
import time
import uuid
from collections.abc import AsyncIterator

import pytest
import redis
import redis.asyncio
from prometheus_client import REGISTRY

from broker import Broker, create_broker
from broker.keys import stream_key
from conduit.v1alpha.publish_pb2 import Phase
from publish_grpc import PublishServer
from publish_grpc.auth import TokenVerifier
from publish_grpc.http_app import create_http_app
from publish_grpc.http_listener import PublishHttpServer
from publish_grpc.http_publish import start_publish
from publish_grpc.http_request import HttpRequest
from publish_grpc.publisher import Publisher
from tests.publish_grpc.conftest import MAX_MESSAGE_BYTES, ORG_ID, RATE_LIMIT, bearer, make_request, make_settings
from tests.publish_grpc.test_http_protocol import DATE_LINE, RawConnection, RawResponse, publish_head
from tests.redis_process import RedisProcess

# Guards against hangs only: each step is expected to end long before.
WAIT_TIMEOUT_S = 10.0
PAUSE_MS = 60_000


def publish_message(channel_id: str, *extra: str, **fields: object) -> tuple[bytes, bytes]:
    """Return the head and body of a publish on ``channel_id`` with a Content-Length."""
    body = make_request(channel_id=channel_id, **fields).SerializeToString()
    return publish_head(channel_id, f"content-length: {len(body)}", *extra), body


def without_date(response: RawResponse) -> tuple[bytes, list[bytes], bytes]:
    lines = [line for line in response.header_lines if not DATE_LINE.fullmatch(line + b"\r\n")]
    return response.status_line, lines, response.body


def http_context(server: PublishServer):
    context = server._http._context
    assert context is not None
    return context


@pytest.fixture
async def open_raw() -> AsyncIterator:
    """Open raw connections to a server's publish port; each is closed at teardown."""
    opened: list[asyncio.StreamWriter] = []

    async def open_connection(server: PublishServer) -> RawConnection:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.http_port)
        opened.append(writer)
        return RawConnection(reader, writer)

    yield open_connection
    for writer in opened:
        writer.close()
        try:
            await writer.wait_closed()
        except ConnectionError:
            pass


async def wait_until(condition, event: str) -> None:
    deadline = time.monotonic() + WAIT_TIMEOUT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{event} did not happen within the time-out")
        await asyncio.sleep(0.01)


async def wait_until_postponed(raw: redis.asyncio.Redis, count: int) -> None:
    """Return once ``count`` clients wait for Redis to run a postponed command."""
    deadline = time.monotonic() + WAIT_TIMEOUT_S
    while (await raw.info("clients"))["blocked_clients"] < count:
        if time.monotonic() > deadline:
            raise AssertionError(f"fewer than {count} clients postponed within the time-out")
        await asyncio.sleep(0.01)


def assert_no_lost_errors(caplog: pytest.LogCaptureFixture) -> None:
    """Fail on asyncio's reports of an exception that was never retrieved or of a callback that raised."""
    gc.collect()
    for record in caplog.records:
        message = record.getMessage()
        assert "never retrieved" not in message, message
        assert "Exception in callback" not in message, message
        assert "Task exception" not in message, message
        assert record.levelno < logging.ERROR, message


def parsed_end_publish() -> HttpRequest:
    """Return an END publish as the protocol hands it to ``start_publish``: head parsed, whole body arrived."""
    message = make_request(phase=Phase.PHASE_END)
    # start_publish never writes to the transport.
    request = HttpRequest(None, MAX_MESSAGE_BYTES)  # type: ignore[arg-type]
    request.publish_ids = (str(ORG_ID), message.channel_id)
    request.headers = [(b"authorization", bearer().encode())]
    request.add_body(message.SerializeToString())
    request.finish()
    return request


async def read_responses(connection: RawConnection, count: int) -> list[RawResponse]:
    return [await connection.read_response() for _ in range(count)]


async def track(connection: RawConnection, channel_id: str) -> None:
    """Publish once on ``channel_id`` so that the next publishes there take the fast path."""
    head, body = publish_message(channel_id)
    await connection.send(head + body)
    assert (await connection.read_response()).status_line == b"HTTP/1.1 200 OK"


async def send_postponed_publish(
    open_raw, server: PublishServer, raw: redis.asyncio.Redis
) -> tuple[RawConnection, str, bytes]:
    """Publish on a tracked channel while Redis postpones writes; once its batch waits in Redis, return the connection, channel and body."""
    connection = await open_raw(server)
    channel_id = str(uuid.uuid4())
    await track(connection, channel_id)
    head, body = publish_message(channel_id)
    await raw.client_pause(PAUSE_MS, all=False)
    await connection.send(head + body)
    await wait_until_postponed(raw, 1)
    return connection, channel_id, body


def reset(connection: RawConnection) -> None:
    """Close the client's socket with a reset, which the server detects at once, unlike a FIN that may be a half-close."""
    sock = connection.writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    connection.writer.transport.abort()


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    return caplog


@pytest.fixture
async def raw(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    """A plain client on the session's Redis; unpauses Redis at teardown so that a failed test leaves it writable."""
    client = redis.asyncio.Redis.from_url(redis_url, socket_timeout=WAIT_TIMEOUT_S)
    yield client
    try:
        await client.client_unpause()
    except redis.exceptions.ConnectionError:
        pass
    await client.aclose()


@pytest.fixture
async def memory_server() -> AsyncIterator[PublishServer]:
    broker = create_broker(make_settings(None).broker)
    server = PublishServer(make_settings(None), broker)
    await server.start()
    yield server
    await server.stop(grace_s=1)
    await broker.close()


@pytest.fixture(params=[pytest.param("server", id="redis"), pytest.param("memory_server", id="memory")])
def any_server(request: pytest.FixtureRequest) -> PublishServer:
    """A started PublishServer on Redis, then on the embedded broker."""
    return request.getfixturevalue(request.param)


async def stored(server: PublishServer, channel_id: str) -> list[tuple[bytes, bytes]]:
    """Return the entry ids and data stored on ``channel_id``, oldest first."""
    broker: Broker = server._publisher.broker
    entries = await broker.read(stream_key(ORG_ID, channel_id), "0-0", count=100, block_ms=0)
    return [(entry.id.encode(), entry.data) for entry in entries]


def sample(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def masked_retry(response: RawResponse) -> tuple[bytes, list[bytes], bytes]:
    """Return the response without its Date line and with the seconds of "retry in N s" replaced."""
    status_line, lines, body = without_date(response)
    return status_line, lines, re.sub(rb"retry in [0-9.]+ s", b"retry in N s", body)


async def test_pipelined_fast_and_slow_in_order(open_raw, any_server: PublishServer) -> None:
    server = any_server
    connection = await open_raw(server)
    tracked = str(uuid.uuid4())
    new = str(uuid.uuid4())
    await track(connection, tracked)
    fast_head, fast_body = publish_message(tracked, payload={"step": "fast 1"})
    new_head, new_body = publish_message(new)
    end_head, end_body = publish_message(tracked, phase=Phase.PHASE_END, payload={"step": "end"})
    split_head, split_body = publish_message(new, payload={"step": "split"})
    continue_head, continue_body = publish_message(new, "expect: 100-continue", payload={"step": "continue"})
    last_head, last_body = publish_message(new, payload={"step": "fast 2"})
    health = b"GET /healthz HTTP/1.1\r\nhost: test\r\n\r\n"
    # Rejected by its checks on a tracked channel, so the response comes without a broker call.
    unauthorized = fast_head.replace(b"authorization: Bearer ", b"authorization: Bearer x")

    await connection.send(
        fast_head + fast_body + health + new_head + new_body + end_head + end_body + split_head + split_body[:5]
    )
    await asyncio.sleep(0.05)
    await connection.send(
        split_body[5:] + continue_head + continue_body + unauthorized + fast_body + last_head + last_body
    )
    responses = [await connection.read_response() for _ in range(8)]

    assert [response.status_line for response in responses] == [
        b"HTTP/1.1 200 OK",
        b"HTTP/1.1 200 OK",
        b"HTTP/1.1 200 OK",
        b"HTTP/1.1 200 OK",
        b"HTTP/1.1 200 OK",
        b"HTTP/1.1 200 OK",
        b"HTTP/1.1 401 Unauthorized",
        b"HTTP/1.1 200 OK",
    ]
    assert b'"status":"ok"' in responses[1].body.replace(b" ", b"")
    assert (await stored(server, tracked))[1:] == [(responses[0].body, fast_body), (responses[3].body, end_body)]
    assert await stored(server, new) == [
        (responses[2].body, new_body),
        (responses[4].body, split_body),
        (responses[5].body, continue_body),
        (responses[7].body, last_body),
    ]


async def test_disconnect_during_fast_append_releases_connection(
    open_raw, logs, server: PublishServer, raw: redis.asyncio.Redis, redis_client: redis.Redis
) -> None:
    connection, channel_id, _ = await send_postponed_publish(open_raw, server, raw)

    reset(connection)
    await wait_until(lambda: not http_context(server).connections, "the connection's release")
    await raw.client_unpause()
    await wait_until(lambda: redis_client.xlen(stream_key(ORG_ID, channel_id)) == 2, "the postponed append")
    # The publish after the pause takes the batch task's next batch, so the reply above has been handled.
    other = await open_raw(server)
    await track(other, channel_id)

    assert not http_context(server).tasks
    assert_no_lost_errors(logs)


async def test_stop_during_fast_append_ends_within_grace(
    open_raw, server: PublishServer, raw: redis.asyncio.Redis
) -> None:
    connection, _, _ = await send_postponed_publish(open_raw, server, raw)

    # The bound: the grace, one second for the cancelled tasks, one for the transports, and one to spare.
    await asyncio.wait_for(server.stop(grace_s=0.2), 0.2 + 1 + 1 + 1)
    rest = await asyncio.wait_for(connection.reader.read(), WAIT_TIMEOUT_S)

    assert rest == b"" or rest.startswith(b"HTTP/1.1 ")
    assert not http_context(server).connections


async def test_redis_stopped_fast_path_503_as_awaited(
    open_raw, server: PublishServer, raw: redis.asyncio.Redis, redis_process: RedisProcess
) -> None:
    connection = await open_raw(server)
    tracked = str(uuid.uuid4())
    await track(connection, tracked)
    fast_head, fast_body = publish_message(tracked)
    end_head, end_body = publish_message(tracked, phase=Phase.PHASE_END)
    await raw.client_pause(PAUSE_MS, all=False)
    await connection.send(fast_head + fast_body)
    await wait_until_postponed(raw, 1)

    redis_process.stop()
    try:
        fast = await connection.read_response()
        await connection.send(end_head + end_body)
        awaited = await connection.read_response()
    finally:
        redis_process.start()
    await connection.send(fast_head + fast_body)
    after = await connection.read_response()

    assert fast.status_line == b"HTTP/1.1 503 Service Unavailable"
    assert without_date(fast) == without_date(awaited)
    assert after.status_line == b"HTTP/1.1 200 OK"


async def test_fast_path_429_as_awaited(open_raw, any_server: PublishServer) -> None:
    connection = await open_raw(any_server)
    channel_id = str(uuid.uuid4())
    for _ in range(RATE_LIMIT):
        await track(connection, channel_id)
    fast_head, fast_body = publish_message(channel_id)
    end_head, end_body = publish_message(channel_id, phase=Phase.PHASE_END)

    await connection.send(fast_head + fast_body)
    fast = await connection.read_response()
    await connection.send(end_head + end_body)
    awaited = await connection.read_response()

    assert fast.status_line == b"HTTP/1.1 429 Too Many Requests"
    assert fast.header(b"retry-after") is not None
    assert masked_retry(fast) == masked_retry(awaited)
    assert len(await stored(any_server, channel_id)) == RATE_LIMIT


async def test_fast_path_duplicate_as_awaited(open_raw, any_server: PublishServer) -> None:
    connection = await open_raw(any_server)
    channel_id = str(uuid.uuid4())
    message_id = str(uuid.uuid4())
    await track(connection, channel_id)
    first_head, first_body = publish_message(channel_id, message_id=message_id)
    end_head, end_body = publish_message(channel_id, message_id=message_id, phase=Phase.PHASE_END)

    await connection.send(first_head + first_body)
    first = await connection.read_response()
    await connection.send(first_head + first_body)
    fast_retry = await connection.read_response()
    await connection.send(end_head + end_body)
    awaited_retry = await connection.read_response()

    assert first.status_line == b"HTTP/1.1 200 OK"
    assert without_date(fast_retry) == without_date(first)
    assert without_date(awaited_retry) == without_date(first)
    assert [entry_id for entry_id, _ in await stored(any_server, channel_id)][1:] == [first.body]


async def test_fast_path_metrics_counted(open_raw, any_server: PublishServer) -> None:
    connection = await open_raw(any_server)
    channel_id = str(uuid.uuid4())
    await track(connection, channel_id)
    accepted = sample("conduit_publish_requests_total", front_door="http", outcome="accepted")
    limited = sample("conduit_publish_requests_total", front_door="http", outcome="rate_limited")
    appends = sample("conduit_broker_duration_seconds_count", operation="append")
    in_flight = sample("conduit_publish_in_flight", front_door="http")
    messages = [publish_message(channel_id) for _ in range(RATE_LIMIT)]

    await connection.send(b"".join(head + body for head, body in messages))
    responses = [await connection.read_response() for _ in range(RATE_LIMIT)]

    statuses = [response.status_line for response in responses]
    assert statuses == [b"HTTP/1.1 200 OK"] * (RATE_LIMIT - 1) + [b"HTTP/1.1 429 Too Many Requests"]
    assert sample("conduit_publish_requests_total", front_door="http", outcome="accepted") == accepted + RATE_LIMIT - 1
    assert sample("conduit_publish_requests_total", front_door="http", outcome="rate_limited") == limited + 1
    assert sample("conduit_broker_duration_seconds_count", operation="append") == appends + RATE_LIMIT
    assert sample("conduit_publish_in_flight", front_door="http") == in_flight


async def test_closed_broker_fast_path_as_awaited(open_raw, any_server: PublishServer) -> None:
    connection = await open_raw(any_server)
    channel_id = str(uuid.uuid4())
    await track(connection, channel_id)
    fast_head, fast_body = publish_message(channel_id)
    end_head, end_body = publish_message(channel_id, phase=Phase.PHASE_END)
    await any_server._publisher.broker.close()
    errors = sample("conduit_broker_errors_total", operation="append")
    appends = sample("conduit_broker_duration_seconds_count", operation="append")

    await connection.send(fast_head + fast_body)
    fast = await connection.read_response()
    fast_errors = sample("conduit_broker_errors_total", operation="append") - errors
    fast_appends = sample("conduit_broker_duration_seconds_count", operation="append") - appends
    await connection.send(end_head + end_body)
    awaited = await connection.read_response()

    assert fast.status_line == b"HTTP/1.1 503 Service Unavailable"
    assert without_date(fast) == without_date(awaited)
    assert (fast_errors, fast_appends) == (1, 1)
    assert sample("conduit_broker_errors_total", operation="append") == errors + 2


async def test_killed_batch_connection_fast_path_stores_once(
    open_raw, logs, server: PublishServer, raw: redis.asyncio.Redis, redis_client: redis.Redis
) -> None:
    connection, channel_id, body = await send_postponed_publish(open_raw, server, raw)

    # Drops the postponed EVALSHA with its connection; the batch is sent once more on a new one.
    killed = await raw.client_kill_filter(_type="normal", skipme=True)
    await raw.client_unpause()
    response = await connection.read_response()

    assert killed >= 1
    assert response.status_line == b"HTTP/1.1 200 OK"
    stored_entries = redis_client.xrange(stream_key(ORG_ID, channel_id))
    assert [(entry_id, fields[b"data"]) for entry_id, fields in stored_entries[1:]] == [(response.body, body)]
    assert_no_lost_errors(logs)


async def test_fast_path_append_deadline_as_awaited(
    open_raw, redis_url: str, broker: Broker, raw: redis.asyncio.Redis
) -> None:
    settings = make_settings(redis_url)
    assert settings.publish_jwt is not None
    # Far below the Redis client's socket timeout, which alone bounds a batch.
    publisher = Publisher(
        broker, TokenVerifier(settings.publish_jwt), max_message_bytes=MAX_MESSAGE_BYTES, append_timeout_s=0.2
    )
    http_server = PublishHttpServer(publisher, create_http_app(publisher), "127.0.0.1", 0, body_read_timeout_s=1)
    await http_server.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", http_server.port)
        connection = RawConnection(reader, writer)
        channel_id = str(uuid.uuid4())
        await track(connection, channel_id)
        fast_head, fast_body = publish_message(channel_id)
        end_head, end_body = publish_message(channel_id, phase=Phase.PHASE_END)
        await raw.client_pause(PAUSE_MS, all=False)

        await connection.send(fast_head + fast_body)
        fast = await connection.read_response()
        await connection.send(end_head + end_body)
        awaited = await connection.read_response()
        await raw.client_unpause()
        writer.close()
    finally:
        await http_server.stop(grace_s=1)

    assert fast.status_line == b"HTTP/1.1 503 Service Unavailable"
    assert fast.body == b"broker timed out after 0.2 s; the message may or may not be stored"
    assert without_date(fast) == without_date(awaited)


async def test_concurrent_connections_ids_match_bodies(open_raw, any_server: PublishServer) -> None:
    connections = [await open_raw(any_server) for _ in range(20)]
    channels = [str(uuid.uuid4()) for _ in connections]
    for connection, channel_id in zip(connections, channels, strict=True):
        await track(connection, channel_id)
    sent = [[publish_message(channel_id) for _ in range(RATE_LIMIT - 1)] for channel_id in channels]

    for connection, messages in zip(connections, sent, strict=True):
        connection.writer.write(b"".join(head + body for head, body in messages))
    replies = await asyncio.gather(*(read_responses(connection, RATE_LIMIT - 1) for connection in connections))

    for channel_id, messages, responses in zip(channels, sent, replies, strict=True):
        assert [response.status_line for response in responses] == [b"HTTP/1.1 200 OK"] * (RATE_LIMIT - 1)
        expected = [(response.body, body) for response, (_, body) in zip(responses, messages, strict=True)]
        assert (await stored(any_server, channel_id))[1:] == expected


async def test_awaited_publish_cancelled_before_start_finishes_attempt() -> None:
    settings = make_settings(None)
    assert settings.publish_jwt is not None
    broker = create_broker(settings.broker)
    publisher = Publisher(broker, TokenVerifier(settings.publish_jwt), max_message_bytes=MAX_MESSAGE_BYTES)
    request = parsed_end_publish()
    in_flight = sample("conduit_publish_in_flight", front_door="http")
    cancelled = sample("conduit_publish_requests_total", front_door="http", outcome="cancelled")
    responses: list[object] = []

    # An END cannot start without awaiting, so start_publish returns a task for it.
    task = start_publish(publisher, request, responses.append)
    assert isinstance(task, asyncio.Task)
    # What PublishHttpServer.stop does to a task that the loop has not run yet.
    task.cancel()
    await asyncio.wait([task], timeout=WAIT_TIMEOUT_S)
    await broker.close()

    assert task.cancelled()
    assert responses == []
    assert sample("conduit_publish_in_flight", front_door="http") == in_flight
    assert sample("conduit_publish_requests_total", front_door="http", outcome="cancelled") == cancelled + 1


async def test_awaited_publish_cancelled_while_appending_counted_once(
    redis_url: str, broker: Broker, raw: redis.asyncio.Redis
) -> None:
    settings = make_settings(redis_url)
    assert settings.publish_jwt is not None
    publisher = Publisher(broker, TokenVerifier(settings.publish_jwt), max_message_bytes=MAX_MESSAGE_BYTES)
    request = parsed_end_publish()
    in_flight = sample("conduit_publish_in_flight", front_door="http")
    cancelled = sample("conduit_publish_requests_total", front_door="http", outcome="cancelled")
    responses: list[object] = []
    await raw.client_pause(PAUSE_MS, all=False)

    task = start_publish(publisher, request, responses.append)
    assert isinstance(task, asyncio.Task)
    await wait_until_postponed(raw, 1)
    task.cancel()
    await asyncio.wait([task], timeout=WAIT_TIMEOUT_S)

    assert task.cancelled()
    assert responses == []
    assert sample("conduit_publish_in_flight", front_door="http") == in_flight
    assert sample("conduit_publish_requests_total", front_door="http", outcome="cancelled") == cancelled + 1
