"""The gRPC PublishService against a real Redis: codes and details for every case, streams, health, reflection."""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import grpc
import jwt
import pytest
import redis
from google.protobuf import descriptor_pb2
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from broker.keys import stream_key
from conduit.v1alpha.publish_pb2 import Phase, PublishRequest, PublishResponse
from conduit.v1alpha.publish_pb2_grpc import PublishServiceStub
from publish_grpc.server import GRPC_RECEIVE_HEADROOM_BYTES
from tests.publish_grpc.conftest import (
    AUDIENCE,
    ISSUER,
    MAX_MESSAGE_BYTES,
    ORG_ID,
    RATE_LIMIT,
    RATE_WINDOW_S,
    bearer,
    make_request,
    make_token,
    request_of_size,
    stream_keys,
)

UUID_FORM = "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"
PUBLISH_METHOD = "/conduit.v1alpha.PublishService/Publish"


def auth(authorization: str | None = "default") -> tuple[tuple[str, str], ...]:
    if authorization is None:
        return ()
    return (("authorization", bearer() if authorization == "default" else authorization),)


async def publish_raw(channel: grpc.aio.Channel, data: bytes, authorization: str | None = "default") -> PublishResponse:
    """Call Publish with ``data`` as the request bytes, encoded or not."""
    call = channel.unary_unary(PUBLISH_METHOD, response_deserializer=PublishResponse.FromString)
    return await call(data, metadata=auth(authorization), timeout=10)


async def test_publish_accepted_returns_stream_id(stub: PublishServiceStub, redis_client: redis.Redis) -> None:
    request = make_request(org_id=ORG_ID)

    response = await stub.Publish(request, metadata=auth(), timeout=10)

    entries = redis_client.xrange(stream_key(ORG_ID, request.channel_id))
    assert [entry_id.decode() for entry_id, _ in entries] == [response.stream_id]
    assert entries[0][1] == {b"data": request.SerializeToString()}


async def test_publish_uppercase_ids_stored_lowercase(stub: PublishServiceStub, redis_client: redis.Redis) -> None:
    channel_id = str(uuid.uuid4())
    request = make_request(org_id=ORG_ID, channel_id=channel_id.upper())

    await stub.Publish(request, metadata=auth(), timeout=10)

    entries = redis_client.xrange(stream_key(ORG_ID, channel_id))
    assert PublishRequest.FromString(entries[0][1][b"data"]).channel_id == channel_id


BAD_TOKENS = [
    pytest.param(None, "authorization is missing: send 'authorization: Bearer <token>'", id="missing"),
    pytest.param(
        f"Basic {make_token()}",
        "authorization must use the Bearer scheme: send 'authorization: Bearer <token>'",
        id="basic-scheme",
    ),
    pytest.param("Bearer abc", "token is malformed: Not enough segments", id="malformed"),
    pytest.param(bearer(make_token(exp=int(time.time()) - 60)), "token has expired: mint a new one", id="expired"),
    pytest.param(
        bearer(make_token(secret="another-secret-that-is-long-enough-32")),
        "token signature is invalid: it was not signed with the publisher secret",
        id="wrong-signature",
    ),
    pytest.param(
        bearer(make_token(iss="someone-else")),
        "token issuer (iss) is not the one this service accepts",
        id="wrong-issuer",
    ),
    pytest.param(
        bearer(make_token(aud="conduit-gateway")),
        "token audience (aud) is not the one this service accepts",
        id="wrong-audience",
    ),
    pytest.param(bearer(make_token(exp=None)), "token is missing the required 'exp' claim", id="no-exp"),
    pytest.param(
        bearer(jwt.encode({"iss": ISSUER, "aud": AUDIENCE, "exp": int(time.time()) + 600}, None, algorithm="none")),
        "token algorithm is not accepted: publisher tokens must use HS256",
        id="alg-none",
    ),
]


