"""Both front doors on the embedded broker, as ``conduit dev`` runs them."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

import grpc
import httpx
import pytest

from broker import Broker, create_broker
from broker.keys import stream_key
from conduit.v1alpha.publish_pb2 import PublishRequest
from conduit.v1alpha.publish_pb2_grpc import PublishServiceStub
from publish_grpc import PublishServer
from tests.publish_grpc.conftest import ORG_ID, RATE_LIMIT, bearer, make_request, make_settings


@pytest.fixture
async def memory_broker() -> AsyncIterator[Broker]:
    broker = create_broker(make_settings(None).broker)
    yield broker
    await broker.close()


@pytest.fixture
async def memory_server(memory_broker: Broker) -> AsyncIterator[PublishServer]:
    server = PublishServer(make_settings(None), memory_broker)
    await server.start()
    yield server
    await server.stop(grace_s=1)


async def publish_http(server: PublishServer, request: PublishRequest) -> tuple[int, str]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.http_port}", timeout=10) as http:
        response = await http.post(
            f"/publish/{ORG_ID}/{request.channel_id}",
            content=request.SerializeToString(),
            headers={"authorization": bearer()},
        )
    return response.status_code, response.text


async def publish_grpc(server: PublishServer, request: PublishRequest) -> tuple[int, str]:
    request.org_id = ORG_ID
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        try:
            response = await PublishServiceStub(channel).Publish(
                request, metadata=(("authorization", bearer()),), timeout=10
            )
        except grpc.aio.AioRpcError as error:
            return error.code().value[0], error.details() or ""
    return 0, response.stream_id


FRONT_DOORS = [pytest.param(publish_http, id="http"), pytest.param(publish_grpc, id="grpc")]
OK = {publish_http: 200, publish_grpc: grpc.StatusCode.OK.value[0]}
INVALID = {publish_http: 400, publish_grpc: grpc.StatusCode.INVALID_ARGUMENT.value[0]}
RATE_LIMITED = {publish_http: 429, publish_grpc: grpc.StatusCode.RESOURCE_EXHAUSTED.value[0]}


@pytest.mark.parametrize("publish", FRONT_DOORS)
async def test_memory_publish_stored(memory_server: PublishServer, memory_broker: Broker, publish) -> None:
    request = make_request()

    status, stream_id = await publish(memory_server, request)

    assert status == OK[publish]
    entries = await memory_broker.read(stream_key(ORG_ID, request.channel_id), "0-0", count=10, block_ms=0)
    assert [entry.id for entry in entries] == [stream_id]
    assert entries[0].data == request.SerializeToString()


@pytest.mark.parametrize("publish", FRONT_DOORS)
async def test_memory_invalid_request_leaves_no_stream(
    memory_server: PublishServer, memory_broker: Broker, publish
) -> None:
    request = make_request(payload={"score": float("nan")})

    status, message = await publish(memory_server, request)

    assert status == INVALID[publish]
    assert message == "'payload.score' is NaN, which JSON cannot represent"
    assert await memory_broker.info(stream_key(ORG_ID, request.channel_id)) is None


@pytest.mark.parametrize("publish", FRONT_DOORS)
async def test_memory_over_rate_limit_rejected(memory_server: PublishServer, memory_broker: Broker, publish) -> None:
    channel_id = str(uuid.uuid4())
    for _ in range(RATE_LIMIT):
        status, _ = await publish(memory_server, make_request(channel_id=channel_id))
        assert status == OK[publish]

    status, message = await publish(memory_server, make_request(channel_id=channel_id))

    assert status == RATE_LIMITED[publish]
    assert message.startswith(f"publish rate limit exceeded for {stream_key(ORG_ID, channel_id)}")
    info = await memory_broker.info(stream_key(ORG_ID, channel_id))
    assert info is not None
    assert info.length == RATE_LIMIT
