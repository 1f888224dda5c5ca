"""An unexpected exception in a publish: INTERNAL or a generic 500, logged with the ids."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import grpc
import httpx
import pytest
import redis

from conduit.v1alpha.publish_pb2 import PublishRequest
from conduit.v1alpha.publish_pb2_grpc import PublishServiceStub
from publish_grpc import publisher
from publish_grpc.grpc_service import INTERNAL_ERROR_MESSAGE
from publish_grpc.validation import ValidatedPublish
from tests.publish_grpc.conftest import ORG_ID, bearer, make_request, stream_keys


@pytest.fixture
def failing_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the check after decoding raise an exception that no code path expects."""

    def check_request(request: PublishRequest, data: bytes, **_: object) -> ValidatedPublish:
        raise OverflowError("secret detail of the failure")

    monkeypatch.setattr(publisher, "check_request", check_request)


def failure_records(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [record for record in caplog.records if record.getMessage() == "publish failed"]


async def test_internal_error_unary_returns_internal(
    failing_check: None, stub: PublishServiceStub, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    request = make_request(org_id=ORG_ID)

    with caplog.at_level(logging.ERROR, logger="publish_grpc"), pytest.raises(grpc.aio.AioRpcError) as caught:
        await stub.Publish(request, metadata=(("authorization", bearer()),), timeout=10)

    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert caught.value.details() == INTERNAL_ERROR_MESSAGE
    [record] = failure_records(caplog)
    assert record.levelno == logging.ERROR
    assert record.exc_info is not None and isinstance(record.exc_info[1], OverflowError)
    assert (record.org_id, record.channel_id, record.message_id) == (  # type: ignore[attr-defined]
        ORG_ID,
        request.channel_id,
        request.message_id,
    )
    assert stream_keys(redis_client) == []


async def test_internal_error_stream_returns_internal(
    failing_check: None, stub: PublishServiceStub, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    request = make_request(org_id=ORG_ID)

    async def requests() -> AsyncIterator[PublishRequest]:
        yield request

    call = stub.PublishStream(requests(), metadata=(("authorization", bearer()),), timeout=10)
    with caplog.at_level(logging.ERROR, logger="publish_grpc"), pytest.raises(grpc.aio.AioRpcError) as caught:
        async for _ in call:
            pass

    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert caught.value.details() == INTERNAL_ERROR_MESSAGE
    [record] = failure_records(caplog)
    assert record.channel_id == request.channel_id  # type: ignore[attr-defined]
    assert stream_keys(redis_client) == []


async def test_internal_error_http_returns_generic_500(
    failing_check: None, http: httpx.AsyncClient, redis_client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    request = make_request()

    with caplog.at_level(logging.ERROR, logger="publish_grpc"):
        response = await http.post(
            f"/publish/{ORG_ID}/{request.channel_id}",
            content=request.SerializeToString(),
            headers={"authorization": bearer()},
        )

    assert response.status_code == 500
    assert response.text == '{"status_code":500,"detail":"Internal Server Error"}'
    assert response.headers["content-type"] == "text/plain; charset=utf-8"
    [record] = failure_records(caplog)
    assert record.message_id == request.message_id  # type: ignore[attr-defined]
    assert stream_keys(redis_client) == []