@pytest.mark.parametrize(("authorization", "details"), BAD_TOKENS)
async def test_publish_bad_token_unauthenticated(
    stub: PublishServiceStub, redis_client: redis.Redis, authorization: str | None, details: str
) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Publish(make_request(org_id=ORG_ID), metadata=auth(authorization), timeout=10)

    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert raised.value.details() == details
    assert stream_keys(redis_client) == []


TWO_AUTHORIZATIONS = [
    pytest.param((bearer(), "Bearer abc"), id="valid-first"),
    pytest.param(("Bearer abc", bearer()), id="valid-second"),
    pytest.param((bearer(), bearer()), id="both-valid"),
]
TWO_AUTHORIZATIONS_DETAILS = "the authorization metadata appears 2 times: send exactly one bearer token"


@pytest.mark.parametrize("values", TWO_AUTHORIZATIONS)
async def test_publish_two_authorizations_invalid_argument(
    stub: PublishServiceStub, redis_client: redis.Redis, values: tuple[str, str]
) -> None:
    metadata = tuple(("authorization", value) for value in values)

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Publish(make_request(org_id=ORG_ID), metadata=metadata, timeout=10)

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details() == TWO_AUTHORIZATIONS_DETAILS
    assert stream_keys(redis_client) == []


@pytest.mark.parametrize("values", TWO_AUTHORIZATIONS)
async def test_publish_stream_two_authorizations_invalid_argument(
    stub: PublishServiceStub, redis_client: redis.Redis, values: tuple[str, str]
) -> None:
    metadata = tuple(("authorization", value) for value in values)
    call = stub.PublishStream(requests_of(make_request(org_id=ORG_ID)), metadata=metadata, timeout=10)

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for _ in call:
            pass

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details() == TWO_AUTHORIZATIONS_DETAILS
    assert stream_keys(redis_client) == []


CHANNEL = "97f58c19-ce38-4c6b-8a5b-47f3405691f0"

BAD_REQUESTS = [
    pytest.param(
        b"\xff\xff\xff",
        "request is not a valid binary-encoded conduit.v1alpha.PublishRequest (JSON is not accepted): Wire format was corrupt",
        id="undecodable",
    ),
    pytest.param(
        make_request(channel_id=CHANNEL),
        "org_id is missing: set it to the organization that owns the channel",
        id="org-missing",
    ),
    pytest.param(
        make_request(org_id=ORG_ID, channel_id=""),
        f"channel_id is missing: set it to a UUID ({UUID_FORM})",
        id="channel-missing",
    ),
    pytest.param(
        make_request(org_id=ORG_ID, channel_id="channel-7"),
        f"channel_id must be a UUID ({UUID_FORM}), got 'channel-7'",
        id="channel-not-uuid",
    ),
    pytest.param(
        make_request(org_id=ORG_ID, channel_id=CHANNEL, message_id="m-1"),
        f"message_id must be a UUID ({UUID_FORM}), got 'm-1'",
        id="message-id-not-uuid",
    ),
    pytest.param(
        make_request(org_id=ORG_ID, channel_id=CHANNEL, phase=Phase.PHASE_UNSPECIFIED),
        "phase must be one of PHASE_START, PHASE_DELTA, PHASE_END, PHASE_ERROR, got PHASE_UNSPECIFIED (0)",
        id="phase-unspecified",
    ),
    pytest.param(
        make_request(org_id=ORG_ID, channel_id=CHANNEL, phase=7),
        "phase must be one of PHASE_START, PHASE_DELTA, PHASE_END, PHASE_ERROR, got 7, which is not a Phase value",
        id="phase-unknown",
    ),
    pytest.param(
        make_request(org_id=ORG_ID, channel_id=CHANNEL, payload={"list": [{"x": float("inf")}]}),
        "'payload.list[0].x' is Infinity, which JSON cannot represent",
        id="payload-nested-infinity",
    ),
]


