"""Dev-only gateway routes: the demo page, /dev/start-stream, /dev/demo-stream and their CORS."""

from __future__ import annotations

import asyncio
import json
import uuid

import httpx
import jwt
import pytest

from broker import create_broker
from conduit.dev import DevStack
from conduit.dev_demo import DemoStreams, TooManyDemoStreams
from conduit.dev_keys import DevKeys
from conduit.dev_routes import MAX_DEMO_TEXT_CHARS
from conduit.settings import BrokerSettings

_TIMEOUT_S = 10
_ORIGIN = "http://localhost:5173"


def _claims(keys: DevKeys, token: str) -> dict[str, object]:
    return jwt.decode(
        token, keys.subscriber_public_key, algorithms=["RS256"], audience=keys.gateway_audience, issuer=keys.issuer
    )


async def _events_until_end(client: httpx.AsyncClient, url: str, token: str, channel_id: str) -> list[dict[str, object]]:
    """Read a channel's SSE stream until the gateway closes it, returning each event's data."""
    events: list[dict[str, object]] = []
    params = {"token": token, "channel_id": channel_id}
    async with asyncio.timeout(_TIMEOUT_S), client.stream("GET", url, params=params) as response:
        assert response.status_code == 200
        async for line in response.aiter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line.removeprefix("data: ")))
    return events


async def test_start_stream_fresh_channel(dev_stack: DevStack) -> None:
    async with httpx.AsyncClient(base_url=dev_stack.gateway_url, timeout=_TIMEOUT_S) as client:
        response = await client.post("/dev/start-stream", json={"org_id": 12})

    answer = response.json()["conduit"]
    claims = _claims(dev_stack.keys, answer["token"])
    assert response.status_code == 200
    assert set(answer) == {"token", "channel_id", "url"}
    assert str(uuid.UUID(answer["channel_id"])) == answer["channel_id"]
    assert answer["url"] == f"{dev_stack.gateway_url}/events/12"
    assert claims["org_id"] == 12
    assert claims["channel_id"] == answer["channel_id"]


async def test_start_stream_fresh_channels_differ(dev_stack: DevStack) -> None:
    async with httpx.AsyncClient(base_url=dev_stack.gateway_url, timeout=_TIMEOUT_S) as client:
        first = await client.post("/dev/start-stream", json={"org_id": 1})
        second = await client.post("/dev/start-stream", json={"org_id": 1})

    assert first.json()["conduit"]["channel_id"] != second.json()["conduit"]["channel_id"]


async def test_start_stream_same_channel_new_token(dev_stack: DevStack, channel_id: str) -> None:
    async with httpx.AsyncClient(base_url=dev_stack.gateway_url, timeout=_TIMEOUT_S) as client:
        response = await client.post("/dev/start-stream", json={"org_id": 3, "channel_id": channel_id.upper()})

    answer = response.json()["conduit"]
    assert response.status_code == 200
    assert answer["channel_id"] == channel_id
    assert _claims(dev_stack.keys, answer["token"])["channel_id"] == channel_id
    assert answer["url"].endswith("/events/3")


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "request body must be a JSON object"),
        (b"[1, 2]", "request body must be a JSON object"),
        (b"{}", "org_id is required"),
        (b'{"org_id": -1}', "org_id must be a non-negative 64-bit integer, got -1"),
        (b'{"org_id": "1"}', 'org_id must be a non-negative 64-bit integer, got "1"'),
        (b'{"org_id": true}', "org_id must be a non-negative 64-bit integer, got true"),
        (b'{"org_id": 1.5}', "org_id must be a non-negative 64-bit integer, got 1.5"),
        (b'{"org_id": 18446744073709551616}', "org_id must be a non-negative 64-bit integer"),
        (b'{"org_id": 1, "channel_id": "nope"}', "channel_id must be a UUID such as"),
        (b'{"org_id": 1, "channel_id": "97f58c19ce384c6b8a5b47f3405691f0"}', "channel_id must be a UUID such as"),
        (b'{"org_id": 1, "channel_id": 5}', "channel_id must be a UUID string, got 5"),
    ],
)
async def test_start_stream_bad_input_400(dev_stack: DevStack, body: bytes, message: str) -> None:
    async with httpx.AsyncClient(base_url=dev_stack.gateway_url, timeout=_TIMEOUT_S) as client:
        response = await client.post("/dev/start-stream", content=body, headers={"content-type": "application/json"})

    assert response.status_code == 400
    assert message in response.json()["error"]


async def test_start_stream_preflight_allows_any_origin(dev_stack: DevStack) -> None:
    headers = {
        "origin": _ORIGIN,
        "access-control-request-method": "POST",
        "access-control-request-headers": "content-type",
    }
    async with httpx.AsyncClient(base_url=dev_stack.gateway_url, timeout=_TIMEOUT_S) as client:
        response = await client.options("/dev/start-stream", headers=headers)

    assert response.status_code in (200, 204)
    assert response.headers["access-control-allow-origin"] in ("*", _ORIGIN)
    assert "content-type" in response.headers["access-control-allow-headers"].lower()
    allowed_methods = response.headers["access-control-allow-methods"]
    assert "POST" in allowed_methods or allowed_methods == "*"


