"""The publish port's HTTP/1.1 handling over raw sockets: keep-alive, pipelining, framing and limits."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest
import redis

from broker import Broker
from broker.keys import stream_key
from publish_grpc import PublishServer
from publish_grpc.auth import TokenVerifier
from publish_grpc.http_app import create_http_app
from publish_grpc.http_listener import PublishHttpServer
from publish_grpc.publisher import Publisher
from tests.publish_grpc.conftest import MAX_MESSAGE_BYTES, ORG_ID, RATE_LIMIT, bearer, make_request, make_settings, stream_keys

WAIT_TIMEOUT_S = 10
DATE_LINE = re.compile(rb"date: [A-Z][a-z]{2}, \d\d [A-Z][a-z]{2} \d{4} \d\d:\d\d:\d\d GMT\r\n")


@dataclass
class RawResponse:
    status_line: bytes
    header_lines: list[bytes]
    body: bytes

    def header(self, name: bytes) -> bytes | None:
        for line in self.header_lines:
            key, _, value = line.partition(b": ")
            if key == name:
                return value
        return None


class RawConnection:
    """One client connection that writes bytes as given and reads whole responses."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def send(self, data: bytes) -> None:
        self.writer.write(data)
        await self.writer.drain()

    async def read_response(self) -> RawResponse:
        head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), WAIT_TIMEOUT_S)
        status_line, *header_lines = head[:-4].split(b"\r\n")
        response = RawResponse(status_line, header_lines, b"")
        length = response.header(b"content-length")
        if length is not None:
            response.body = await asyncio.wait_for(self.reader.readexactly(int(length)), WAIT_TIMEOUT_S)
        return response

    async def at_eof(self) -> bool:
        """Wait until the server closes the connection, and tell whether it sent nothing more first."""
        rest = await asyncio.wait_for(self.reader.read(), WAIT_TIMEOUT_S)
        return rest == b""


@pytest.fixture
async def connect(server: PublishServer) -> AsyncIterator:
    opened: list[asyncio.StreamWriter] = []

    async def open_connection(port: int | None = None) -> RawConnection:
        reader, writer = await asyncio.open_connection("127.0.0.1", port or server.http_port)
        opened.append(writer)
        return RawConnection(reader, writer)

    yield open_connection
    for writer in opened:
        writer.close()
        await writer.wait_closed()


def publish_head(channel_id: str, *extra: str, version: str = "1.1") -> bytes:
    lines = [f"POST /publish/{ORG_ID}/{channel_id} HTTP/{version}", "host: test", f"authorization: {bearer()}", *extra]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def publish_bytes(*extra: str, version: str = "1.1") -> tuple[str, bytes]:
    """Return a channel id and a whole publish request with a Content-Length body."""
    request = make_request()
    body = request.SerializeToString()
    return request.channel_id, publish_head(request.channel_id, f"content-length: {len(body)}", *extra, version=version) + body


async def test_publish_response_bytes_exact(connect, redis_client: redis.Redis) -> None:
    connection = await connect()
    channel_id, request = publish_bytes()

    await connection.send(request)
    response = await connection.read_response()

    (entry_id, _), = redis_client.xrange(stream_key(ORG_ID, channel_id))
    assert response.status_line == b"HTTP/1.1 200 OK"
    assert DATE_LINE.fullmatch(response.header_lines[0] + b"\r\n")
    assert response.header_lines[1:] == [
        b"content-type: text/plain; charset=utf-8",
        b"content-length: %d" % len(entry_id),
    ]
    assert response.body == entry_id


async def test_keep_alive_serves_many_publishes(connect, redis_client: redis.Redis) -> None:
    connection = await connect()

    for _ in range(3):
        channel_id, request = publish_bytes()
        await connection.send(request)
        response = await connection.read_response()
        assert response.status_line == b"HTTP/1.1 200 OK"
        assert response.header(b"connection") is None
        assert redis_client.xlen(stream_key(ORG_ID, channel_id)) == 1