@pytest.mark.parametrize(("request_", "details"), BAD_REQUESTS)
async def test_publish_bad_request_invalid_argument(
    grpc_channel: grpc.aio.Channel, redis_client: redis.Redis, request_: PublishRequest | bytes, details: str
) -> None:
    data = request_ if isinstance(request_, bytes) else request_.SerializeToString()

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await publish_raw(grpc_channel, data)

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details() == details
    assert stream_keys(redis_client) == []


async def test_publish_over_size_limit_resource_exhausted(
    stub: PublishServiceStub, redis_client: redis.Redis
) -> None:
    request = request_of_size(MAX_MESSAGE_BYTES + 1, org_id=ORG_ID)

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Publish(request, metadata=auth(), timeout=10)

    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert raised.value.details() == (
        f"PublishRequest is {MAX_MESSAGE_BYTES + 1} bytes, over the limit of {MAX_MESSAGE_BYTES} bytes"
    )
    assert stream_keys(redis_client) == []


async def test_publish_far_over_size_limit_resource_exhausted(
    stub: PublishServiceStub, redis_client: redis.Redis
) -> None:
    # Past the receive limit gRPC itself rejects the message, before our code receives it.
    request = request_of_size(MAX_MESSAGE_BYTES + GRPC_RECEIVE_HEADROOM_BYTES + 100, org_id=ORG_ID)

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Publish(request, metadata=auth(), timeout=10)

    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "larger than max" in raised.value.details()
    assert stream_keys(redis_client) == []


async def test_publish_at_size_limit_accepted(stub: PublishServiceStub) -> None:
    response = await stub.Publish(request_of_size(MAX_MESSAGE_BYTES, org_id=ORG_ID), metadata=auth(), timeout=10)

    assert response.stream_id


async def test_publish_over_rate_limit_resource_exhausted(
    stub: PublishServiceStub, redis_client: redis.Redis
) -> None:
    channel_id = str(uuid.uuid4())
    key = stream_key(ORG_ID, channel_id)
    for _ in range(RATE_LIMIT):
        await stub.Publish(make_request(org_id=ORG_ID, channel_id=channel_id), metadata=auth(), timeout=10)

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await stub.Publish(make_request(org_id=ORG_ID, channel_id=channel_id), metadata=auth(), timeout=10)

    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert raised.value.details().startswith(
        f"publish rate limit exceeded for {key}: at most {RATE_LIMIT} publishes per {RATE_WINDOW_S} s; retry in "
    )
    retry_after = dict(raised.value.trailing_metadata() or ())["retry-after"]
    assert 1 <= int(retry_after) <= RATE_WINDOW_S
    assert redis_client.xlen(key) == RATE_LIMIT


async def requests_of(*requests: PublishRequest) -> AsyncIterator[PublishRequest]:
    for request in requests:
        yield request


async def test_publish_stream_answers_in_order(stub: PublishServiceStub, redis_client: redis.Redis) -> None:
    channel_id = str(uuid.uuid4())
    requests = [
        make_request(org_id=ORG_ID, channel_id=channel_id, phase=phase, sequence=sequence)
        for sequence, phase in enumerate((Phase.PHASE_START, Phase.PHASE_DELTA, Phase.PHASE_END), start=1)
    ]

    call = stub.PublishStream(requests_of(*requests), metadata=auth(), timeout=10)
    responses = [response async for response in call]

    entries = redis_client.xrange(stream_key(ORG_ID, channel_id))
    assert [response.stream_id for response in responses] == [entry_id.decode() for entry_id, _ in entries]
    assert [fields[b"data"] for _, fields in entries] == [request.SerializeToString() for request in requests]
    assert await call.code() == grpc.StatusCode.OK


