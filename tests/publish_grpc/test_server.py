"""PublishServer lifecycle: binding, draining on stop, and start-up errors."""

from __future__ import annotations

import asyncio
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace

import grpc
import pytest
import redis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import REGISTRY

from broker import Broker
from broker.keys import stream_key
from conduit.errors import ConfigError
from conduit.v1alpha.publish_pb2 import PublishRequest
from conduit.v1alpha.publish_pb2_grpc import PublishServiceStub
from publish_grpc import PublishServer
from tests.publish_grpc.conftest import ORG_ID, bearer, make_request, make_settings

WAIT_TIMEOUT_S = 10


async def wait_until(condition: Callable[[], bool], description: str) -> None:
    """Poll ``condition`` until it holds, failing after WAIT_TIMEOUT_S."""
    deadline = time.monotonic() + WAIT_TIMEOUT_S
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting until {description}")
        await asyncio.sleep(0.01)


def accepts_connections(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) == 0


async def test_server_binds_requested_ports(redis_url: str, broker: Broker) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        free = probe.getsockname()[1]
    settings = replace(make_settings(redis_url), publish_port=free)
    server = PublishServer(settings, broker)

    await server.start()
    try:
        assert server.http_port == free
        assert server.grpc_port > 0
        assert server.grpc_port != free
    finally:
        await server.stop(grace_s=1)


async def test_server_port_taken_raises(redis_url: str, broker: Broker) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = PublishServer(replace(make_settings(redis_url), publish_grpc_port=port), broker)

        with pytest.raises(OSError, match=f"publish: cannot bind gRPC on 127.0.0.1:{port}"):
            await server.start()


async def test_server_http_port_taken_names_setting(redis_url: str, broker: Broker) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = PublishServer(replace(make_settings(redis_url), publish_port=port), broker)

        with pytest.raises(OSError) as raised:
            await server.start()

    message = str(raised.value)
    assert message.startswith(f"publish: cannot bind 127.0.0.1:{port}: ")
    assert message.endswith("; choose another port with PUBLISH_PORT or --publish-port")


async def test_server_without_publisher_secret_raises(redis_url: str, broker: Broker) -> None:
    settings = replace(make_settings(redis_url), publish_jwt=None)

    with pytest.raises(ConfigError, match="^PUBLISH_JWT_SECRET is required but not set$"):
        PublishServer(settings, broker)


async def test_server_ports_before_start_raise(redis_url: str, broker: Broker) -> None:
    server = PublishServer(make_settings(redis_url), broker)

    with pytest.raises(RuntimeError, match="not started"):
        _ = server.grpc_port
    with pytest.raises(RuntimeError, match="not started"):
        _ = server.http_port


async def test_server_stop_reports_not_serving(server: PublishServer) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""), timeout=10)
        statuses = watch.__aiter__()
        assert (await anext(statuses)).status == health_pb2.HealthCheckResponse.SERVING

        stopping = asyncio.create_task(server.stop(grace_s=5))
        try:
            assert (await anext(statuses)).status == health_pb2.HealthCheckResponse.NOT_SERVING
        finally:
            watch.cancel()
            await asyncio.wait_for(stopping, WAIT_TIMEOUT_S)


async def test_server_stop_finishes_grpc_stream(server: PublishServer, redis_client: redis.Redis) -> None:
    channel_id = make_request().channel_id
    requests: asyncio.Queue[PublishRequest | None] = asyncio.Queue(maxsize=1)

    async def request_stream() -> AsyncIterator[PublishRequest]:
        while (request := await requests.get()) is not None:
            yield request

    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        call = PublishServiceStub(channel).PublishStream(
            request_stream(), metadata=(("authorization", bearer()),), timeout=WAIT_TIMEOUT_S
        )
        responses = call.__aiter__()
        await requests.put(make_request(org_id=ORG_ID, channel_id=channel_id, sequence=1))
        first = await anext(responses)

        stopping = asyncio.create_task(server.stop(grace_s=WAIT_TIMEOUT_S))
        await wait_until(lambda: not accepts_connections(server.grpc_port), "gRPC stops accepting")
        # The stream opened before stop() may still publish during the grace period.
        await requests.put(make_request(org_id=ORG_ID, channel_id=channel_id, sequence=2))
        second = await anext(responses)
        await requests.put(None)
        assert await call.code() == grpc.StatusCode.OK
        await asyncio.wait_for(stopping, WAIT_TIMEOUT_S)

    entries = redis_client.xrange(stream_key(ORG_ID, channel_id))
    assert [entry_id.decode() for entry_id, _ in entries] == [first.stream_id, second.stream_id]