async def test_pipelined_responses_in_order(connect, redis_client: redis.Redis) -> None:
    connection = await connect()
    first_channel, first = publish_bytes()
    second_channel, second = publish_bytes()
    unknown = b"GET /nowhere HTTP/1.1\r\nhost: test\r\n\r\n"
    health = b"GET /healthz HTTP/1.1\r\nhost: test\r\n\r\n"

    await connection.send(first + unknown + health + second)
    responses = [await connection.read_response() for _ in range(4)]

    assert [response.status_line for response in responses] == [
        b"HTTP/1.1 200 OK", b"HTTP/1.1 404 Not Found", b"HTTP/1.1 200 OK", b"HTTP/1.1 200 OK",
    ]
    (first_id, _), = redis_client.xrange(stream_key(ORG_ID, first_channel))
    (second_id, _), = redis_client.xrange(stream_key(ORG_ID, second_channel))
    assert responses[0].body == first_id
    assert b'"status":"ok"' in responses[2].body.replace(b" ", b"")
    assert responses[3].body == second_id


async def test_pipelined_publishes_one_channel_in_order(connect, redis_client: redis.Redis) -> None:
    connection = await connect()
    channel_id = str(uuid.uuid4())
    # RATE_LIMIT publishes in all, so none is rejected.
    requests = [make_request(channel_id=channel_id, payload={"index": index}) for index in range(RATE_LIMIT)]
    bodies = [request.SerializeToString() for request in requests]
    heads = [publish_head(channel_id, f"content-length: {len(body)}") for body in bodies]
    # The first publish tracks the channel, so the pipelined ones after it are appended in batches.
    await connection.send(heads[0] + bodies[0])
    assert (await connection.read_response()).status_line == b"HTTP/1.1 200 OK"

    await connection.send(b"".join(head + body for head, body in zip(heads[1:], bodies[1:], strict=True)))
    responses = [await connection.read_response() for _ in range(RATE_LIMIT - 1)]

    stored = redis_client.xrange(stream_key(ORG_ID, channel_id))
    assert [response.status_line for response in responses] == [b"HTTP/1.1 200 OK"] * (RATE_LIMIT - 1)
    assert [response.body for response in responses] == [entry_id for entry_id, _ in stored[1:]]
    assert [fields[b"data"] for _, fields in stored] == bodies


async def test_body_in_later_read_published(connect, redis_client: redis.Redis) -> None:
    connection = await connect()
    channel_id = str(uuid.uuid4())
    await connection.send(publish_bytes_for(channel_id))
    assert (await connection.read_response()).status_line == b"HTTP/1.1 200 OK"
    request = make_request(channel_id=channel_id)
    body = request.SerializeToString()

    await connection.send(publish_head(channel_id, f"content-length: {len(body)}") + body[:10])
    await asyncio.sleep(0.05)
    await connection.send(body[10:])
    response = await connection.read_response()

    stored = redis_client.xrange(stream_key(ORG_ID, channel_id))
    assert response.status_line == b"HTTP/1.1 200 OK"
    assert (response.body, body) == (stored[-1][0], stored[-1][1][b"data"])


async def test_invalid_publish_on_tracked_channel_400_keeps_alive(connect, redis_client: redis.Redis) -> None:
    connection = await connect()
    channel_id = str(uuid.uuid4())
    await connection.send(publish_bytes_for(channel_id))
    assert (await connection.read_response()).status_line == b"HTTP/1.1 200 OK"
    body = make_request(channel_id=channel_id, org_id=ORG_ID + 1).SerializeToString()

    await connection.send(publish_head(channel_id, f"content-length: {len(body)}") + body)
    rejected = await connection.read_response()
    await connection.send(publish_bytes_for(channel_id))
    accepted = await connection.read_response()

    assert rejected.status_line == b"HTTP/1.1 400 Bad Request"
    assert b"org_id" in rejected.body
    assert rejected.header(b"connection") is None
    assert accepted.status_line == b"HTTP/1.1 200 OK"
    assert redis_client.xlen(stream_key(ORG_ID, channel_id)) == 2


def publish_bytes_for(channel_id: str) -> bytes:
    body = make_request(channel_id=channel_id).SerializeToString()
    return publish_head(channel_id, f"content-length: {len(body)}") + body


@pytest.mark.parametrize(
    ("version", "extra"), [("1.0", ()), ("1.1", ("connection: close",))], ids=["http-1.0", "connection-close"]
)
async def test_publish_then_close(connect, version: str, extra: tuple[str, ...]) -> None:
    connection = await connect()
    _, request = publish_bytes(*extra, version=version)

    await connection.send(request)
    response = await connection.read_response()

    assert response.status_line == b"HTTP/1.1 200 OK"
    assert response.header_lines[-1] == b"connection: close"
    assert await connection.at_eof()


