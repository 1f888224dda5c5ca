"""End-to-end tests of ``GET /events/{org_id}`` against a running gateway, on both brokers."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import httpx
import jwt
from prometheus_client import REGISTRY

from broker.base import Broker
from conduit.v1alpha import publish_pb2
from gateway_http.server import GatewayServer
from tests.gateway_http.helpers import AUDIENCE, ISSUER, ORG_ID, FrameReader, GatewayFactory, publish, wait_until

RETRY = b"retry: 500\n\n"


def events_params(token: str, channel_id: str, **extra: str) -> dict[str, str]:
    return {"token": token, "channel_id": channel_id, **extra}


def parse_frame(frame: bytes) -> dict[str, str]:
    """Return the fields of one SSE frame, e.g. ``{"event": "stream", "id": ..., "data": ...}``."""
    fields = {}
    for line in frame.decode().rstrip("\n").split("\n"):
        name, _, value = line.partition(": ")
        fields[name] = value
    return fields


async def test_events_first_frames_exact_bytes(
    client: httpx.AsyncClient, broker: Broker, channel_id: str, mint: Callable[..., str]
) -> None:
    message_id = "2b5a3c1e-8f0d-4c7e-9a6b-1d2e3f4a5b6c"
    entry_id = await publish(broker, channel_id, sequence=2, payload={"value": "hello,"}, message_id=message_id)

    async with client.stream("GET", f"/events/{ORG_ID}", params=events_params(mint(channel_id), channel_id)) as response:
        reader = FrameReader(response)
        first = await reader.next_frame()
        second = await reader.next_frame()

    assert response.status_code == 200
    assert first == RETRY
    expected_data = (
        f'{{"event_type":"stream","message_id":"{message_id}","channel_id":"{channel_id}",'
        f'"sequence":2,"phase":"PHASE_DELTA","payload":{{"value":"hello,"}}}}'
    )
    assert second == f"event: stream\nid: {entry_id}\ndata: {expected_data}\n\n".encode()


async def test_events_response_headers(client: httpx.AsyncClient, channel_id: str, mint: Callable[..., str]) -> None:
    async with client.stream("GET", f"/events/{ORG_ID}", params=events_params(mint(channel_id), channel_id)) as response:
        await FrameReader(response).next_frame()

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert response.headers["cache-control"] == "no-cache"
    assert response.headers["x-accel-buffering"] == "no"


async def test_events_history_then_live_then_close_after_end(
    client: httpx.AsyncClient, broker: Broker, channel_id: str, mint: Callable[..., str]
) -> None:
    history = [
        await publish(broker, channel_id, sequence=0, phase=publish_pb2.PHASE_START),
        await publish(broker, channel_id, sequence=1, payload={"value": "a"}),
    ]

    async with client.stream("GET", f"/events/{ORG_ID}", params=events_params(mint(channel_id), channel_id)) as response:
        reader = FrameReader(response)
        assert await reader.next_frame() == RETRY
        received = [parse_frame(await reader.next_frame()) for _ in history]

        live = [
            await publish(broker, channel_id, sequence=2, payload={"value": "b"}),
            await publish(broker, channel_id, sequence=3, phase=publish_pb2.PHASE_END),
        ]
        received += [parse_frame(await reader.next_frame()) for _ in live]
        rest = await reader.rest()

    assert [frame["id"] for frame in received] == history + live
    assert [json.loads(frame["data"])["sequence"] for frame in received] == [0, 1, 2, 3]
    assert [json.loads(frame["data"])["phase"] for frame in received] == [
        "PHASE_START",
        "PHASE_DELTA",
        "PHASE_DELTA",
        "PHASE_END",
    ]
    assert rest == b""


async def test_events_after_end_sends_all_then_closes(
    client: httpx.AsyncClient, broker: Broker, channel_id: str, mint: Callable[..., str]
) -> None:
    ids = [
        await publish(broker, channel_id, sequence=0, phase=publish_pb2.PHASE_START),
        await publish(broker, channel_id, sequence=1),
        await publish(broker, channel_id, sequence=2, phase=publish_pb2.PHASE_END),
    ]

    async with client.stream("GET", f"/events/{ORG_ID}", params=events_params(mint(channel_id), channel_id)) as response:
        body = await FrameReader(response).rest()

    frames = body.split(b"\n\n")
    assert frames[0] == b"retry: 500"
    assert [parse_frame(frame)["id"] for frame in frames[1:-1]] == ids
    assert frames[-1] == b""


async def test_events_resume_after_last_event_id_header(
    client: httpx.AsyncClient, broker: Broker, channel_id: str, mint: Callable[..., str]
) -> None:
    ids = [await publish(broker, channel_id, sequence=sequence) for sequence in range(3)]
    await publish(broker, channel_id, sequence=3, phase=publish_pb2.PHASE_END)

    params = events_params(mint(channel_id), channel_id)
    async with client.stream("GET", f"/events/{ORG_ID}", params=params, headers={"Last-Event-ID": ids[0]}) as response:
        body = await FrameReader(response).rest()

    sequences = [json.loads(parse_frame(frame)["data"])["sequence"] for frame in body.split(b"\n\n")[1:-1]]
    assert sequences == [1, 2, 3]


async def test_events_resume_after_last_event_id_query(
    client: httpx.AsyncClient, broker: Broker, channel_id: str, mint: Callable[..., str]
) -> None:
    ids = [await publish(broker, channel_id, sequence=sequence) for sequence in range(3)]
    await publish(broker, channel_id, sequence=3, phase=publish_pb2.PHASE_END)

    params = events_params(mint(channel_id), channel_id, last_event_id=ids[1])
    async with client.stream("GET", f"/events/{ORG_ID}", params=params) as response:
        body = await FrameReader(response).rest()

    sequences = [json.loads(parse_frame(frame)["data"])["sequence"] for frame in body.split(b"\n\n")[1:-1]]
    assert sequences == [2, 3]


async def test_events_last_event_id_header_wins_over_query(
    client: httpx.AsyncClient, broker: Broker, channel_id: str, mint: Callable[..., str]
) -> None:
    ids = [await publish(broker, channel_id, sequence=sequence) for sequence in range(3)]
    await publish(broker, channel_id, sequence=3, phase=publish_pb2.PHASE_END)

    params = events_params(mint(channel_id), channel_id, last_event_id=ids[0])
    async with client.stream("GET", f"/events/{ORG_ID}", params=params, headers={"Last-Event-ID": ids[2]}) as response:
        body = await FrameReader(response).rest()

    sequences = [json.loads(parse_frame(frame)["data"])["sequence"] for frame in body.split(b"\n\n")[1:-1]]
    assert sequences == [3]


async def test_events_uppercase_channel_id_is_normalised(
    client: httpx.AsyncClient, broker: Broker, channel_id: str, mint: Callable[..., str]
) -> None:
    await publish(broker, channel_id, sequence=0, phase=publish_pb2.PHASE_END)

    params = events_params(mint(channel_id.upper()), channel_id.upper())
    async with client.stream("GET", f"/events/{ORG_ID}", params=params) as response:
        body = await FrameReader(response).rest()

    assert response.status_code == 200
    assert json.loads(parse_frame(body.split(b"\n\n")[1])["data"])["channel_id"] == channel_id


async def test_events_keepalive_when_idle(
    start_gateway: GatewayFactory, channel_id: str, mint: Callable[..., str]
) -> None:
    server = await start_gateway(keepalive_interval_s=0.2)

    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{server.port}", timeout=10) as http:
        params = events_params(mint(channel_id), channel_id)
        async with http.stream("GET", f"/events/{ORG_ID}", params=params) as response:
            reader = FrameReader(response)
            assert await reader.next_frame() == RETRY
            first_idle = await reader.next_frame()
            second_idle = await reader.next_frame()

    assert first_idle == b": keep-alive\n\n"
    assert second_idle == b": keep-alive\n\n"


async def test_events_skips_undecodable_entry(
    client: httpx.AsyncClient,
    broker: Broker,
    stream: str,
    channel_id: str,
    mint: Callable[..., str],
) -> None:
    skipped_before = REGISTRY.get_sample_value("conduit_gateway_skipped_entries_total") or 0
    await broker.append(stream, b"\xff\xff not a protobuf", end=False)
    end_id = await publish(broker, channel_id, sequence=1, phase=publish_pb2.PHASE_END)

    async with client.stream("GET", f"/events/{ORG_ID}", params=events_params(mint(channel_id), channel_id)) as response:
        body = await FrameReader(response).rest()

    frames = body.split(b"\n\n")
    assert [parse_frame(frame)["id"] for frame in frames[1:-1]] == [end_id]
    assert REGISTRY.get_sample_value("conduit_gateway_skipped_entries_total") == skipped_before + 1


async def test_events_token_expiry_keeps_open_stream(
    client: httpx.AsyncClient, broker: Broker, channel_id: str, rsa_keys: tuple[str, str]
) -> None:
    # Valid now thanks to the clock-skew leeway, expired in absolute terms.
    now = int(time.time())
    claims = {"iss": ISSUER, "aud": AUDIENCE, "exp": now - 1, "org_id": ORG_ID, "channel_id": channel_id}
    token = jwt.encode(claims, rsa_keys[0], algorithm="RS256")

    async with client.stream("GET", f"/events/{ORG_ID}", params=events_params(token, channel_id)) as response:
        reader = FrameReader(response)
        assert await reader.next_frame() == RETRY
        entry_id = await publish(broker, channel_id, sequence=1)
        frame = parse_frame(await reader.next_frame())

    assert response.status_code == 200
    assert frame["id"] == entry_id


async def test_events_client_disconnect_releases_stream(
    gateway: GatewayServer, client: httpx.AsyncClient, channel_id: str, mint: Callable[..., str]
) -> None:
    async with client.stream("GET", f"/events/{ORG_ID}", params=events_params(mint(channel_id), channel_id)) as response:
        assert await FrameReader(response).next_frame() == RETRY
        assert gateway.open_stream_count == 1

    await wait_until(lambda: gateway.open_stream_count == 0)

    assert gateway.open_stream_count == 0


async def test_events_cors_allows_any_origin(client: httpx.AsyncClient, channel_id: str, mint: Callable[..., str]) -> None:
    params = events_params(mint(channel_id), channel_id)
    headers = {"Origin": "http://example.test:3000"}
    async with client.stream("GET", f"/events/{ORG_ID}", params=params, headers=headers) as response:
        await FrameReader(response).next_frame()

    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] == "*"


async def test_events_cors_preflight_allows_last_event_id(client: httpx.AsyncClient) -> None:
    headers = {
        "Origin": "http://example.test:3000",
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "last-event-id",
    }
    response = await client.options(f"/events/{ORG_ID}", headers=headers)

    assert response.status_code in (200, 204)
    assert response.headers["access-control-allow-origin"] == "*"
    assert "last-event-id" in response.headers["access-control-allow-headers"].lower()
