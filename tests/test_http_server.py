"""HttpServer options: a server without access log leaves the other servers of the process logging."""

from __future__ import annotations

import logging

import httpx
import pytest
from litestar import Litestar, get

from conduit.http_server import HttpServer


@get("/ping", sync_to_thread=False)
def _ping() -> str:
    return "pong"


async def test_http_server_access_log_off_only_for_that_server(caplog: pytest.LogCaptureFixture) -> None:
    quiet = HttpServer(Litestar([_ping], logging_config=None), "127.0.0.1", 0, name="quiet", access_log=False)
    loud = HttpServer(Litestar([_ping], logging_config=None), "127.0.0.1", 0, name="loud")
    await quiet.start()
    await loud.start()
    try:
        with caplog.at_level(logging.INFO, logger="uvicorn.access"):
            async with httpx.AsyncClient(timeout=5) as client:
                quiet_response = await client.get(f"http://127.0.0.1:{quiet.port}/ping")
                loud_response = await client.get(f"http://127.0.0.1:{loud.port}/ping")
    finally:
        await quiet.stop(grace_s=1)
        await loud.stop(grace_s=1)

    access_lines = [record.getMessage() for record in caplog.records if record.name == "uvicorn.access"]
    assert quiet_response.status_code == 200
    assert loud_response.status_code == 200
    assert len(access_lines) == 1, access_lines
    assert "GET /ping" in access_lines[0]
