"""Fixtures for the publish service: a running PublishServer on port 0 and clients for both front doors."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace

import grpc
import httpx
import jwt
import pytest
import redis

from broker import Broker, create_broker
from conduit.settings import BrokerSettings, JwtSettings, Settings
from conduit.v1alpha.publish_pb2 import Phase, PublishRequest
from conduit.v1alpha.publish_pb2_grpc import PublishServiceStub
from publish_grpc import PublishServer, observe

SECRET = "test-publisher-secret-of-at-least-32-bytes"
ISSUER = "conduit-tests"
AUDIENCE = "conduit-publish"
ORG_ID = 42
MAX_MESSAGE_BYTES = 1024
RATE_LIMIT = 5
# The window starts at a channel's first publish; a long one keeps the
# rate-limit tests independent of how fast they run.
RATE_WINDOW_S = 60


def make_token(*, secret: str = SECRET, algorithm: str = "HS256", **claims: object) -> str:
    """Return a publisher token; ``claims`` override the defaults, and a value of None drops that claim."""
    now = int(time.time())
    payload: dict[str, object] = {"iss": ISSUER, "aud": AUDIENCE, "iat": now, "exp": now + 600}
    payload.update(claims)
    payload = {key: value for key, value in payload.items() if value is not None}
    return jwt.encode(payload, secret, algorithm=algorithm)


def bearer(token: str | None = None) -> str:
    return f"Bearer {token if token is not None else make_token()}"


def make_request(**fields: object) -> PublishRequest:
    """Return a valid PHASE_DELTA request; ``fields`` override its fields, ``payload`` takes a dict."""
    payload = fields.pop("payload", {"text": "hello"})
    request = PublishRequest(
        channel_id=str(uuid.uuid4()),
        message_id=str(uuid.uuid4()),
        phase=Phase.PHASE_DELTA,
        sequence=1,
    )
    for name, value in fields.items():
        setattr(request, name, value)
    request.payload.update(payload)  # type: ignore[arg-type]
    request.client_timestamp.FromSeconds(1_733_350_000)
    return request


def request_of_size(size_bytes: int, **fields: object) -> PublishRequest:
    """Return a valid request whose encoding is exactly ``size_bytes`` long."""
    request = make_request(**fields)
    # Each step adds one byte of text, and now and then a length prefix grows by a byte too.
    for padding in range(size_bytes):
        request.payload["text"] = "x" * padding
        if request.ByteSize() == size_bytes:
            return request
        if request.ByteSize() > size_bytes:
            break
    raise AssertionError(f"cannot build a request of {size_bytes} bytes")


def stream_keys(redis_client: redis.Redis) -> list[bytes]:
    return list(redis_client.scan_iter(match="stream:*"))


def make_settings(redis_url: str | None, **broker_fields: object) -> Settings:
    return Settings(
        host="127.0.0.1",
        publish_port=0,
        publish_grpc_port=0,
        max_message_bytes=MAX_MESSAGE_BYTES,
        broker=replace(BrokerSettings(redis_url=redis_url, rate_limit=RATE_LIMIT, rate_window_s=RATE_WINDOW_S), **broker_fields),
        publish_jwt=JwtSettings(key=SECRET, issuer=ISSUER, audience=AUDIENCE),
    )


@pytest.fixture(autouse=True)
def fresh_log_limiters(monkeypatch: pytest.MonkeyPatch) -> None:
    """Give each test its own rejection-log budget, so earlier tests cannot silence its lines."""
    limiters = {level: observe._RejectionLogLimiter() for level in (logging.INFO, logging.WARNING)}
    monkeypatch.setattr(observe, "_limiters", limiters)


@pytest.fixture
async def broker(redis_url: str) -> AsyncIterator[Broker]:
    """A RedisBroker on the session's Redis."""
    broker = create_broker(make_settings(redis_url).broker)
    yield broker
    await broker.close()


@pytest.fixture
def redis_client(redis_url: str, redis_process) -> Iterator[redis.Redis]:
    """A synchronous client on the same Redis, for XLEN and XRANGE checks."""
    client = redis_process.client()
    yield client
    client.close()


@pytest.fixture
async def server(redis_url: str, broker: Broker) -> AsyncIterator[PublishServer]:
    """A started PublishServer on the session's Redis, both front doors on port 0."""
    server = PublishServer(make_settings(redis_url), broker)
    await server.start()
    yield server
    await server.stop(grace_s=1)


@pytest.fixture
async def http(server: PublishServer) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.http_port}", timeout=10) as client:
        yield client


@pytest.fixture
async def grpc_channel(server: PublishServer) -> AsyncIterator[grpc.aio.Channel]:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{server.grpc_port}") as channel:
        yield channel


@pytest.fixture
def stub(grpc_channel: grpc.aio.Channel) -> PublishServiceStub:
    return PublishServiceStub(grpc_channel)
