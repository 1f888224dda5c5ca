"""PublishStream batched read-ahead: responses in request order, per-stream append order, first error ends the call."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator

import grpc
import pytest
import redis

from broker.keys import stream_key
from broker.memory import MemoryBroker
from conduit.errors import InvalidArgument, RateLimited, Unauthenticated
from conduit.settings import BrokerSettings, JwtSettings
from conduit.v1alpha.publish_pb2_grpc import PublishServiceStub
from publish_grpc.auth import TokenVerifier
from publish_grpc.grpc_service import _StreamSteps
from publish_grpc.publisher import Publisher
from publish_grpc.stream import StreamPublisher, publish_batched
from tests.publish_grpc.conftest import (
    AUDIENCE,
    ISSUER,
    MAX_MESSAGE_BYTES,
    ORG_ID,
    RATE_LIMIT,
    SECRET,
    bearer,
    make_request,
    make_token,
)

_WAIT_S = 5


async def _requests(*items: bytes) -> AsyncIterator[bytes]:
    for item in items:
        yield item


class _FakeSteps(StreamPublisher[bytes]):
    """Steps on ``b"<stream>:<n>"`` messages whose appends finish when the test releases their stream.

    It records each append run and the outcome of every message.
    """

    def __init__(self) -> None:
        self.runs: list[list[bytes]] = []
        self.release: dict[str, asyncio.Event] = {}
        self.invalid: dict[bytes, Exception] = {}
        self.limited: dict[bytes, Exception] = {}
        self.outcomes: dict[bytes, str] = {}

    def prepare(self, data: bytes) -> bytes:
        if data in self.invalid:
            self.outcomes[data] = "invalid"
            raise self.invalid[data]
        return data

    def stream_of(self, item: bytes) -> str:
        return item.split(b":")[0].decode()

    async def append(self, stream: str, items: list[bytes]) -> tuple[list[str], Exception | None]:
        self.runs.append(items)
        try:
            await asyncio.wait_for(self.release.setdefault(stream, asyncio.Event()).wait(), _WAIT_S)
        except BaseException:
            self.abandon(items)
            raise
        ids: list[str] = []
        for item in items:
            if item in self.limited:
                self.outcomes[item] = "limited"
                self.abandon(items[len(ids) + 1:])
                return ids, self.limited[item]
            self.outcomes[item] = "accepted"
            ids.append(item.decode())
        return ids, None

    def abandon(self, items: list[bytes]) -> None:
        for item in items:
            self.outcomes[item] = "abandoned"

    def finish(self, stream: str) -> None:
        self.release.setdefault(stream, asyncio.Event()).set()


async def _until(condition: object) -> None:
    async with asyncio.timeout(_WAIT_S):
        while not condition():  # type: ignore[operator]
            await asyncio.sleep(0.001)


async def test_stream_pipeline_answers_in_request_order() -> None:
    steps = _FakeSteps()
    answers = publish_batched(_requests(b"a:1", b"b:1"), steps)
    first = asyncio.ensure_future(anext(answers))

    await _until(lambda: len(steps.runs) >= 1)
    steps.finish("b")
    await asyncio.sleep(0.01)
    first_done_early = first.done()
    steps.finish("a")

    assert first_done_early is False
    assert await first == "a:1"
    assert [stream_id async for stream_id in answers] == ["b:1"]


async def test_stream_pipeline_batches_by_stream() -> None:
    steps = _FakeSteps()
    for stream in "ab":
        steps.finish(stream)

    answers = [stream_id async for stream_id in publish_batched(_requests(b"a:1", b"b:1", b"a:2", b"a:3"), steps)]

    assert answers == ["a:1", "b:1", "a:2", "a:3"]
    appended = [item for run in steps.runs for item in run]
    assert sorted(appended) == [b"a:1", b"a:2", b"a:3", b"b:1"]
    runs_of_a = [item for run in steps.runs for item in run if item.startswith(b"a:")]
    assert runs_of_a == [b"a:1", b"a:2", b"a:3"]
    assert all(len({steps.stream_of(item) for item in run}) == 1 for run in steps.runs)


async def test_stream_pipeline_next_batch_waits() -> None:
    steps = _FakeSteps()
    requests: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=4)

    async def queued() -> AsyncIterator[bytes]:
        while (item := await asyncio.wait_for(requests.get(), _WAIT_S)) is not None:
            yield item

    answers = publish_batched(queued(), steps)
    first = asyncio.ensure_future(anext(answers))
    await requests.put(b"a:1")
    await _until(lambda: steps.runs == [[b"a:1"]])
    await requests.put(b"a:2")
    await requests.put(b"a:3")
    await asyncio.sleep(0.01)
    second_waited = steps.runs == [[b"a:1"]]
    steps.finish("a")
    await requests.put(None)

    assert second_waited
    assert [await first, *[stream_id async for stream_id in answers]] == ["a:1", "a:2", "a:3"]
    assert steps.runs == [[b"a:1"], [b"a:2", b"a:3"]]


async def test_stream_pipeline_first_error_stops_later_appends() -> None:
    steps = _FakeSteps()
    steps.limited[b"a:2"] = RateLimited("rate limit", retry_after_s=1)
    steps.finish("a")
    answers = publish_batched(_requests(b"a:1", b"a:2", b"a:3"), steps, window=3)

    received = []
    with pytest.raises(RateLimited):
        async for stream_id in answers:
            received.append(stream_id)

    assert received == ["a:1"]
    assert steps.outcomes[b"a:2"] == "limited"
    assert steps.outcomes.get(b"a:3") in (None, "abandoned")


async def test_stream_pipeline_error_in_other_stream_ends_call() -> None:
    steps = _FakeSteps()
    steps.limited[b"a:1"] = RateLimited("rate limit", retry_after_s=1)
    answers = publish_batched(_requests(b"a:1", b"b:1"), steps)
    first = asyncio.ensure_future(anext(answers))
    await _until(lambda: len(steps.runs) == 2)
    steps.finish("b")
    steps.finish("a")

    with pytest.raises(RateLimited):
        await first
    assert steps.outcomes == {b"a:1": "limited", b"b:1": "accepted"}


async def test_stream_pipeline_invalid_message_ends_call() -> None:
    steps = _FakeSteps()
    steps.invalid[b"invalid:1"] = InvalidArgument("message_id must be a UUID")
    steps.finish("a")
    answers = publish_batched(_requests(b"a:1", b"invalid:1", b"a:2"), steps)

    received = []
    with pytest.raises(InvalidArgument) as raised:
        async for stream_id in answers:
            received.append(stream_id)

    assert raised.value.message == "message_id must be a UUID"
    assert received == ["a:1"]
    assert steps.runs == [[b"a:1"]]
    assert b"a:2" not in steps.outcomes


async def test_stream_pipeline_reads_at_most_window() -> None:
    steps = _FakeSteps()
    reads = 0

    async def counted() -> AsyncIterator[bytes]:
        nonlocal reads
        for index in range(10):
            reads += 1
            yield f"s:{index}".encode()

    answers = publish_batched(counted(), steps, window=3)
    first = asyncio.ensure_future(anext(answers))
    await _until(lambda: len(steps.runs) == 1)
    await asyncio.sleep(0.01)

    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    await answers.aclose()

    assert reads == 3


async def test_stream_pipeline_close_abandons_in_flight() -> None:
    steps = _FakeSteps()
    answers = publish_batched(_requests(b"a:1", b"b:1"), steps)
    first = asyncio.ensure_future(anext(answers))
    await _until(lambda: len(steps.runs) == 2)

    first.cancel()
    with pytest.raises(asyncio.CancelledError):
        await first
    await answers.aclose()

    assert all(not event.is_set() for event in steps.release.values())
    assert steps.outcomes == {b"a:1": "abandoned", b"b:1": "abandoned"}


async def test_stream_pipeline_window_zero_rejected() -> None:
    with pytest.raises(ValueError, match="window must be at least 1, got 0"):
        await anext(publish_batched(_requests(), _FakeSteps(), window=0))


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


async def test_stream_steps_token_expires_mid_call() -> None:
    now = [time.time()]
    verifier = TokenVerifier(JwtSettings(key=SECRET, issuer=ISSUER, audience=AUDIENCE), clock=lambda: now[0])
    broker = MemoryBroker(BrokerSettings(redis_url=None))
    exp = int(now[0]) + 60
    publisher = Publisher(broker, verifier, max_message_bytes=MAX_MESSAGE_BYTES)
    steps = _StreamSteps(publisher, [bearer(make_token(exp=exp))])
    try:
        steps.prepare(make_request(org_id=ORG_ID).SerializeToString())

        now[0] = exp
        with pytest.raises(Unauthenticated, match="token has expired: mint a new one"):
            steps.prepare(make_request(org_id=ORG_ID).SerializeToString())
    finally:
        await broker.close()
