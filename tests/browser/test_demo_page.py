"""The demo page of ``conduit dev`` in headless Chromium."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

from playwright.async_api import Page, expect

from conduit.sdk import HttpPublisher
from tests.browser.conftest import TIMEOUT_S, DevServer, run_dev
from tests.redis_process import free_port

DOCS_SCREENSHOT = Path(__file__).resolve().parents[2] / "docs" / "demo.png"


def _screenshot_path(tmp_path: Path) -> Path:
    """Return where the demo screenshot goes: docs/demo.png with CONDUIT_UPDATE_SCREENSHOT=1, else tmp.

    The ids on the page change every run, so writing docs/ on every run would
    leave the committed picture modified after each test run.
    """
    if os.environ.get("CONDUIT_UPDATE_SCREENSHOT") == "1":
        return DOCS_SCREENSHOT
    return tmp_path / "demo.png"


async def test_demo_page_assembles_hello_world(page: Page, dev_server: DevServer, tmp_path: Path) -> None:
    await page.goto(f"{dev_server.gateway_url}/")
    await expect(page.locator("#state")).to_have_text("live")
    channel_id = await page.evaluate("document.body.dataset.channelId")
    org_id = int(await page.evaluate("document.body.dataset.orgId"))

    async with asyncio.timeout(TIMEOUT_S), HttpPublisher(
        dev_server.publish_url, dev_server.publisher_token, org_id=org_id
    ) as publisher:
        async with publisher.stream(channel_id) as stream:
            await stream.delta({"value": "hello,"})
            await stream.delta({"value": " world!"})

    await expect(page.locator("#state")).to_have_text("ended")
    await expect(page.locator("#output")).to_have_text("hello, world!")
    await expect(page.locator("#phase")).to_have_text("END")
    await expect(page.locator("#sequence")).to_have_text("4")
    await expect(page.locator("#reconnects")).to_have_text("0")
    await expect(page.locator("#events tr")).to_have_count(4)
    screenshot = _screenshot_path(tmp_path)
    await page.screenshot(path=str(screenshot), full_page=True)
    assert screenshot.stat().st_size > 0


async def test_demo_page_button_publishes_demo_stream(page: Page, dev_server: DevServer) -> None:
    await page.goto(f"{dev_server.gateway_url}/")
    await expect(page.locator("#state")).to_have_text("live")
    await page.fill("#text", "one two three")

    await page.click("#publish")

    await expect(page.locator("#state")).to_have_text("ended")
    await expect(page.locator("#output")).to_have_text("one two three")
    await expect(page.locator("#sequence")).to_have_text("5")

    # A second click starts a fresh channel, since the first one has ended.
    first_channel = await page.evaluate("document.body.dataset.channelId")
    await page.fill("#text", "again")
    await page.click("#publish")
    await expect(page.locator("#output")).to_have_text("again")
    assert await page.evaluate("document.body.dataset.channelId") != first_channel


async def test_demo_page_reconnects_after_dev_restart(page: Page, redis_url: str, tmp_path: Path) -> None:
    ports = (free_port(), free_port(), free_port())
    state_dir = tmp_path / "state"
    log_path = tmp_path / "conduit-dev.log"

    async with run_dev(state_dir, log_path, redis_url=redis_url, ports=ports) as first:
        await page.goto(f"{first.gateway_url}/")
        await expect(page.locator("#state")).to_have_text("live")
        channel_id = await page.evaluate("document.body.dataset.channelId")
        async with asyncio.timeout(TIMEOUT_S), HttpPublisher(
            first.publish_url, first.publisher_token, org_id=1
        ) as publisher:
            await publisher.send(channel_id, "start", sequence=1)
            await publisher.send(channel_id, "delta", {"value": "before"}, sequence=2)
        await expect(page.locator("#output")).to_have_text("before")
    # The stopped gateway sent server_draining, and EventSource retries until the next one listens.
    await expect(page.locator("#state")).to_have_text("reconnecting")

    async with run_dev(state_dir, log_path, redis_url=redis_url, ports=ports) as second:
        await expect(page.locator("#reconnects")).to_have_text("1")
        async with asyncio.timeout(TIMEOUT_S), HttpPublisher(
            second.publish_url, second.publisher_token, org_id=1
        ) as publisher:
            await publisher.send(channel_id, "delta", {"value": " after"}, sequence=3)
            await publisher.send(channel_id, "end", sequence=4)

        await expect(page.locator("#state")).to_have_text("ended")
        await expect(page.locator("#output")).to_have_text("before after")
        await expect(page.locator("#events tr.control")).to_have_count(1)
        await expect(page.locator("#events tr.stream")).to_have_count(4)
