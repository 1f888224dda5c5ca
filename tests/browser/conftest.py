"""Fixtures of the browser tests: headless Chromium from Debian, ``conduit dev`` as a child process, the test site.

No fixture downloads anything: Chromium is /usr/bin/chromium and conduit-client
comes from tests/browser/node_modules, both put there by ``scripts/install --test``.
A missing one fails the test, so that a machine without them cannot pass quietly.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from playwright.async_api import BrowserContext, Page, async_playwright

from tests.browser.site import CLIENT_MODULE, ClientSite

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
TIMEOUT_S = 20
_STOP_TIMEOUT_S = 20


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[BrowserContext]:
    """A Chromium with a fresh profile, closed after the test."""
    if not CHROMIUM.exists():
        pytest.fail(f"{CHROMIUM} is missing: run scripts/install --test, which installs Debian's chromium package")
    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            str(tmp_path / "chromium-profile"),
            executable_path=str(CHROMIUM),
            headless=True,
            args=CHROMIUM_FLAGS,
            viewport={"width": 1100, "height": 820},
        )
        context.set_default_timeout(TIMEOUT_S * 1000)
        try:
            yield context
        finally:
            await context.close()


@pytest.fixture
async def page(browser: BrowserContext) -> AsyncIterator[Page]:
    """A new tab; the test fails when a script on it raised an uncaught exception."""
    page = await browser.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda error: errors.append(str(error)))
    yield page
    assert errors == [], f"the page raised: {errors}"


@pytest.fixture
async def client_site() -> AsyncIterator[ClientSite]:
    if not CLIENT_MODULE.exists():
        pytest.fail(f"{CLIENT_MODULE} is missing: run scripts/install --test, which runs npm ci in tests/browser")
    site = ClientSite()
    await site.start()
    yield site
    await site.stop()


@dataclass(frozen=True)
class DevServer:
    """Addresses and tokens that a running ``conduit dev`` printed."""

    gateway_url: str
    publish_url: str
    grpc_target: str
    publisher_token: str


_BANNER = {
    "publish_url": re.compile(r"^  publish HTTP: (http://\S+)/publish/\{org_id\}/\{channel_id\}$", re.M),
    "grpc_target": re.compile(r"^  publish gRPC: (\S+)$", re.M),
    "gateway_url": re.compile(r"^  demo page: (http://\S+)/$", re.M),
    "publisher_token": re.compile(r"^  publisher token: (\S+)$", re.M),
}


@contextlib.asynccontextmanager
async def run_dev(
    state_dir: Path, log_path: Path, *, redis_url: str | None = None, ports: tuple[int, int, int] = (0, 0, 0)
) -> AsyncIterator[DevServer]:
    """Run ``conduit dev`` as a user starts it, on ``redis_url`` or the embedded broker; stop it with SIGTERM.

    ``ports`` are the publish HTTP, publish gRPC and gateway ports.
    """
    env = {name: value for name, value in os.environ.items() if not name.startswith(("REDIS_", "PUBLISH_", "GATEWAY_"))}
    env.pop("CONDUIT_HOST", None)
    if redis_url is not None:
        env["REDIS_URL"] = redis_url
    publish_port, grpc_port, gateway_port = (str(port) for port in ports)
    with log_path.open("ab") as log:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "conduit.cli", "dev", "--state-dir", str(state_dir),
            "--publish-port", publish_port, "--publish-grpc-port", grpc_port, "--gateway-port", gateway_port,
            stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE, stderr=log, env=env,
        )
        try:
            yield DevServer(**await _read_banner(process, log_path))
            process.send_signal(signal.SIGTERM)
            status = await asyncio.wait_for(process.wait(), _STOP_TIMEOUT_S)
            assert status == 0, log_path.read_text()
        finally:
            if process.returncode is None:
                process.kill()
                await process.wait()


@pytest.fixture
async def dev_server(tmp_path: Path) -> AsyncIterator[DevServer]:
    """``conduit dev`` on the embedded broker and free ports."""
    async with run_dev(tmp_path / "state", tmp_path / "conduit-dev.log") as server:
        yield server


async def _read_banner(process: asyncio.subprocess.Process, log_path: Path) -> dict[str, str]:
    assert process.stdout is not None
    text = ""
    async with asyncio.timeout(TIMEOUT_S):
        while "curl -N" not in text:
            line = await process.stdout.readline()
            if not line:
                raise AssertionError(f"conduit dev exited early:\n{text}\n{log_path.read_text()}")
            text += line.decode()
    fields = {}
    for name, pattern in _BANNER.items():
        match = pattern.search(text)
        assert match, f"{name} missing from:\n{text}"
        fields[name] = match.group(1)
    return fields