async def test_publish_stream_error_ends_stream(stub: PublishServiceStub, redis_client: redis.Redis) -> None:
    channel_id = str(uuid.uuid4())
    good = make_request(org_id=ORG_ID, channel_id=channel_id, sequence=1)
    bad = make_request(org_id=ORG_ID, channel_id=channel_id, sequence=2, message_id="not-a-uuid")
    after = make_request(org_id=ORG_ID, channel_id=channel_id, sequence=3)

    call = stub.PublishStream(requests_of(good, bad, after), metadata=auth(), timeout=10)
    responses = []
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for response in call:
            responses.append(response)

    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert raised.value.details() == f"message_id must be a UUID ({UUID_FORM}), got 'not-a-uuid'"
    entries = redis_client.xrange(stream_key(ORG_ID, channel_id))
    assert [response.stream_id for response in responses] == [entries[0][0].decode()]
    assert len(entries) == 1


async def test_publish_stream_rate_limit_ends_stream(stub: PublishServiceStub, redis_client: redis.Redis) -> None:
    channel_id = str(uuid.uuid4())
    key = stream_key(ORG_ID, channel_id)
    requests = [make_request(org_id=ORG_ID, channel_id=channel_id, sequence=index) for index in range(RATE_LIMIT + 3)]

    call = stub.PublishStream(requests_of(*requests), metadata=auth(), timeout=10)
    responses = []
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for response in call:
            responses.append(response)

    assert raised.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    retry_after = dict(raised.value.trailing_metadata() or ())["retry-after"]
    assert 1 <= int(retry_after) <= RATE_WINDOW_S
    entries = redis_client.xrange(key)
    assert [response.stream_id for response in responses] == [entry_id.decode() for entry_id, _ in entries]
    assert [fields[b"data"] for _, fields in entries] == [r.SerializeToString() for r in requests[:RATE_LIMIT]]


async def test_publish_stream_retried_message_id_stored_once(
    stub: PublishServiceStub, redis_client: redis.Redis
) -> None:
    channel_id = str(uuid.uuid4())
    first = make_request(org_id=ORG_ID, channel_id=channel_id, sequence=1)
    retried = PublishRequest()
    retried.CopyFrom(first)

    call = stub.PublishStream(requests_of(first, retried), metadata=auth(), timeout=10)
    responses = [response.stream_id async for response in call]

    assert await call.code() == grpc.StatusCode.OK
    assert len(responses) == 2
    assert responses[0] == responses[1]
    assert redis_client.xlen(stream_key(ORG_ID, channel_id)) == 1


async def test_publish_stream_bad_token_unauthenticated(stub: PublishServiceStub, redis_client: redis.Redis) -> None:
    call = stub.PublishStream(
        requests_of(make_request(org_id=ORG_ID)), metadata=auth(bearer(make_token(aud="x"))), timeout=10
    )

    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for _ in call:
            pass

    assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert raised.value.details() == "token audience (aud) is not the one this service accepts"
    assert stream_keys(redis_client) == []


@pytest.mark.parametrize("service", ["", "conduit.v1alpha.PublishService"])
async def test_health_check_serving(grpc_channel: grpc.aio.Channel, service: str) -> None:
    health = health_pb2_grpc.HealthStub(grpc_channel)

    response = await health.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)

    assert response.status == health_pb2.HealthCheckResponse.SERVING


async def test_reflection_lists_services(grpc_channel: grpc.aio.Channel) -> None:
    reflection = reflection_pb2_grpc.ServerReflectionStub(grpc_channel)
    requests = [
        reflection_pb2.ServerReflectionRequest(list_services=""),
        reflection_pb2.ServerReflectionRequest(file_containing_symbol="conduit.v1alpha.PublishService"),
    ]

    responses = [response async for response in reflection.ServerReflectionInfo(iter(requests), timeout=10)]

    services = {service.name for service in responses[0].list_services_response.service}
    assert services >= {
        "conduit.v1alpha.PublishService",
        "grpc.health.v1.Health",
        "grpc.reflection.v1alpha.ServerReflection",
    }
    files = [
        descriptor_pb2.FileDescriptorProto.FromString(encoded)
        for encoded in responses[1].file_descriptor_response.file_descriptor_proto
    ]
    assert "conduit/v1alpha/publish.proto" in {file.name for file in files}