async def test_expect_continue_before_body(connect, redis_client: redis.Redis) -> None:
    connection = await connect()
    request = make_request()
    body = request.SerializeToString()

    await connection.send(publish_head(request.channel_id, f"content-length: {len(body)}", "expect: 100-continue"))
    interim = await asyncio.wait_for(connection.reader.readuntil(b"\r\n\r\n"), WAIT_TIMEOUT_S)
    await connection.send(body)
    response = await connection.read_response()

    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert response.status_line == b"HTTP/1.1 200 OK"
    assert redis_client.xlen(stream_key(ORG_ID, request.channel_id)) == 1


async def test_expect_continue_ignored_for_http10(
    server: PublishServer, connect, redis_client: redis.Redis
) -> None:
    # RFC 9110 section 10.1.1: a server must ignore 100-continue in an HTTP/1.0 request.
    connection = await connect()
    request = make_request()
    body = request.SerializeToString()

    await connection.send(
        publish_head(request.channel_id, f"content-length: {len(body)}", "expect: 100-continue", version="1.0")
    )
    async with asyncio.timeout(WAIT_TIMEOUT_S):
        while not any(
            http_connection._active is not None and http_connection._active.waiting_for_body
            for http_connection in server._http._context.connections
        ):
            await asyncio.sleep(0.01)
    await connection.send(body)
    response = await connection.read_response()

    assert response.status_line == b"HTTP/1.1 200 OK"
    assert redis_client.xlen(stream_key(ORG_ID, request.channel_id)) == 1


async def test_chunked_body_published(connect, redis_client: redis.Redis) -> None:
    connection = await connect()
    request = make_request()
    body = request.SerializeToString()
    half = len(body) // 2
    chunks = b"%x\r\n%s\r\n%x\r\n%s\r\n0\r\n\r\n" % (half, body[:half], len(body) - half, body[half:])

    await connection.send(publish_head(request.channel_id, "transfer-encoding: chunked") + chunks)
    response = await connection.read_response()

    assert response.status_line == b"HTTP/1.1 200 OK"
    assert redis_client.xlen(stream_key(ORG_ID, request.channel_id)) == 1


async def test_declared_length_over_limit_413_closes(connect, redis_client: redis.Redis) -> None:
    connection = await connect()
    declared = MAX_MESSAGE_BYTES + 1

    # Only the head is sent: the 413 must not wait for the body.
    await connection.send(publish_head(make_request().channel_id, f"content-length: {declared}"))
    response = await connection.read_response()

    assert response.status_line == b"HTTP/1.1 413 Request Entity Too Large"
    assert response.header_lines[-1] == b"connection: close"
    assert response.body.decode() == (
        f"PublishRequest is {declared} bytes (Content-Length), over the limit of {MAX_MESSAGE_BYTES} bytes"
    )
    assert await connection.at_eof()
    assert stream_keys(redis_client) == []


async def test_body_read_timeout_400(redis_url: str, broker: Broker, redis_client: redis.Redis) -> None:
    server = PublishServer(make_settings(redis_url), broker, body_read_timeout_s=0.2)
    await server.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.http_port)
        connection = RawConnection(reader, writer)
        request = make_request()
        body = request.SerializeToString()

        await connection.send(publish_head(request.channel_id, f"content-length: {len(body)}") + body[:-1])
        response = await connection.read_response()
        closed = await connection.at_eof()
        writer.close()
    finally:
        await server.stop(grace_s=1)

    assert response.status_line == b"HTTP/1.1 400 Bad Request"
    assert response.body == (
        b"request body timed out: it did not arrive within 0.2 s, so send the whole body without pausing"
    )
    assert closed
    assert stream_keys(redis_client) == []


async def test_oversized_head_431(connect) -> None:
    connection = await connect()
    filler = "x" * (64 * 1024)

    await connection.send(f"GET /healthz HTTP/1.1\r\nhost: test\r\nx-filler: {filler}\r\n\r\n".encode())
    response = await connection.read_response()

    assert response.status_line == b"HTTP/1.1 431 Request Header Fields Too Large"
    assert response.body.startswith(b"request head is too large")
    assert await connection.at_eof()


