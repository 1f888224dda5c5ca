"""Acceptance test of the whole service: publish, broker and gateway together, then ``conduit dev``.

The hello-world stream (START, DELTA "hello,", DELTA " world!", END) goes in over
the HTTP shim or gRPC PublishStream and must reach three subscribers, one that
connected before, one in the middle and one after END, byte for byte in the
event format that browsers parse.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import httpx
import pytest

from broker import create_broker
from broker.base import Broker
from conduit.sdk import build_request
from conduit.settings import BrokerSettings
from conduit.tokens import generate_rsa_key_pair
from conduit.v1alpha import publish_pb2, publish_pb2_grpc
from tests.publishing import publish_http
from tests.services import Credentials, LocalService, local_settings

ORG_ID = 123
_SECRET = "end-to-end-publish-secret-0123456789abcdef"
_ISSUER = "backend"
_TIMEOUT_S = 15
_DEV_START_TIMEOUT_S = 30
_DEV_STOP_TIMEOUT_S = 30

HELLO_WORLD: list[tuple[int, dict[str, Any] | None]] = [
    (publish_pb2.PHASE_START, None),
    (publish_pb2.PHASE_DELTA, {"value": "hello,"}),
    (publish_pb2.PHASE_DELTA, {"value": " world!"}),
    (publish_pb2.PHASE_END, None),
]


@pytest.fixture(scope="module")
def rsa_keys() -> tuple[str, str]:
    return generate_rsa_key_pair()


@pytest.fixture(params=["memory", "redis"])
async def broker(request: pytest.FixtureRequest) -> AsyncIterator[Broker]:
    redis_url = None if request.param == "memory" else request.getfixturevalue("redis_url")
    instance = create_broker(BrokerSettings(redis_url=redis_url))
    yield instance
    await instance.close()


@pytest.fixture
async def service(broker: Broker, rsa_keys: tuple[str, str]) -> AsyncIterator[LocalService]:
    credentials = Credentials(ORG_ID, _SECRET, _ISSUER, private_pem=rsa_keys[0], public_pem=rsa_keys[1])
    running = LocalService(local_settings(credentials), credentials)
    await running.start(broker)
    yield running
    await running.stop()


def hello_world_requests(channel_id: str) -> list[publish_pb2.PublishRequest]:
    return [
        build_request(org_id=ORG_ID, channel_id=channel_id, phase=phase, sequence=sequence, payload=payload)
        for sequence, (phase, payload) in enumerate(HELLO_WORLD, start=1)
    ]


def expected_frame(entry_id: str, request: publish_pb2.PublishRequest, payload: dict[str, Any] | None) -> str:
    """Return the exact ``event: stream`` frame, without its blank line, for one published message."""
    data = {
        "event_type": "stream",
        "message_id": request.message_id,
        "channel_id": request.channel_id,
        "sequence": request.sequence,
        "phase": publish_pb2.Phase.Name(request.phase),
        "payload": payload or {},
    }
    return f"event: stream\nid: {entry_id}\ndata: {json.dumps(data, separators=(',', ':'))}"


class Subscriber:
    """One SSE connection read to its end in a task; ``frames`` are the events without keep-alive comments."""

    def __init__(self, url: str, params: dict[str, str], headers: dict[str, str] | None = None) -> None:
        self.connected = asyncio.Event()
        self.status_code: int | None = None
        self.raw = ""
        self._task = asyncio.create_task(self._read(url, params, headers or {}))

    async def _read(self, url: str, params: dict[str, str], headers: dict[str, str]) -> None:
        async with httpx.AsyncClient(timeout=_TIMEOUT_S) as client:
            async with client.stream("GET", url, params=params, headers=headers) as response:
                self.status_code = response.status_code
                self.connected.set()
                async for chunk in response.aiter_text():
                    self.raw += chunk

    async def closed(self) -> list[str]:
        """Wait until the gateway closes the response; return its frames."""
        await asyncio.wait_for(self._task, _TIMEOUT_S)
        frames = [frame for frame in self.raw.split("\n\n") if frame]
        return [frame for frame in frames if not frame.startswith(":")]


async def subscribe(service: LocalService, channel_id: str, **headers: str) -> Subscriber:
    params = {"token": service.subscriber_token(channel_id), "channel_id": channel_id}
    subscriber = Subscriber(service.events_url, params, {key.replace("_", "-"): value for key, value in headers.items()})
    await asyncio.wait_for(subscriber.connected.wait(), _TIMEOUT_S)
    assert subscriber.status_code == 200
    return subscriber


Publisher = Callable[[LocalService, list[publish_pb2.PublishRequest], Callable[[], Awaitable[None]]], Awaitable[list[str]]]


async def publish_over_http(
    service: LocalService, requests: list[publish_pb2.PublishRequest], after_first_delta: Callable[[], Awaitable[None]]
) -> list[str]:
    stream_ids = []
    async with httpx.AsyncClient() as client:
        for request in requests:
            stream_ids.append(await publish_http(client, service.publish_url, request, service.publisher_token()))
            if request.phase == publish_pb2.PHASE_DELTA and len(stream_ids) == 2:
                await after_first_delta()
    return stream_ids


async def publish_over_grpc_stream(
    service: LocalService, requests: list[publish_pb2.PublishRequest], after_first_delta: Callable[[], Awaitable[None]]
) -> list[str]:
    stream_ids = []
    async with grpc.aio.insecure_channel(service.grpc_target) as channel:
        stub = publish_pb2_grpc.PublishServiceStub(channel)
        call = stub.PublishStream(
            metadata=(("authorization", f"Bearer {service.publisher_token()}"),), timeout=_TIMEOUT_S
        )
        for request in requests:
            await call.write(request)
            response = await call.read()
            stream_ids.append(response.stream_id)
            if request.phase == publish_pb2.PHASE_DELTA and len(stream_ids) == 2:
                await after_first_delta()
        await call.done_writing()
        assert await call.read() == grpc.aio.EOF
        assert await call.code() == grpc.StatusCode.OK
    return stream_ids


@pytest.mark.parametrize("publish", [publish_over_http, publish_over_grpc_stream], ids=["http", "grpc-stream"])
async def test_hello_world_reaches_every_subscriber(service: LocalService, publish: Publisher) -> None:
    channel_id = str(uuid.uuid4())
    requests = hello_world_requests(channel_id)
    early = await subscribe(service, channel_id)
    middle: list[Subscriber] = []

    async def connect_middle_subscriber() -> None:
        middle.append(await subscribe(service, channel_id))

    stream_ids = await publish(service, requests, connect_middle_subscriber)
    late = await subscribe(service, channel_id)

    expected = [
        "retry: 500",
        *(expected_frame(entry_id, request, payload)
          for entry_id, request, (_, payload) in zip(stream_ids, requests, HELLO_WORLD, strict=True)),
    ]
    assert len(set(stream_ids)) == 4
    assert await early.closed() == expected
    assert await middle[0].closed() == expected
    assert await late.closed() == expected


@pytest.mark.parametrize("how", ["header", "query"])
async def test_resume_after_last_event_id(service: LocalService, how: str) -> None:
    channel_id = str(uuid.uuid4())
    requests = hello_world_requests(channel_id)

    async def nothing() -> None:
        return None

    stream_ids = await publish_over_http(service, requests, nothing)
    params = {"token": service.subscriber_token(channel_id), "channel_id": channel_id}
    headers = {}
    if how == "header":
        headers["last-event-id"] = stream_ids[1]
    else:
        params["last_event_id"] = stream_ids[1]
    resumed = Subscriber(service.events_url, params, headers)

    frames = await resumed.closed()

    assert resumed.status_code == 200
    assert frames == [
        "retry: 500",
        expected_frame(stream_ids[2], requests[2], HELLO_WORLD[2][1]),
        expected_frame(stream_ids[3], requests[3], HELLO_WORLD[3][1]),
    ]


# `conduit dev` as a user starts it: a child process, parsed from its printout, stopped by SIGTERM.

_BANNER_FIELDS = {
    "publish_url": re.compile(r"^  publish HTTP: (http://\S+)/publish/\{org_id\}/\{channel_id\}$", re.M),
    "grpc_target": re.compile(r"^  publish gRPC: (\S+)$", re.M),
    "events_url": re.compile(r"^  gateway: (http://\S+/events)/\{org_id\}$", re.M),
    "org_id": re.compile(r"^  org_id: (\d+)$", re.M),
    "channel_id": re.compile(r"^  channel_id: (\S+)$", re.M),
    "publisher_token": re.compile(r"^  publisher token: (\S+)$", re.M),
    "subscriber_token": re.compile(r"^  subscriber token: (\S+)$", re.M),
}


async def read_banner(process: asyncio.subprocess.Process) -> dict[str, str]:
    """Read the child's stdout up to the curl line that ends the start-up text; return its fields."""
    assert process.stdout is not None
    text = ""
    async with asyncio.timeout(_DEV_START_TIMEOUT_S):
        while "curl -N" not in text:
            line = await process.stdout.readline()
            if not line:
                raise AssertionError(f"conduit dev exited before printing its start-up text:\n{text}")
            text += line.decode()
    fields = {}
    for name, pattern in _BANNER_FIELDS.items():
        match = pattern.search(text)
        assert match, f"{name} missing from:\n{text}"
        fields[name] = match.group(1)
    return fields


