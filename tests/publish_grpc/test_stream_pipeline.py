"""PublishStream read-ahead: answers in request order, per-stream append order, first error ends the call."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
import redis

from broker.keys import stream_key
from conduit.errors import InvalidArgument, RateLimited
from conduit.v1alpha.publish_pb2_grpc import PublishServiceStub
from publish_grpc.stream import BeforeAppend, publish_pipelined
from publish_grpc.validation import ValidatedPublish
from tests.publish_grpc.conftest import ORG_ID, RATE_LIMIT, bearer, make_request

_WAIT_S = 5


async def _requests(*items: bytes) -> AsyncIterator[bytes]:
    for item in items:
        yield item


def _validated(stream: str) -> ValidatedPublish:
    return ValidatedPublish(
        stream_key=stream, data=b"", end=False, org_id=1, channel_id=stream, message_id=str(uuid.uuid4())
    )


class _FakeAppends:
    """A publish function whose appends finish when the test releases them; it records the order of appends."""

    def __init__(self) -> None:
        self.started: list[bytes] = []
        self.release: dict[bytes, asyncio.Event] = {}
        self.fail: dict[bytes, Exception] = {}

    async def __call__(self, data: bytes, before_append: BeforeAppend) -> str:
        stream = data.split(b":")[0].decode()
        if data in self.fail and stream == "invalid":
            raise self.fail[data]
        await before_append(_validated(stream))
        self.started.append(data)
        await asyncio.wait_for(self.release.setdefault(data, asyncio.Event()).wait(), _WAIT_S)
        if data in self.fail:
            raise self.fail[data]
        return data.decode()

    def finish(self, data: bytes) -> None:
        self.release.setdefault(data, asyncio.Event()).set()


async def _until(condition: object) -> None:
    async with asyncio.timeout(_WAIT_S):
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0.001)


async def test_stream_pipeline_answers_in_request_order() -> None:
    appends = _FakeAppends()
    answers = publish_pipelined(_requests(b"a:1", b"b:1"), appends)
    first = asyncio.ensure_future(anext(answers))

    await _until(lambda: appends.started == [b"a:1", b"b:1"])
    appends.finish(b"b:1")
    await asyncio.sleep(0.01)
    first_done_early = first.done()
    appends.finish(b"a:1")

    assert first_done_early is False
    assert await first == "a:1"
    assert await anext(answers) == "b:1"
    with pytest.raises(StopAsyncIteration):
        await anext(answers)


async def test_stream_pipeline_one_stream_appends_in_order() -> None:
    appends = _FakeAppends()
    answers = publish_pipelined(_requests(b"a:1", b"a:2", b"b:1"), appends)
    first = asyncio.ensure_future(anext(answers))

    await _until(lambda: appends.started == [b"a:1", b"b:1"])
    await asyncio.sleep(0.01)
    second_waited = appends.started == [b"a:1", b"b:1"]
    appends.finish(b"a:1")
    await _until(lambda: b"a:2" in appends.started)
    appends.finish(b"a:2")
    appends.finish(b"b:1")

    assert second_waited
    assert [await first, await anext(answers), await anext(answers)] == ["a:1", "a:2", "b:1"]


async def test_stream_pipeline_first_error_stops_later_appends() -> None:
    appends = _FakeAppends()
    appends.fail[b"a:1"] = RateLimited("rate limit", retry_after_s=1)
    answers = publish_pipelined(_requests(b"a:1", b"a:2"), appends)
    first = asyncio.ensure_future(anext(answers))

    await _until(lambda: appends.started == [b"a:1"])
    appends.finish(b"a:1")

    with pytest.raises(RateLimited):
        await first
    assert appends.started == [b"a:1"]


async def test_stream_pipeline_invalid_message_ends_call() -> None:
    appends = _FakeAppends()
    appends.fail[b"invalid:1"] = InvalidArgument("message_id must be a UUID")
    answers = publish_pipelined(_requests(b"a:1", b"invalid:1", b"a:2"), appends)
    first = asyncio.ensure_future(anext(answers))

    await _until(lambda: appends.started == [b"a:1"])
    appends.finish(b"a:1")
    assert await first == "a:1"
    with pytest.raises(InvalidArgument) as raised:
        await anext(answers)

    assert raised.value.message == "message_id must be a UUID"
    assert appends.started == [b"a:1"]


async def test_stream_pipeline_reads_at_most_window() -> None:
    appends = _FakeAppends()
    reads = 0

    async def counted() -> AsyncIterator[bytes]:
        nonlocal reads
        for index in range(10):
            reads += 1
            yield f"s{index}:1".encode()

    answers = publish_pipelined(counted(), appends, window=3)
    first = asyncio.ensure_future(anext(answers))
    await _until(lambda: len(appends.started) == 3)
    await asyncio.sleep(0.01)

    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    await answers.aclose()

    assert reads == 3


async def test_stream_pipeline_close_cancels_in_flight() -> None:
    appends = _FakeAppends()
    answers = publish_pipelined(_requests(b"a:1", b"b:1"), appends)
    first = asyncio.ensure_future(anext(answers))
    await _until(lambda: len(appends.started) == 2)

    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    await answers.aclose()

    assert all(not event.is_set() for event in appends.release.values())


async def test_stream_pipeline_window_zero_rejected() -> None:
    with pytest.raises(ValueError, match="window must be at least 1, got 0"):
        await anext(publish_pipelined(_requests(), _FakeAppends(), window=0))


async def test_publish_stream_interleaved_channels_keep_order(
    stub: PublishServiceStub, redis_client: redis.Redis
) -> None:
    channels = [str(uuid.uuid4()) for _ in range(3)]
    requests = [
        make_request(org_id=ORG_ID, channel_id=channels[index % 3], sequence=index)
        for index in range(3 * RATE_LIMIT)
    ]

    async def stream() -> AsyncIterator[object]:
        for request in requests:
            yield request

    call = stub.PublishStream(stream(), metadata=(("authorization", bearer()),), timeout=10)
    responses = [response.stream_id async for response in call]

    assert await call.code() == grpc.StatusCode.OK
    assert len(responses) == len(requests)
    for offset, channel_id in enumerate(channels):
        entries = redis_client.xrange(stream_key(ORG_ID, channel_id))
        assert [fields[b"data"] for _, fields in entries] == [r.SerializeToString() for r in requests[offset::3]]
        assert [entry_id.decode() for entry_id, _ in entries] == responses[offset::3]