async def test_start_stream_ignores_application_fields(dev_stack: DevStack, channel_id: str) -> None:
    # conduit-client merges its startStreamData into the body, so fields of the application come along.
    body = {"org_id": 1, "channel_id": channel_id, "conversation_id": 42}
    async with httpx.AsyncClient(base_url=dev_stack.gateway_url, timeout=_TIMEOUT_S) as client:
        response = await client.post("/dev/start-stream", json=body)

    assert response.status_code == 200
    assert response.json()["conduit"]["channel_id"] == channel_id


async def test_start_stream_preflight_allows_custom_headers(dev_stack: DevStack) -> None:
    # conduit-client sends its startStreamHeaders, such as a CSRF token, with the POST.
    headers = {
        "origin": _ORIGIN,
        "access-control-request-method": "POST",
        "access-control-request-headers": "content-type,x-csrftoken",
    }
    async with httpx.AsyncClient(base_url=dev_stack.gateway_url, timeout=_TIMEOUT_S) as client:
        response = await client.options("/dev/start-stream", headers=headers)

    allowed_headers = response.headers["access-control-allow-headers"].lower()
    assert response.status_code in (200, 204)
    assert "x-csrftoken" in allowed_headers or allowed_headers == "*"


async def test_start_stream_cross_origin_post_allowed(dev_stack: DevStack) -> None:
    async with httpx.AsyncClient(base_url=dev_stack.gateway_url, timeout=_TIMEOUT_S) as client:
        response = await client.post("/dev/start-stream", json={"org_id": 1}, headers={"origin": _ORIGIN})

    assert response.status_code == 200
    assert response.headers["access-control-allow-origin"] in ("*", _ORIGIN)


async def test_demo_page_served(dev_stack: DevStack) -> None:
    async with httpx.AsyncClient(base_url=dev_stack.gateway_url, timeout=_TIMEOUT_S) as client:
        response = await client.get("/")

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert "new EventSource(" in response.text
    assert "/dev/start-stream" in response.text
    assert "/dev/demo-stream" in response.text


async def test_demo_stream_reaches_subscriber(dev_stack: DevStack) -> None:
    async with httpx.AsyncClient(base_url=dev_stack.gateway_url, timeout=_TIMEOUT_S) as client:
        started = (await client.post("/dev/start-stream", json={"org_id": 1})).json()["conduit"]
        reader = asyncio.create_task(_events_until_end(client, started["url"], started["token"], started["channel_id"]))
        demo = await client.post(
            "/dev/demo-stream", json={"org_id": 1, "channel_id": started["channel_id"], "text": "hello, world!"}
        )
        events = await reader

    assert demo.status_code == 202
    assert demo.json() == {"org_id": 1, "channel_id": started["channel_id"], "messages": 4}
    assert [event["phase"] for event in events] == ["PHASE_START", "PHASE_DELTA", "PHASE_DELTA", "PHASE_END"]
    assert [event["payload"] for event in events] == [{}, {"value": "hello,"}, {"value": " world!"}, {}]
    assert [event["sequence"] for event in events] == [1, 2, 3, 4]
    assert {event["channel_id"] for event in events} == {started["channel_id"]}


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"org_id": 1}, "channel_id is required"),
        ({"org_id": 1, "channel_id": "x"}, "channel_id must be a UUID"),
        ({"channel_id": "97f58c19-ce38-4c6b-8a5b-47f3405691f0"}, "org_id is required"),
        ({"org_id": 1, "channel_id": "97f58c19-ce38-4c6b-8a5b-47f3405691f0", "text": 7}, "text must be a non-empty string"),
        ({"org_id": 1, "channel_id": "97f58c19-ce38-4c6b-8a5b-47f3405691f0", "text": "  "}, "text must be a non-empty string"),
        ({"org_id": 1, "channel_id": "97f58c19-ce38-4c6b-8a5b-47f3405691f0", "text": "x" * (MAX_DEMO_TEXT_CHARS + 1)},
         f"text must be at most {MAX_DEMO_TEXT_CHARS} characters"),
    ],
)
async def test_demo_stream_bad_input_400(dev_stack: DevStack, body: dict[str, object], message: str) -> None:
    async with httpx.AsyncClient(base_url=dev_stack.gateway_url, timeout=_TIMEOUT_S) as client:
        response = await client.post("/dev/demo-stream", json=body)

    assert response.status_code == 400
    assert message in response.json()["error"]
    assert dev_stack.demos.running == 0


async def test_demo_streams_limit_and_stop(channel_id: str) -> None:
    broker = create_broker(BrokerSettings())
    demos = DemoStreams(broker, max_running=1, interval_s=30)
    try:
        demos.start(1, channel_id, "a long demo that the test cancels")
        with pytest.raises(TooManyDemoStreams, match="1 demo streams are already running"):
            demos.start(1, channel_id, "second")

        await asyncio.wait_for(demos.stop(), _TIMEOUT_S)

        assert demos.running == 0
        with pytest.raises(TooManyDemoStreams, match="shutting down"):
            demos.start(1, channel_id, "after stop")
    finally:
        await broker.close()