async def test_server_stop_finishes_http_request(server: PublishServer, redis_client: redis.Redis) -> None:
    request = make_request()
    body = request.SerializeToString()
    half = len(body) // 2
    reader, writer = await asyncio.open_connection("127.0.0.1", server.http_port)
    try:
        writer.write(
            f"POST /publish/{ORG_ID}/{request.channel_id} HTTP/1.1\r\nhost: test\r\n"
            f"authorization: {bearer()}\r\ncontent-length: {len(body)}\r\n\r\n".encode()
            + body[:half]
        )
        await writer.drain()
        await wait_until(
            lambda: REGISTRY.get_sample_value("conduit_publish_in_flight", {"front_door": "http"}) == 1,
            "the publish handler runs",
        )

        stopping = asyncio.create_task(server.stop(grace_s=WAIT_TIMEOUT_S))
        await wait_until(lambda: not accepts_connections(server.http_port), "HTTP stops accepting")
        writer.write(body[half:])
        await writer.drain()
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT_TIMEOUT_S)
        await asyncio.wait_for(stopping, WAIT_TIMEOUT_S)
    finally:
        writer.close()

    assert head.startswith(b"HTTP/1.1 200 OK\r\n")
    assert redis_client.xlen(stream_key(ORG_ID, request.channel_id)) == 1


class _FreezingProxy:
    """A TCP proxy that forwards until ``freeze``, then drops every byte while the sockets stay open.

    To the server, the client then looks like a peer whose host went away
    without closing its connections.
    """

    def __init__(self, target_port: int) -> None:
        self._target_port = target_port
        self._frozen = asyncio.Event()
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._server: asyncio.Server | None = None
        self.port = 0

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def freeze(self) -> None:
        self._frozen.set()

    async def close(self) -> None:
        assert self._server is not None
        self._server.close()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for writer in self._writers:
            writer.close()

    async def _accept(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        server_reader, server_writer = await asyncio.open_connection("127.0.0.1", self._target_port)
        self._writers += [client_writer, server_writer]
        for reader, writer in ((client_reader, server_writer), (server_reader, client_writer)):
            task = asyncio.create_task(self._forward(reader, writer))
            self._tasks.add(task)

    async def _forward(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            if self._frozen.is_set():
                continue
            writer.write(data)
            await writer.drain()


def stream_readers_running() -> int:
    return sum(1 for task in asyncio.all_tasks() if task.get_name() == "publish-stream-read-ahead")


async def test_server_keepalive_ends_stream_of_frozen_peer(redis_url: str, broker: Broker) -> None:
    server = PublishServer(make_settings(redis_url), broker, keepalive_time_s=0.5, keepalive_timeout_s=0.5)
    await server.start()
    proxy = _FreezingProxy(server.grpc_port)
    await proxy.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{proxy.port}") as channel:
            call = PublishServiceStub(channel).PublishStream(metadata=(("authorization", bearer()),))
            await call.write(make_request(org_id=ORG_ID))
            await call.read()
            assert stream_readers_running() == 1

            proxy.freeze()

            await wait_until(lambda: stream_readers_running() == 0, "the server ends the frozen peer's stream")
            call.cancel()
    finally:
        await proxy.close()
        await server.stop(grace_s=1)
