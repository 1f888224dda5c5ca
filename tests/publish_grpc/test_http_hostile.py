"""The publish port against hostile or sloppy clients: smuggling shapes, floods, stalls and drops.

Every bad request must get a 4xx or 5xx that names the problem (or a clean
close), leave no stream entry, and log neither a traceback nor a token.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import os
import resource
import socket
from collections.abc import AsyncIterator

import pytest
import redis
from prometheus_client import REGISTRY

from broker import Broker
from broker.keys import stream_key
from publish_grpc import PublishServer
from publish_grpc.auth import TokenVerifier
from publish_grpc.http_app import create_http_app
from publish_grpc.http_listener import PublishHttpServer
from publish_grpc.http_protocol import MAX_HEADER_FIELDS, MAX_PIPELINED_REQUESTS
from publish_grpc.publisher import Publisher
from tests.publish_grpc.conftest import MAX_MESSAGE_BYTES, ORG_ID, make_request, make_settings, stream_keys
from tests.publish_grpc.test_http_protocol import RawConnection, connect, publish_bytes, publish_head

__all__ = ["connect"]

WAIT_TIMEOUT_S = 10
MAX_UNREAD_ROUNDS = 1000
HEALTH = b"GET /healthz HTTP/1.1\r\nhost: test\r\n\r\n"


def publish_parts(*extra: str, with_length: bool = False) -> tuple[str, bytes, bytes]:
    """Return a channel id, the head of a publish with ``extra`` headers, and its body."""
    request = make_request()
    body = request.SerializeToString()
    if with_length:
        extra = (f"content-length: {len(body)}", *extra)
    return request.channel_id, publish_head(request.channel_id, *extra), body


def chunked(body: bytes, size_line_suffix: bytes = b"", trailer: bytes = b"") -> bytes:
    return b"%x%s\r\n%s\r\n0\r\n%s\r\n" % (len(body), size_line_suffix, body, trailer)


@pytest.fixture
def log_lines(caplog: pytest.LogCaptureFixture) -> pytest.LogCaptureFixture:
    caplog.set_level(logging.DEBUG)
    return caplog


def assert_clean_log(caplog: pytest.LogCaptureFixture) -> None:
    for record in caplog.records:
        assert record.levelno < logging.ERROR, record.getMessage()
        assert record.exc_info is None, record.getMessage()
        assert "eyJ" not in record.getMessage(), record.getMessage()


async def start_server(redis_url: str, broker: Broker, **options: float) -> PublishHttpServer:
    settings = make_settings(redis_url)
    assert settings.publish_jwt is not None
    publisher = Publisher(broker, TokenVerifier(settings.publish_jwt), max_message_bytes=MAX_MESSAGE_BYTES)
    server = PublishHttpServer(publisher, create_http_app(publisher), "127.0.0.1", 0, **options)  # type: ignore[arg-type]
    await server.start()
    return server


async def send_filler_until_closed(connection: RawConnection) -> None:
    """Send 4 KiB pieces of one endless field, at most 200, until the server closes the connection."""
    for _ in range(200):
        if connection.writer.is_closing() or connection.reader.at_eof():
            return
        try:
            await connection.send(b"a" * 4096)
        except ConnectionError:
            return


async def open_raw(port: int) -> RawConnection:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    return RawConnection(reader, writer)


# Head shapes that llhttp rejects: (extra headers, expected reason).
BAD_FRAMING = {
    "length-and-chunked": (("content-length: 5", "transfer-encoding: chunked"), b"can't be present with"),
    "two-lengths": (("content-length: 5", "content-length: 6"), b"Duplicate Content-Length"),
    "negative-length": (("content-length: -5",), b"Invalid character in Content-Length"),
    "huge-length": (("content-length: " + "9" * 30,), b"Content-Length overflow"),
    "hex-length": (("content-length: 0x10",), b"Invalid character in Content-Length"),
    "empty-length": (("content-length: ",), b"Empty Content-Length"),
    "chunked-not-last": (("transfer-encoding: chunked, gzip",), b"Transfer-Encoding"),
    "folded-header": (("x-folded: a\r\n b",), b"whitespace"),
    "space-before-colon": (("content-length : 5",), b"Invalid header field char"),
    "nul-in-value": (("x-nul: a\x00b",), b"Invalid header value char"),
}


@pytest.mark.parametrize("case", BAD_FRAMING.values(), ids=BAD_FRAMING.keys())
async def test_bad_framing_400_names_reason(connect, redis_client: redis.Redis, log_lines, case) -> None:
    extra, reason = case
    connection = await connect()
    _, head, body = publish_parts(*extra)

    await connection.send(head + body)
    response = await connection.read_response()

    assert response.status_line == b"HTTP/1.1 400 Bad Request"
    assert response.body.startswith(b"Invalid HTTP request received: ")
    assert reason in response.body
    assert await connection.at_eof()
    assert stream_keys(redis_client) == []
    assert_clean_log(log_lines)


BAD_CHUNKS = {
    "size-not-hex": (b"zz\r\nbody\r\n0\r\n\r\n", b"Invalid character in chunk size"),
    "size-overflow": (b"f" * 20 + b"\r\n", b"Chunk size overflow"),
    "bare-lf": (b"4\nbody\n0\n\n", b"Missing expected CR after chunk size"),
    "data-longer-than-size": (b"2\r\nbody\r\n0\r\n\r\n", b"Expected LF after chunk data"),
}


@pytest.mark.parametrize("case", BAD_CHUNKS.values(), ids=BAD_CHUNKS.keys())
async def test_bad_chunk_400(connect, redis_client: redis.Redis, log_lines, case) -> None:
    chunks, reason = case
    connection = await connect()
    _, head, _ = publish_parts("transfer-encoding: chunked")

    await connection.send(head + chunks)
    response = await connection.read_response()

    assert response.status_line == b"HTTP/1.1 400 Bad Request"
    assert response.body == b"request body is malformed: " + reason
    assert await connection.at_eof()
    assert stream_keys(redis_client) == []
    assert_clean_log(log_lines)


async def test_chunk_extension_and_trailer_published(connect, redis_client: redis.Redis) -> None:
    connection = await connect()
    channel_id, head, body = publish_parts("transfer-encoding: chunked")

    await connection.send(head + chunked(body, b";name=value", b"x-checksum: 1\r\n"))
    response = await connection.read_response()

    assert response.status_line == b"HTTP/1.1 200 OK"
    assert redis_client.xlen(stream_key(ORG_ID, channel_id)) == 1


async def test_chunk_framing_not_counted_in_next_head(
    redis_url: str, broker: Broker, redis_client: redis.Redis
) -> None:
    max_head_bytes = 4096
    server = await start_server(redis_url, broker, body_read_timeout_s=1, max_head_bytes=max_head_bytes)
    channel_id, head, body = publish_parts("transfer-encoding: chunked", "expect: 100-continue")
    # One chunk per body byte, each with a 100-byte extension: more framing than a head may have.
    framing = b"".join(b"1;ext=%s\r\n%s\r\n" % (b"e" * 100, body[index : index + 1]) for index in range(len(body)))
    assert len(framing) > 2 * max_head_bytes
    try:
        connection = await open_raw(server.port)
        await connection.send(head)
        # The interim response shows that the head was read, so the framing and the
        # start of the next head arrive in later reads.
        interim = await asyncio.wait_for(connection.reader.readuntil(b"\r\n\r\n"), WAIT_TIMEOUT_S)
        # The next head begins in the read that ends the framing, and the response to
        # the publish shows that this read is over before the rest of that head is sent.
        await connection.send(framing + b"0\r\n\r\n" + HEALTH[:10])
        published = await connection.read_response()
        await connection.send(HEALTH[10:])
        health = await connection.read_response()
        connection.writer.close()
    finally:
        await server.stop(grace_s=1)

    assert interim == b"HTTP/1.1 100 Continue\r\n\r\n"
    assert published.status_line == b"HTTP/1.1 200 OK"
    assert health.status_line == b"HTTP/1.1 200 OK"
    assert redis_client.xlen(stream_key(ORG_ID, channel_id)) == 1


@pytest.mark.parametrize("coding", ["gzip, chunked", "deflate,chunked"])
async def test_other_transfer_coding_501(connect, redis_client: redis.Redis, coding: str) -> None:
    connection = await connect()
    _, head, body = publish_parts(f"transfer-encoding: {coding}")

    await connection.send(head + chunked(body))
    response = await connection.read_response()

    assert response.status_line == b"HTTP/1.1 501 Not Implemented"
    assert coding.encode() in response.body
    assert await connection.at_eof()
    assert stream_keys(redis_client) == []


async def test_endless_trailer_field_400(connect, redis_client: redis.Redis) -> None:
    connection = await connect()
    _, head, body = publish_parts("transfer-encoding: chunked")

    await connection.send(head + b"%x\r\n%s\r\n0\r\nx-endless: " % (len(body), body))
    await send_filler_until_closed(connection)
    response = await connection.read_response()

    assert response.status_line == b"HTTP/1.1 400 Bad Request"
    assert response.body == b"request body is malformed: a chunk extension or trailer field exceeds 65536 bytes"
    assert stream_keys(redis_client) == []


async def test_endless_chunk_extension_on_health_400(connect) -> None:
    connection = await connect()

    await connection.send(b"GET /healthz HTTP/1.1\r\nhost: test\r\ntransfer-encoding: chunked\r\n\r\n1;ext=")
    await send_filler_until_closed(connection)
    response = await connection.read_response()

    assert response.status_line == b"HTTP/1.1 400 Bad Request"
    assert b"a chunk extension or trailer field exceeds" in response.body


async def test_too_many_header_fields_431(connect) -> None:
    connection = await connect()
    fields = b"x: y\r\n" * (MAX_HEADER_FIELDS + 1)

    await connection.send(b"GET /healthz HTTP/1.1\r\n" + fields + b"\r\n")
    response = await connection.read_response()

    assert response.status_line == b"HTTP/1.1 431 Request Header Fields Too Large"
    assert response.body == b"request has more than %d header fields" % MAX_HEADER_FIELDS
    assert await connection.at_eof()


async def test_repeated_authorization_400(connect, redis_client: redis.Redis, log_lines) -> None:
    connection = await connect()
    _, head, body = publish_parts(with_length=True)
    # A proxy may check one of the two while the server would use the other.
    request = head.replace(b"authorization:", b"authorization: Bearer other\r\nauthorization:")

    await connection.send(request + body)
    response = await connection.read_response()

    assert response.status_line == b"HTTP/1.1 400 Bad Request"
    assert response.body == b"the Authorization header appears 2 times: send exactly one bearer token"
    assert stream_keys(redis_client) == []
    assert_clean_log(log_lines)


@pytest.mark.parametrize(
    ("raw_request", "status_line", "reason"),
    [
        (b"GET /healthz HTTP/2.0\r\n\r\n", b"HTTP/1.1 505 HTTP Version Not Supported", b"HTTP/2.0 is not supported"),
        (b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", b"HTTP/1.1 400 Bad Request", b"HTTP/2 is not supported"),
        (b"get /healthz HTTP/1.1\r\n\r\n", b"HTTP/1.1 400 Bad Request", b"Invalid method"),
        (b"GET /heal\xc3\xa9thz HTTP/1.1\r\n\r\n", b"HTTP/1.1 400 Bad Request", b"Invalid char in url path"),
        (b"GET /heal\x00thz HTTP/1.1\r\n\r\n", b"HTTP/1.1 400 Bad Request", b"Invalid char in url path"),
        (b"GET /healthz HTTP/1.1\nhost: test\n\n", b"HTTP/1.1 400 Bad Request", b"Expected CRLF"),
    ],
    ids=["http-2.0-line", "http2-preface", "lowercase-method", "non-ascii-path", "nul-in-path", "bare-lf"],
)
async def test_bad_request_line(connect, raw_request: bytes, status_line: bytes, reason: bytes) -> None:
    connection = await connect()

    await connection.send(raw_request)
    response = await connection.read_response()

    assert response.status_line == status_line
    assert reason in response.body
    assert await connection.at_eof()


@pytest.mark.parametrize(
    ("template", "published"),
    [
        ("//publish/{org}/{channel}", True),
        ("/publish//{org}//{channel}//", True),
        ("/publish/{org}/{channel}/", True),
        ("http://other.example/publish/{org}/{channel}", True),
        ("/publish/%34%32/{channel}", True),
        ("/publish/{org}/{channel}?query=1", True),
        ("/publish/{org}/../{channel}", False),
        ("/publish/{org}/a%2Fb", False),
    ],
)
async def test_publish_target_forms(connect, redis_client: redis.Redis, log_lines, template: str, published: bool) -> None:
    connection = await connect()
    request = make_request()
    body = request.SerializeToString()
    target = template.format(org=ORG_ID, channel=request.channel_id)
    head = publish_head(request.channel_id, f"content-length: {len(body)}").replace(
        f"/publish/{ORG_ID}/{request.channel_id}".encode(), target.encode(), 1
    )

    await connection.send(head + body)
    response = await connection.read_response()

    if published:
        assert response.status_line == b"HTTP/1.1 200 OK"
        assert redis_client.xlen(stream_key(ORG_ID, request.channel_id)) == 1
    else:
        assert response.status_line == b"HTTP/1.1 404 Not Found"
        assert stream_keys(redis_client) == []
    assert_clean_log(log_lines)


@pytest.mark.parametrize("method", [b"GET", b"POST"])
async def test_absolute_target_without_path_404(connect, log_lines, method: bytes) -> None:
    # RFC 9110 section 4.2.3: an empty path in an http URI is the same as "/".
    connection = await connect()

    await connection.send(method + b" http://other.example HTTP/1.1\r\ncontent-length: 0\r\n\r\n")
    response = await connection.read_response()
    await connection.send(b"GET /healthz HTTP/1.1\r\n\r\n")
    health = await connection.read_response()

    assert response.status_line == b"HTTP/1.1 404 Not Found"
    assert health.status_line == b"HTTP/1.1 200 OK"
    assert_clean_log(log_lines)


async def test_pipeline_stops_at_bad_request(connect, redis_client: redis.Redis) -> None:
    connection = await connect()
    first_channel, first = publish_bytes()
    _, last = publish_bytes()

    await connection.send(first + b"POST /publish/1/2 HTTP/1.1\r\ncontent-length: x\r\n\r\n" + last)
    responses = [await connection.read_response(), await connection.read_response()]

    assert [response.status_line for response in responses] == [b"HTTP/1.1 200 OK", b"HTTP/1.1 400 Bad Request"]
    assert await connection.at_eof()
    assert stream_keys(redis_client) == [stream_key(ORG_ID, first_channel).encode()]


async def test_deep_pipeline_503_after_cap(connect, redis_client: redis.Redis) -> None:
    connection = await connect()
    channel_id, request = publish_bytes()
    # One write, so that the server parses it from few socket reads.
    pipeline = HEALTH * (MAX_PIPELINED_REQUESTS + 50) + request

    await connection.send(pipeline)
    statuses = []
    for _ in range(MAX_PIPELINED_REQUESTS + 51):
        response = await connection.read_response()
        statuses.append(response.status_line)
        if response.header(b"connection") == b"close":
            break

    assert set(statuses[:-1]) == {b"HTTP/1.1 200 OK"}
    assert len(statuses) > MAX_PIPELINED_REQUESTS
    assert statuses[-1] == b"HTTP/1.1 503 Service Unavailable"
    assert response.body.startswith(b"too many pipelined requests")
    assert await connection.at_eof()
    assert redis_client.exists(stream_key(ORG_ID, channel_id)) == 0


async def test_publish_sent_byte_by_byte(connect, redis_client: redis.Redis) -> None:
    connection = await connect()
    channel_id, request = publish_bytes()

    for index in range(len(request)):
        await connection.send(request[index : index + 1])
    response = await connection.read_response()

    assert response.status_line == b"HTTP/1.1 200 OK"
    assert redis_client.xlen(stream_key(ORG_ID, channel_id)) == 1


async def test_half_close_after_publish_answered(connect, redis_client: redis.Redis) -> None:
    connection = await connect()
    channel_id, request = publish_bytes()

    await connection.send(request)
    connection.writer.write_eof()
    response = await connection.read_response()

    assert response.status_line == b"HTTP/1.1 200 OK"
    assert await connection.at_eof()
    assert redis_client.xlen(stream_key(ORG_ID, channel_id)) == 1


async def test_half_close_pipeline_all_answered(connect) -> None:
    connection = await connect()

    await connection.send(HEALTH * 3)
    connection.writer.write_eof()
    responses = [await connection.read_response() for _ in range(3)]

    assert [response.status_line for response in responses] == [b"HTTP/1.1 200 OK"] * 3
    assert await connection.at_eof()


@pytest.mark.parametrize("publish", [True, False], ids=["publish", "health"])
async def test_half_close_mid_body_400(connect, redis_client: redis.Redis, publish: bool) -> None:
    connection = await connect()
    _, head, body = publish_parts(with_length=True)
    if not publish:
        head = b"GET /healthz HTTP/1.1\r\nhost: test\r\ncontent-length: %d\r\n\r\n" % len(body)

    await connection.send(head + body[:5])
    connection.writer.write_eof()
    response = await connection.read_response()

    assert response.status_line == b"HTTP/1.1 400 Bad Request"
    assert response.body.startswith(b"request body is incomplete")
    assert await connection.at_eof()
    assert stream_keys(redis_client) == []


async def test_health_head_options_and_body(connect) -> None:
    connection = await connect()
    body = b"z" * (3 * MAX_MESSAGE_BYTES)

    await connection.send(b"HEAD /healthz HTTP/1.1\r\nhost: test\r\n\r\n")
    head_response = await connection.reader.readuntil(b"\r\n\r\n")
    await connection.send(b"OPTIONS /healthz HTTP/1.1\r\nhost: test\r\n\r\n")
    options_response = await connection.read_response()
    await connection.send(b"GET /healthz HTTP/1.1\r\nhost: test\r\ncontent-length: %d\r\n\r\n%s" % (len(body), body))
    get_response = await connection.read_response()

    assert head_response.startswith(b"HTTP/1.1 405 Method Not Allowed\r\n")
    assert options_response.status_line == b"HTTP/1.1 204 No Content"
    assert get_response.status_line == b"HTTP/1.1 200 OK"


async def test_health_expect_continue_answered(connect) -> None:
    connection = await connect()

    await connection.send(b"GET /healthz HTTP/1.1\r\nhost: test\r\nexpect: 100-continue\r\ncontent-length: 10\r\n\r\n")
    response = await connection.read_response()

    assert response.status_line == b"HTTP/1.1 200 OK"
    assert response.header(b"connection") == b"close"


async def test_health_slow_body_times_out(redis_url: str, broker: Broker) -> None:
    server = await start_server(redis_url, broker, body_read_timeout_s=0.2)
    try:
        connection = await open_raw(server.port)
        await connection.send(b"GET /healthz HTTP/1.1\r\nhost: test\r\ncontent-length: 10\r\n\r\nabc")
        response = await connection.read_response()
        closed = await connection.at_eof()
        connection.writer.close()
    finally:
        await server.stop(grace_s=1)

    assert response.status_line == b"HTTP/1.1 400 Bad Request"
    assert response.body.startswith(b"request body timed out")
    assert closed


async def test_slow_head_closed_by_idle_timeout(redis_url: str, broker: Broker) -> None:
    server = await start_server(redis_url, broker, body_read_timeout_s=1, idle_timeout_s=0.2)
    head = b"GET /healthz HTTP/1.1\r\nhost: test\r\nx-slow: " + b"s" * 1000
    try:
        connection = await open_raw(server.port)
        sent = 0
        # A byte every 20 ms keeps the connection busy but never ends the head.
        for byte in head:
            try:
                await connection.send(bytes([byte]))
            except ConnectionError:
                break
            if connection.reader.at_eof():
                break
            sent += 1
            await asyncio.sleep(0.02)
        try:
            closed = await connection.at_eof()
        except ConnectionResetError:
            # A byte sent after the server closed makes the server's kernel send a reset.
            closed = True
        connection.writer.close()
        context = server._context
        assert context is not None
        for _ in range(50):
            if not context.connections:
                break
            await asyncio.sleep(0.05)
        remaining = len(context.connections)
    finally:
        await server.stop(grace_s=1)

    assert sent < len(head)
    assert closed
    assert remaining == 0


async def test_unread_pipeline_bounded_then_aborted(redis_url: str, broker: Broker) -> None:
    server = await start_server(redis_url, broker, body_read_timeout_s=1, idle_timeout_s=1)
    try:
        _, writer = await asyncio.open_connection("127.0.0.1", server.port)
        # The client's own receive buffer stays small, so the server's buffer fills.
        writer.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        # Padded requests fill the socket buffers in fewer requests.
        padded = HEALTH[:-2] + b"x-padding: " + b"p" * 4000 + b"\r\n\r\n"
        sent = 0
        for _ in range(MAX_UNREAD_ROUNDS):
            writer.write(padded * 10)
            try:
                await asyncio.wait_for(writer.drain(), 0.2)
            except TimeoutError:
                break
            sent += 1
        context = server._context
        assert context is not None
        buffered = [connection._transport.get_write_buffer_size() for connection in context.connections]
        # The sweeper closes the idle connection, then aborts it since its client never reads.
        for _ in range(100):
            if not context.connections:
                break
            await asyncio.sleep(0.1)
        remaining = len(context.connections)
        writer.transport.abort()
    finally:
        await server.stop(grace_s=1)

    assert sent < MAX_UNREAD_ROUNDS
    assert len(buffered) == 1
    # At most about one socket read (256 KiB) of requests gets its responses buffered.
    assert buffered[0] < 4 * 1024 * 1024
    assert remaining == 0


def open_server_sockets(port: int) -> int:
    """Return how many file descriptors of this process are accepted sockets on local ``port``."""
    inodes = set()
    for table in ("/proc/self/net/tcp", "/proc/self/net/tcp6"):
        with open(table) as lines:
            next(lines)
            for line in lines:
                fields = line.split()
                local_port = int(fields[1].rsplit(":", 1)[1], 16)
                listening = fields[3] == "0A"
                if local_port == port and not listening:
                    inodes.add(fields[9])
    links = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            links.append(os.readlink(f"/proc/self/fd/{fd}"))
        except OSError:
            continue
    return sum(1 for link in links if link.startswith("socket:[") and link[8:-1] in inodes)


def tasks_except_append_batches() -> list[asyncio.Task[object]]:
    """Return the running tasks except RedisBroker's append batch task, which waits for the next append by design."""
    return [task for task in asyncio.all_tasks() if task.get_name() != "redis-append-batches"]


