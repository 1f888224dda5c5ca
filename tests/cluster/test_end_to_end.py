"""The whole service on a Redis Cluster, and retried publishes on every broker.

The hello-world, resume and ``conduit dev`` tests of tests/test_end_to_end.py
run here again, imported unchanged. The ``broker`` fixture below puts the
publish service and the gateway on the session's Redis Cluster, and
``dev_environment`` starts ``conduit dev`` with REDIS_CLUSTER=1.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator

import grpc
import httpx
import pytest

from broker import create_broker
from broker.base import Broker
from broker.keys import stream_key
from conduit.sdk import build_request
from conduit.settings import BrokerSettings
from conduit.v1alpha import publish_pb2, publish_pb2_grpc
from tests.publishing import publish_http
from tests.services import LocalService
from tests.test_end_to_end import (  # noqa: F401 (fixtures and tests collected here again)
    ORG_ID,
    rsa_keys,
    service,
    test_conduit_dev_serves_hello_world,
    test_hello_world_reaches_every_subscriber,
    test_resume_after_last_event_id,
)

_TIMEOUT_S = 15


@pytest.fixture(params=["cluster"])
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[Broker]:
    """The broker under the service: the session's Redis Cluster (more kinds where a test asks)."""
    settings = BrokerSettings(redis_url=None)
    if request.param == "redis":
        settings = BrokerSettings(redis_url=request.getfixturevalue("redis_url"))
    elif request.param == "cluster":
        settings = BrokerSettings(redis_url=request.getfixturevalue("redis_cluster_url"), redis_cluster=True)
    instance = create_broker(settings)
    yield instance
    await instance.close()


@pytest.fixture
def dev_environment(redis_cluster_url: str) -> dict[str, str]:
    """The environment of a ``conduit dev`` child that runs on the session's Redis Cluster."""
    prefixes = ("REDIS_", "PUBLISH_", "GATEWAY_", "CONDUIT_HOST")
    env = {name: value for name, value in os.environ.items() if not name.startswith(prefixes)}
    env["REDIS_URL"] = redis_cluster_url
    env["REDIS_CLUSTER"] = "1"
    return env


async def publish_over_grpc_unary(service: LocalService, request: publish_pb2.PublishRequest) -> str:
    async with grpc.aio.insecure_channel(service.grpc_target) as channel:
        stub = publish_pb2_grpc.PublishServiceStub(channel)
        response = await stub.Publish(
            request, metadata=(("authorization", f"Bearer {service.publisher_token()}"),), timeout=_TIMEOUT_S
        )
    return response.stream_id


@pytest.mark.parametrize("broker", ["memory", "redis", "cluster"], indirect=True)
async def test_retried_message_id_returns_original_id(service: LocalService, broker: Broker) -> None:
    channel_id = str(uuid.uuid4())
    request = build_request(
        org_id=ORG_ID, channel_id=channel_id, phase=publish_pb2.PHASE_DELTA, sequence=1, payload={"value": "once"}
    )

    async with httpx.AsyncClient() as client:
        original_id = await publish_http(client, service.publish_url, request, service.publisher_token())
        http_retry_id = await publish_http(client, service.publish_url, request, service.publisher_token())
    grpc_retry_id = await publish_over_grpc_unary(service, request)

    assert http_retry_id == original_id
    assert grpc_retry_id == original_id
    entries = await broker.read(stream_key(ORG_ID, channel_id), "0-0", count=10, block_ms=0)
    assert [entry.id for entry in entries] == [original_id]
    assert entries[0].data == request.SerializeToString()


@pytest.mark.parametrize("broker", ["memory", "redis", "cluster"], indirect=True)
async def test_retry_over_grpc_first_returns_original_id(service: LocalService, broker: Broker) -> None:
    channel_id = str(uuid.uuid4())
    request = build_request(org_id=ORG_ID, channel_id=channel_id, phase=publish_pb2.PHASE_END, sequence=9)

    original_id = await publish_over_grpc_unary(service, request)
    grpc_retry_id = await publish_over_grpc_unary(service, request)
    async with httpx.AsyncClient() as client:
        http_retry_id = await publish_http(client, service.publish_url, request, service.publisher_token())

    assert grpc_retry_id == original_id
    assert http_retry_id == original_id
    info = await broker.info(stream_key(ORG_ID, channel_id))
    assert info is not None
    assert info.length == 1
    assert info.last_id == original_id
