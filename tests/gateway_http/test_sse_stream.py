"""SseStream details: dropping a client that stops reading, and throttled warnings about skipped entries."""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable

import pytest

from broker.base import Broker
from gateway_http.encoding import _ThrottledWarning
from tests.gateway_http.helpers import ORG_ID, GatewayFactory, publish, wait_until


@pytest.mark.parametrize("broker_kind", ["memory"], indirect=True)
async def test_events_slow_client_dropped(
    start_gateway: GatewayFactory,
    broker: Broker,
    channel_id: str,
    mint: Callable[..., str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = await start_gateway(send_timeout_s=0.5)
    sock = socket.socket()
    # A tiny receive window lets the server's buffers fill quickly.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, ("127.0.0.1", server.port))
    request = f"GET /events/{ORG_ID}?token={mint(channel_id)}&channel_id={channel_id} HTTP/1.1\r\nHost: test\r\n\r\n"
    await asyncio.get_running_loop().sock_sendall(sock, request.encode())
    try:
        await wait_until(lambda: server.open_stream_count == 1)
        filler = {"value": "x" * 15_000}
        async with asyncio.timeout(30):
            for sequence in range(5_000):
                if server.open_stream_count == 0:
                    break
                await publish(broker, channel_id, sequence=sequence, payload=filler)
                if sequence % 50 == 0:
                    await asyncio.sleep(0.05)
        await wait_until(lambda: server.open_stream_count == 0, timeout_s=10)
    finally:
        sock.close()

    assert server.open_stream_count == 0
    # The send timeout or the subscriber's bounded buffer, whichever comes first, drops it.
    dropped = {"dropping slow client", "dropping subscriber that fell behind"}
    assert any(record.getMessage() in dropped for record in caplog.records)


def test_throttled_warning_holds_back_repeats(caplog: pytest.LogCaptureFixture) -> None:
    throttled = _ThrottledWarning("skipping undecodable stream entry", interval_s=3600)
    caplog.set_level(logging.WARNING, logger="gateway_http.encoding")

    for entry_number in range(5):
        throttled.warn(entry_id=f"{entry_number}-0")

    records = [record for record in caplog.records if record.name == "gateway_http.encoding"]
    assert len(records) == 1
    assert records[0].getMessage() == "skipping undecodable stream entry"
    assert records[0].__dict__["entry_id"] == "0-0"


def test_throttled_warning_reports_held_back_count(caplog: pytest.LogCaptureFixture) -> None:
    throttled = _ThrottledWarning("skipping undecodable stream entry", interval_s=0)
    caplog.set_level(logging.WARNING, logger="gateway_http.encoding")

    throttled.warn(entry_id="1-0")
    throttled.warn(entry_id="2-0")

    held_back = [record.__dict__["held_back"] for record in caplog.records if record.name == "gateway_http.encoding"]
    assert held_back == [0, 0]
