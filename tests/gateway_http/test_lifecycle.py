"""Drain on shutdown, broker outages, disconnects, health and metrics of a running gateway."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import socket
import uuid
from collections.abc import Callable

import httpx
import pytest
from litestar.testing import AsyncTestClient
from prometheus_client import REGISTRY

from broker.base import Broker
from gateway_http.app import create_app
from gateway_http.drain import Drain
from gateway_http.hub import HubFeed
from gateway_http.server import GatewayServer
from tests.gateway_http.helpers import ORG_ID, FrameReader, GatewayFactory, make_settings, publish, wait_until
from tests.redis_process import RedisProcess

RETRY = b"retry: 500\n\n"


def events_url(server: GatewayServer) -> str:
    return f"http://127.0.0.1:{server.port}/events/{ORG_ID}"


def parse_data(frame: bytes, event: str) -> dict[str, object]:
    """Return the JSON data of a frame that must be exactly ``event: <event>`` plus one data line."""
    lines = frame.decode().split("\n")
    assert lines[0] == f"event: {event}"
    assert lines[1].startswith("data: ")
    assert lines[2:] == ["", ""]
    data: dict[str, object] = json.loads(lines[1].removeprefix("data: "))
    return data


async def test_drain_sends_control_event_and_closes(
    gateway: GatewayServer, client: httpx.AsyncClient, channel_id: str, mint: Callable[..., str]
) -> None:
    params = {"token": mint(channel_id), "channel_id": channel_id}
    async with client.stream("GET", f"/events/{ORG_ID}", params=params) as response:
        reader = FrameReader(response)
        assert await reader.next_frame() == RETRY
        stopping = asyncio.create_task(gateway.stop(grace_s=5))
        control = await reader.next_frame()
        rest = await reader.rest()
    await asyncio.wait_for(stopping, 10)

    data = parse_data(control, "control")
    assert list(data) == ["event_type", "message_id", "control_type"]
    assert data["event_type"] == "control"
    assert data["control_type"] == "server_draining"
    assert uuid.UUID(str(data["message_id"])).version == 4
    assert rest == b""
    assert gateway.open_stream_count == 0


async def test_drain_control_ids_are_fresh(
    gateway: GatewayServer, client: httpx.AsyncClient, channel_id: str, mint: Callable[..., str]
) -> None:
    params = {"token": mint(channel_id), "channel_id": channel_id}
    async with (
        client.stream("GET", f"/events/{ORG_ID}", params=params) as first,
        client.stream("GET", f"/events/{ORG_ID}", params=params) as second,
    ):
        readers = [FrameReader(first), FrameReader(second)]
        for reader in readers:
            assert await reader.next_frame() == RETRY
        stopping = asyncio.create_task(gateway.stop(grace_s=5))
        controls = [parse_data(await reader.next_frame(), "control") for reader in readers]
    await asyncio.wait_for(stopping, 10)

    assert controls[0]["message_id"] != controls[1]["message_id"]


@pytest.mark.parametrize("broker_kind", ["memory"], indirect=True)
async def test_drain_started_stream_gets_control_at_once(
    broker: Broker, rsa_keys: tuple[str, str], channel_id: str, mint: Callable[..., str]
) -> None:
    drain = Drain()
    app = create_app(make_settings(rsa_keys[1], None), broker, HubFeed(broker, max_stream_len=1200), drain=drain)
    drain.start()

    async with AsyncTestClient(app) as test_client:
        ready = await test_client.get("/readyz")
        response = await test_client.get(f"/events/{ORG_ID}", params={"token": mint(channel_id), "channel_id": channel_id})

    assert ready.status_code == 503
    assert ready.json() == {"status": "draining"}
    assert response.status_code == 200
    frames = response.content.split(b"\n\n")
    assert frames[0] == b"retry: 500"
    assert parse_data(frames[1] + b"\n\n", "control")["control_type"] == "server_draining"
    assert frames[2:] == [b""]
    assert drain.open_count == 0


@pytest.mark.parametrize("broker_kind", ["redis"], indirect=True)
async def test_events_error_event_when_redis_stops(
    start_gateway: GatewayFactory,
    redis_process: RedisProcess,
    channel_id: str,
    mint: Callable[..., str],
) -> None:
    server = await start_gateway(broker_retry_budget_s=0.5)
    params = {"token": mint(channel_id), "channel_id": channel_id}

    async with (
        httpx.AsyncClient(timeout=10) as http,
        http.stream("GET", events_url(server), params=params) as response,
    ):
        reader = FrameReader(response)
        assert await reader.next_frame() == RETRY
        await asyncio.to_thread(redis_process.stop)
        frame = await reader.next_frame(timeout_s=15)
        rest = await reader.rest()

    data = parse_data(frame, "error")
    assert list(data) == ["event_type", "message"]
    assert data["event_type"] == "error"
    assert "broker unreachable" in str(data["message"])
    assert rest == b""
    assert server.open_stream_count == 0


@pytest.mark.parametrize("broker_kind", ["redis"], indirect=True)
async def test_events_short_outage_is_retried(
    start_gateway: GatewayFactory,
    broker: Broker,
    redis_process: RedisProcess,
    channel_id: str,
    mint: Callable[..., str],
) -> None:
    server = await start_gateway(broker_retry_budget_s=30)
    params = {"token": mint(channel_id), "channel_id": channel_id}

    async with (
        httpx.AsyncClient(timeout=10) as http,
        http.stream("GET", events_url(server), params=params) as response,
    ):
        reader = FrameReader(response)
        assert await reader.next_frame() == RETRY
        await asyncio.to_thread(redis_process.stop)
        await asyncio.sleep(0.5)
        await asyncio.to_thread(redis_process.start)
        entry_id = await publish(broker, channel_id, sequence=1)
        frame = await reader.next_frame(timeout_s=15)

    assert frame.startswith(f"event: stream\nid: {entry_id}\n".encode())


async def test_events_disconnect_then_new_subscriber_reads(
    gateway: GatewayServer, client: httpx.AsyncClient, broker: Broker, channel_id: str, mint: Callable[..., str]
) -> None:
    params = {"token": mint(channel_id), "channel_id": channel_id}
    async with client.stream("GET", f"/events/{ORG_ID}", params=params) as response:
        assert await FrameReader(response).next_frame() == RETRY
    await wait_until(lambda: gateway.open_stream_count == 0)

    entry_id = await publish(broker, channel_id, sequence=1)
    async with client.stream("GET", f"/events/{ORG_ID}", params=params) as response:
        reader = FrameReader(response)
        assert await reader.next_frame() == RETRY
        frame = await reader.next_frame()

    assert frame.startswith(f"event: stream\nid: {entry_id}\n".encode())


async def test_metrics_count_open_streams_and_deliveries(
    gateway: GatewayServer, client: httpx.AsyncClient, broker: Broker, channel_id: str, mint: Callable[..., str]
) -> None:
    def sample(name: str, labels: dict[str, str] | None = None) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    open_before = sample("conduit_gateway_open_streams")
    sent_before = sample("conduit_gateway_events_sent_total", {"event": "stream"})
    params = {"token": mint(channel_id), "channel_id": channel_id}

    async with client.stream("GET", f"/events/{ORG_ID}", params=params) as response:
        reader = FrameReader(response)
        assert await reader.next_frame() == RETRY
        open_during = sample("conduit_gateway_open_streams")
        await publish(broker, channel_id, sequence=1)
        await reader.next_frame()
        metrics_text = (await client.get("/metrics")).text
    await wait_until(lambda: gateway.open_stream_count == 0)

    assert open_during == open_before + 1
    assert sample("conduit_gateway_open_streams") == open_before
    assert sample("conduit_gateway_events_sent_total", {"event": "stream"}) == sent_before + 1
    assert "conduit_gateway_open_streams" in metrics_text


async def test_healthz_reports_uptime(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")

    assert response.status_code == 200
    assert response.json()["status"] == "ok"
    assert response.json()["uptime_s"] >= 0


async def test_readyz_ready_with_broker(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")

    assert response.status_code == 200
    assert response.json() == {"status": "ready"}


async def test_metrics_prometheus_text(client: httpx.AsyncClient) -> None:
    response = await client.get("/metrics")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    assert "# TYPE conduit_gateway_events_sent_total counter" in response.text


@pytest.mark.parametrize("broker_kind", ["memory"], indirect=True)
async def test_gateway_stop_without_streams_is_quick(gateway: GatewayServer) -> None:
    await asyncio.wait_for(gateway.stop(grace_s=30), 10)

    assert gateway.is_draining
    assert gateway.open_stream_count == 0


@pytest.mark.parametrize("broker_kind", ["memory"], indirect=True)
async def test_gateway_stop_after_failed_start_logs_no_stop(
    broker: Broker, rsa_keys: tuple[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="gateway_http.server")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        settings = dataclasses.replace(make_settings(rsa_keys[1], None), gateway_port=taken.getsockname()[1])
        server = GatewayServer(settings, broker)

        with pytest.raises(OSError, match="gateway: cannot bind 127.0.0.1.*choose another port with GATEWAY_PORT"):
            await server.start()
        await asyncio.wait_for(server.stop(grace_s=1), 10)

    messages = [record.getMessage() for record in caplog.records if record.name == "gateway_http.server"]
    assert "gateway stopped" not in messages
    assert "gateway draining" not in messages