async def test_head_without_end_431(connect) -> None:
    connection = await connect()

    # A header value that never ends, sent in pieces.
    await connection.send(b"GET /healthz HTTP/1.1\r\nhost: test\r\nx-filler: ")
    for _ in range(80):
        await connection.send(b"x" * 1024)
        if connection.reader.at_eof() or connection.writer.is_closing():
            break
    response = await connection.read_response()

    assert response.status_line == b"HTTP/1.1 431 Request Header Fields Too Large"
    assert await connection.at_eof()


async def test_malformed_request_400_closes(connect) -> None:
    connection = await connect()

    await connection.send(b"POST /publish/1/2 HTTP/1.1\r\ncontent-length: abc\r\n\r\n")
    response = await connection.read_response()

    assert response.status_line == b"HTTP/1.1 400 Bad Request"
    assert response.header_lines[1:] == [
        b"content-type: text/plain; charset=utf-8",
        b"content-length: %d" % len(response.body),
        b"connection: close",
    ]
    assert response.body == b"Invalid HTTP request received: Invalid character in Content-Length"
    assert await connection.at_eof()


async def test_malformed_after_valid_request(connect) -> None:
    connection = await connect()
    _, good = publish_bytes()

    await connection.send(good + b"NOT HTTP AT ALL\r\n\r\n")
    first = await connection.read_response()
    second = await connection.read_response()

    assert first.status_line == b"HTTP/1.1 200 OK"
    assert second.status_line == b"HTTP/1.1 400 Bad Request"
    assert await connection.at_eof()


async def test_publish_with_upgrade_400(connect, redis_client: redis.Redis) -> None:
    connection = await connect()
    _, request = publish_bytes("connection: upgrade", "upgrade: h2c")

    await connection.send(request)
    response = await connection.read_response()

    assert response.status_line == b"HTTP/1.1 400 Bad Request"
    assert response.body.startswith(b"protocol upgrade is not supported")
    assert await connection.at_eof()
    assert stream_keys(redis_client) == []


async def test_health_with_upgrade_served(connect) -> None:
    connection = await connect()

    await connection.send(b"GET /healthz HTTP/1.1\r\nhost: test\r\nconnection: upgrade\r\nupgrade: websocket\r\n\r\n")
    response = await connection.read_response()

    assert response.status_line == b"HTTP/1.1 200 OK"
    assert response.header_lines[-1] == b"connection: close"
    assert await connection.at_eof()


async def test_publish_path_other_methods(connect) -> None:
    connection = await connect()
    path = f"/publish/{ORG_ID}/{make_request().channel_id}"

    await connection.send(f"GET {path} HTTP/1.1\r\nhost: test\r\n\r\nOPTIONS {path} HTTP/1.1\r\nhost: test\r\n\r\n".encode())
    get = await connection.read_response()
    options = await connection.read_response()

    assert get.status_line == b"HTTP/1.1 405 Method Not Allowed"
    assert options.status_line == b"HTTP/1.1 204 No Content"
    assert options.header(b"allow") is not None


async def test_idle_connection_closed(redis_url: str, broker: Broker) -> None:
    settings = make_settings(redis_url)
    assert settings.publish_jwt is not None
    publisher = Publisher(broker, TokenVerifier(settings.publish_jwt), max_message_bytes=MAX_MESSAGE_BYTES)
    server = PublishHttpServer(
        publisher, create_http_app(publisher), "127.0.0.1", 0, body_read_timeout_s=1, idle_timeout_s=0.1
    )
    await server.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        closed = await RawConnection(reader, writer).at_eof()
        writer.close()
    finally:
        await server.stop(grace_s=1)

    assert closed


async def test_stop_closes_idle_connection(redis_url: str, broker: Broker) -> None:
    server = PublishServer(make_settings(redis_url), broker)
    await server.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", server.http_port)
    connection = RawConnection(reader, writer)
    _, request = publish_bytes()
    await connection.send(request)
    response = await connection.read_response()

    await asyncio.wait_for(server.stop(grace_s=WAIT_TIMEOUT_S), WAIT_TIMEOUT_S)
    closed = await connection.at_eof()
    writer.close()

    assert response.status_line == b"HTTP/1.1 200 OK"
    assert closed
