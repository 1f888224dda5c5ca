"""Broker outages: 503 and UNAVAILABLE, /readyz 503, nothing stored, service back once Redis is."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import grpc
import httpx
import pytest

from broker import create_broker
from broker.keys import stream_key
from conduit.v1alpha.publish_pb2_grpc import PublishServiceStub
from publish_grpc import PublishServer
from tests.publish_grpc.conftest import ORG_ID, bearer, make_request, make_settings
from tests.redis_process import RedisProcess, free_port


@pytest.fixture
async def closed_port_server() -> AsyncIterator[PublishServer]:
    """A PublishServer whose broker points at a loopback port where nothing listens."""
    settings = make_settings(f"redis://127.0.0.1:{free_port()}/0")
    broker = create_broker(settings.broker)
    server = PublishServer(settings, broker)
    await server.start()
    yield server
    await server.stop(grace_s=1)
    await broker.close()


async def test_publish_broker_closed_port_503(closed_port_server: PublishServer) -> None:
    request = make_request()

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{closed_port_server.http_port}", timeout=10) as http:
        response = await http.post(
            f"/publish/{ORG_ID}/{request.channel_id}",
            content=request.SerializeToString(),
            headers={"authorization": bearer()},
        )
        readyz = await http.get("/readyz")

    assert response.status_code == 503
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    assert response.text == (
        "Redis append failed (ConnectionError): the message may or may not be stored,"
        " so retry it with the same message_id"
    )
    assert readyz.status_code == 503
    assert readyz.json() == {"status": "broker unavailable"}


async def test_publish_broker_closed_port_unavailable(closed_port_server: PublishServer) -> None:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{closed_port_server.grpc_port}") as channel:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await PublishServiceStub(channel).Publish(
                make_request(org_id=ORG_ID), metadata=(("authorization", bearer()),), timeout=10
            )

    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert raised.value.details() == (
        "Redis append failed (ConnectionError): the message may or may not be stored,"
        " so retry it with the same message_id"
    )


async def test_publish_redis_stopped_503_then_recovers(
    server: PublishServer,
    http: httpx.AsyncClient,
    stub: PublishServiceStub,
    redis_process: RedisProcess,
    caplog: pytest.LogCaptureFixture,
) -> None:
    first = make_request(org_id=ORG_ID)
    key = stream_key(ORG_ID, first.channel_id)
    authorization = bearer()
    assert (await stub.Publish(first, metadata=(("authorization", authorization),), timeout=10)).stream_id

    # Saved, so that the restarted server shows what the outage left behind.
    redis_process.stop(save=True)
    try:
        with caplog.at_level(logging.INFO, logger="publish_grpc"):
            response = await http.post(
                f"/publish/{ORG_ID}/{first.channel_id}",
                content=make_request(channel_id=first.channel_id).SerializeToString(),
                headers={"authorization": authorization},
            )
            readyz = await http.get("/readyz")
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await stub.Publish(
                    make_request(org_id=ORG_ID, channel_id=first.channel_id),
                    metadata=(("authorization", authorization),),
                    timeout=10,
                )
    finally:
        redis_process.start()

    assert response.status_code == 503
    assert response.text.startswith("Redis append failed (")
    assert readyz.status_code == 503
    assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
    assert raised.value.details().startswith("Redis append failed (")

    warnings = [record for record in caplog.records if record.name == "publish_grpc.observe"]
    assert [record.levelno for record in warnings] == [logging.WARNING, logging.WARNING]
    assert [record.reason for record in warnings] == ["broker_unavailable", "broker_unavailable"]  # type: ignore[attr-defined]
    assert all(authorization.split()[1] not in record.getMessage() for record in caplog.records)

    client = redis_process.client()
    try:
        assert client.xlen(key) == 1
    finally:
        client.close()
    recovered = await http.post(
        f"/publish/{ORG_ID}/{first.channel_id}",
        content=make_request(channel_id=first.channel_id).SerializeToString(),
        headers={"authorization": authorization},
    )
    assert recovered.status_code == 200
    assert (await http.get("/readyz")).status_code == 200