async def test_dropped_connections_leave_nothing(redis_url: str, broker: Broker, redis_client: redis.Redis) -> None:
    server = await start_server(redis_url, broker, body_read_timeout_s=1)
    _, head, body = publish_parts(with_length=True)
    shapes = [head[: len(head) // 2], head + body[:3], (head + body) * 5, HEALTH * 50, HEALTH[:10]]

    async def drop_round() -> None:
        writers = []
        for index in range(200):
            _, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(shapes[index % len(shapes)])
            writers.append(writer)
        await asyncio.sleep(0)
        for index, writer in enumerate(writers):
            if index % 2:
                writer.transport.abort()
            else:
                writer.close()
        for _ in range(100):
            if not server._context.connections and not server._context.tasks:  # type: ignore[union-attr]
                break
            await asyncio.sleep(0.05)

    try:
        tasks_before = len(tasks_except_append_batches())
        await drop_round()
        await drop_round()
        tasks_after = len(tasks_except_append_batches())
        sockets_after = open_server_sockets(server.port)
        context = server._context
        assert context is not None
        connections, tasks = len(context.connections), len(context.tasks)
    finally:
        await server.stop(grace_s=1)

    assert connections == 0
    assert tasks == 0
    assert tasks_after <= tasks_before
    assert sockets_after == 0


async def test_descriptors_exhausted_accept_pauses(redis_url: str, broker: Broker, log_lines) -> None:
    retry_delay_s = 0.5
    server = await start_server(redis_url, broker, body_read_timeout_s=1, accept_retry_delay_s=retry_delay_s)
    clients = [socket.socket() for _ in range(3)]
    loop = asyncio.get_running_loop()
    soft_limit, hard_limit = resource.getrlimit(resource.RLIMIT_NOFILE)
    lowest_free = os.open(os.devnull, os.O_RDONLY)
    os.close(lowest_free)

    def accept_failures() -> int:
        return sum(1 for record in log_lines.records if record.getMessage().startswith("publish HTTP: accept failed"))

    try:
        # No descriptor from the lowest free one up can be opened, so accept() fails with EMFILE.
        resource.setrlimit(resource.RLIMIT_NOFILE, (lowest_free, hard_limit))
        try:
            for client in clients:
                client.setblocking(False)
                client.connect_ex(("127.0.0.1", server.port))
            started = loop.time()
            async with asyncio.timeout(WAIT_TIMEOUT_S):
                while accept_failures() == 0:
                    await asyncio.sleep(0.01)
            for _ in range(100):
                await asyncio.sleep(0)
            failures = accept_failures()
            elapsed_s = loop.time() - started
        finally:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft_limit, hard_limit))

        # The queued connections are accepted once descriptors are free again.
        reader, writer = await asyncio.open_connection(sock=clients[0])
        writer.write(HEALTH)
        response = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT_TIMEOUT_S)
        writer.close()
    finally:
        for client in clients:
            client.close()
        await server.stop(grace_s=1)

    # One failure per pause: accepting again at every pass of the event loop would log on each.
    assert failures <= 1 + elapsed_s / retry_delay_s
    assert response.startswith(b"HTTP/1.1 200 OK")


