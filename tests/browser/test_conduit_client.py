"""The npm package conduit-client, unchanged, in headless Chromium against conduit dev and conduit serve."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

import pytest
from playwright.async_api import Page, Request

from conduit.sdk import GrpcPublisher, HttpPublisher
from conduit.tokens import generate_rsa_key_pair, mint_publisher_token
from tests.browser.conftest import TIMEOUT_S, DevServer
from tests.browser.services import (
    GATEWAY_AUDIENCE,
    ISSUER,
    PUBLISH_AUDIENCE,
    PUBLISH_SECRET,
    ServeProcess,
    serve_environment,
)
from tests.browser.site import ClientSite, TokenIssuer

ORG_ID = 1


async def open_client(page: Page, site: ClientSite, start_stream_url: str, channel_id: str) -> list[str]:
    """Load the client page on ``channel_id``; return the list that collects its EventSource URLs."""
    event_urls: list[str] = []

    def record(request: Request) -> None:
        if "/events/" in request.url:
            event_urls.append(request.url)

    page.on("request", record)
    query = urlencode({"org_id": ORG_ID, "channel_id": channel_id, "start_stream_url": start_stream_url})
    await page.goto(f"{site.url}/client.html?{query}")
    await wait_for(page, "window.conduitTest.connects === 1")
    return event_urls


async def wait_for(page: Page, condition: str) -> None:
    """Wait until ``condition`` holds on the page; on time-out, show the client's state."""
    try:
        await page.wait_for_function(condition, timeout=TIMEOUT_S * 1000)
    except Exception:
        state = await page.evaluate("JSON.stringify(window.conduitTest)")
        raise AssertionError(f"{condition} did not hold; conduitTest = {state}") from None


async def client_state(page: Page) -> dict[str, Any]:
    return await page.evaluate("window.conduitTest")


async def test_conduit_client_delivers_deltas_from_conduit_dev(
    page: Page, client_site: ClientSite, dev_server: DevServer
) -> None:
    channel_id = str(uuid.uuid4())
    await open_client(page, client_site, f"{dev_server.gateway_url}/dev/start-stream", channel_id)

    async with asyncio.timeout(TIMEOUT_S), HttpPublisher(
        dev_server.publish_url, dev_server.publisher_token, org_id=ORG_ID
    ) as publisher:
        async with publisher.stream(channel_id) as stream:
            await stream.delta({"value": "hello,"})
            await stream.delta({"value": " world!"})
    await wait_for(page, "window.conduitTest.closes === 1")

    state = await client_state(page)
    assert state["delivered"] == [{"value": "hello,"}, {"value": " world!"}]
    assert state["errors"] == []
    assert state["connects"] == 1


@pytest.fixture
async def deployment(redis_url: str, tmp_path: Path) -> AsyncIterator[tuple[dict[str, str], str, ServeProcess]]:
    """``conduit serve publish`` on the test Redis; yields the environment, the private key and the publisher."""
    private_pem, public_pem = generate_rsa_key_pair()
    env = serve_environment(redis_url, public_pem)
    publish = ServeProcess("publish", env, tmp_path / "publish.log")
    await publish.start()
    yield env, private_pem, publish
    assert await publish.stop() == 0


async def test_conduit_client_resumes_after_gateway_drain(
    page: Page, client_site: ClientSite, deployment: tuple[dict[str, str], str, ServeProcess], tmp_path: Path
) -> None:
    env, private_pem, publish = deployment
    old_gateway = ServeProcess("gateway", env, tmp_path / "gateway-old.log")
    new_gateway = ServeProcess("gateway", env, tmp_path / "gateway-new.log")
    await old_gateway.start()
    client_site.issuer = TokenIssuer(private_pem, issuer=ISSUER, audience=GATEWAY_AUDIENCE, gateway_url=old_gateway.url)
    channel_id = str(uuid.uuid4())
    event_urls = await open_client(page, client_site, f"{client_site.url}/start-stream", channel_id)
    token = mint_publisher_token(PUBLISH_SECRET, issuer=ISSUER, audience=PUBLISH_AUDIENCE)

    try:
        async with asyncio.timeout(TIMEOUT_S * 2), GrpcPublisher(
            f"127.0.0.1:{publish.grpc_port}", token, org_id=ORG_ID
        ) as publisher:
            # One PublishStream call stays open while the gateway is replaced.
            async with publisher.stream(channel_id) as stream:
                for word in ("one", "two", "three"):
                    await stream.delta({"value": word})
                await wait_for(page, "window.conduitTest.delivered.length === 3")

                await new_gateway.start()
                client_site.issuer.gateway_url = new_gateway.url
                assert await old_gateway.stop() == 0
                await wait_for(page, "window.conduitTest.connects === 2")

                for word in ("four", "five", "six"):
                    await stream.delta({"value": word})
            await wait_for(page, "window.conduitTest.closes === 2")
    finally:
        await old_gateway.stop()
        await new_gateway.stop()

    state = await client_state(page)
    assert [payload["value"] for payload in state["delivered"]] == ["one", "two", "three", "four", "five", "six"]
    assert state["errors"] == []
    assert len(event_urls) == 2
    first, resumed = (parse_qs(urlsplit(url).query) for url in event_urls)
    assert urlsplit(event_urls[1]).port == new_gateway.http_port
    assert "last_event_id" not in first
    assert resumed["last_event_id"] == [stream.stream_ids[3]]