@pytest.fixture(params=["embedded", "redis"])
def dev_environment(request: pytest.FixtureRequest) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if not name.startswith(("REDIS_", "PUBLISH_", "GATEWAY_"))}
    env.pop("CONDUIT_HOST", None)
    if request.param == "redis":
        env["REDIS_URL"] = request.getfixturevalue("redis_url")
    return env


async def test_conduit_dev_serves_hello_world(tmp_path: Path, dev_environment: dict[str, str]) -> None:
    stderr_path = tmp_path / "conduit-dev.log"
    with stderr_path.open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "conduit.cli", "dev",
            "--state-dir", str(tmp_path / "state"),
            "--publish-port", "0", "--publish-grpc-port", "0", "--gateway-port", "0",
            stdout=asyncio.subprocess.PIPE, stderr=stderr, env=dev_environment,
        )
        try:
            banner = await read_banner(process)
            stream_ids, frames = await _publish_and_subscribe(banner)

            process.send_signal(signal.SIGTERM)
            status = await asyncio.wait_for(process.wait(), _DEV_STOP_TIMEOUT_S)
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()

    log = stderr_path.read_text()
    assert banner["org_id"] == "1"
    assert len(stream_ids) == 4
    assert frames[0] == "retry: 500"
    assert [re.search(r"^id: (.+)$", frame, re.M).group(1) for frame in frames[1:]] == stream_ids  # type: ignore[union-attr]
    assert [json.loads(frame.split("data: ", 1)[1])["payload"] for frame in frames[1:]] == [
        {}, {"value": "hello,"}, {"value": " world!"}, {}
    ]
    assert status == 0, log
    assert "dev mode stopped" in log
    assert banner["publisher_token"] not in log
    assert banner["subscriber_token"] not in log


async def _publish_and_subscribe(banner: dict[str, str]) -> tuple[list[str], list[str]]:
    org_id = int(banner["org_id"])
    channel_id = banner["channel_id"]
    params = {"token": banner["subscriber_token"], "channel_id": channel_id}
    subscriber = Subscriber(f"{banner['events_url']}/{org_id}", params)
    await asyncio.wait_for(subscriber.connected.wait(), _TIMEOUT_S)
    assert subscriber.status_code == 200

    stream_ids = []
    async with httpx.AsyncClient() as client:
        for sequence, (phase, payload) in enumerate(HELLO_WORLD, start=1):
            request = build_request(org_id=org_id, channel_id=channel_id, phase=phase, sequence=sequence, payload=payload)
            stream_ids.append(await publish_http(client, banner["publish_url"], request, banner["publisher_token"]))
    return stream_ids, await subscriber.closed()