class _ListenerWithFailures:
    """A listening socket whose accept() raises the given errors first, then finds no connection."""

    def __init__(self, listener: socket.socket, errors: list[OSError]) -> None:
        self._listener = listener
        self._errors = errors

    def fileno(self) -> int:
        return self._listener.fileno()

    def accept(self) -> tuple[socket.socket, object]:
        if self._errors:
            raise self._errors.pop(0)
        raise BlockingIOError


async def test_accept_error_of_one_connection_keeps_accepting(
    redis_url: str, broker: Broker, log_lines: pytest.LogCaptureFixture
) -> None:
    server = await start_server(redis_url, broker, body_read_timeout_s=1)
    try:
        assert server._socket is not None and server._context is not None
        failing = _ListenerWithFailures(server._socket, [OSError(errno.EPROTO, "Protocol error")])

        server._accept_connections(failing, server._context)  # type: ignore[arg-type]

        paused = server._accept_retry is not None
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(HEALTH)
        response = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT_TIMEOUT_S)
        writer.close()
    finally:
        await server.stop(grace_s=1)

    assert not paused
    assert response.startswith(b"HTTP/1.1 200 OK")
    assert "publish HTTP: accept failed: [Errno 71] Protocol error" in log_lines.text


async def test_stop_answers_publish_waiting_for_body(
    redis_url: str, broker: Broker, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    cancelled_before = _publish_count("cancelled")
    invalid_before = _publish_count("invalid_argument")
    server = PublishServer(make_settings(redis_url), broker)
    await server.start()
    waiting = await open_raw(server.http_port)
    finishing = await open_raw(server.http_port)
    _, head, body = publish_parts(with_length=True)
    finishing_channel, finishing_head, finishing_body = publish_parts(with_length=True)
    await waiting.send(head + body[:5])
    await finishing.send(finishing_head + finishing_body[:5])
    await asyncio.sleep(0.1)

    stop = asyncio.create_task(server.stop(grace_s=0.5))
    await finishing.send(finishing_body[5:])
    finished = await finishing.read_response()
    await asyncio.wait_for(stop, WAIT_TIMEOUT_S)
    rejected = await waiting.read_response()
    for connection in (waiting, finishing):
        connection.writer.close()

    assert finished.status_line == b"HTTP/1.1 200 OK"
    assert redis_client.xlen(stream_key(ORG_ID, finishing_channel)) == 1
    assert rejected.status_line == b"HTTP/1.1 503 Service Unavailable"
    assert rejected.body.endswith(b"retry the request")
    assert len(stream_keys(redis_client)) == 1
    # The server cut the publish off, so it counts as cancelled, not as the client's invalid request.
    assert _publish_count("cancelled") == cancelled_before + 1
    assert _publish_count("invalid_argument") == invalid_before
    assert "publish rejected" not in caplog.text


def _publish_count(outcome: str) -> float:
    return REGISTRY.get_sample_value("conduit_publish_requests_total", {"front_door": "http", "outcome": outcome}) or 0.0

