"""An open SSE stream keeps no copy of the token from its URL: in uvicorn's protocol, in the scope, or in Litestar's cache."""

from __future__ import annotations

import gc
from collections.abc import Callable

import httpx
from litestar import _parsers
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from gateway_http.direct_write import release_request_url
from tests.gateway_http.helpers import ORG_ID, FrameReader

RETRY = b"retry: 500\n\n"


def open_protocols() -> list[HttpToolsProtocol]:
    return [item for item in gc.get_objects() if isinstance(item, HttpToolsProtocol)]


async def test_open_stream_keeps_no_token(
    client: httpx.AsyncClient, channel_id: str, mint: Callable[..., str]
) -> None:
    token = mint(channel_id)
    cached_before = _parsers.parse_query_string.cache_info().currsize

    async with client.stream("GET", f"/events/{ORG_ID}", params={"token": token, "channel_id": channel_id}) as response:
        assert await FrameReader(response).next_frame() == RETRY
        protocols = [protocol for protocol in open_protocols() if protocol.scope.get("path") == f"/events/{ORG_ID}"]

        assert len(protocols) == 1
        assert token.encode() not in protocols[0].url
        assert protocols[0].scope["query_string"] == b""
        assert _parsers.parse_query_string.cache_info().currsize == cached_before


def test_release_request_url_skips_other_transports() -> None:
    class Cycle:
        transport = object()

    release_request_url(Cycle())
    release_request_url(object())
