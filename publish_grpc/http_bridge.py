"""Run one complete HTTP request through an ASGI app and collect its response.

The publish port passes every request other than ``POST /publish/...`` to
Litestar this way: /healthz, /readyz, /metrics, 404, and 405 or 204 (OPTIONS)
for a publish path with another method. The response bytes follow uvicorn
0.55's rules, so they match what the port sent under uvicorn: a
response without Content-Length is sent chunked, except for HEAD, 204 and 304.
"""

from __future__ import annotations

import logging
import urllib.parse
from typing import Any

import httptools

from litestar.types import ASGIApp

from publish_grpc.http_request import HttpRequest

__all__ = ["AsgiResponse", "call_asgi", "split_target"]

logger = logging.getLogger(__name__)

AsgiResponse = tuple[int, bytes, bytes, bool]
"""Status, header lines (each ending CRLF), body, and whether those lines contain ``connection: close``."""

_INTERNAL_ERROR: AsgiResponse = (
    500,
    b"content-type: text/plain; charset=utf-8\r\ncontent-length: 21\r\nconnection: close\r\n",
    b"Internal Server Error",
    True,
)


async def call_asgi(
    app: ASGIApp, request: HttpRequest, path: str, raw_path: bytes, query: bytes, connection: dict[str, Any]
) -> AsgiResponse:
    """Call ``app`` with a scope for ``request`` and an empty body; return its response.

    ``connection`` contains the scope keys of the connection (server, client, scheme).
    NOTE: the app gets no request body: no route it serves on this port reads one.
    """
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": request.http_version,
        **connection,
        "root_path": "",
        "headers": request.headers,
        "state": {},
        "method": request.method.decode("ascii"),
        "path": path,
        "raw_path": raw_path,
        "query_string": query,
    }
    collector = _ResponseCollector(scope["method"] == "HEAD")
    received = False

    async def receive() -> dict[str, Any]:
        nonlocal received
        if received:
            return {"type": "http.disconnect"}
        received = True
        return {"type": "http.request", "body": b"", "more_body": False}

    try:
        await app(scope, receive, collector.send)
    except Exception:
        logger.exception("publish HTTP: the app raised on %s %s", scope["method"], path)
        return _INTERNAL_ERROR if not collector.started else collector.closed_early()
    if not collector.complete:
        logger.error("publish HTTP: the app returned without completing the response to %s %s", scope["method"], path)
        return _INTERNAL_ERROR if not collector.started else collector.closed_early()
    return collector.response()


def split_target(url: bytes) -> tuple[str, bytes, bytes]:
    """Return the decoded path, raw path and query string of a request target, as uvicorn 0.55 sets them.

    Raises UnicodeDecodeError for a path that is not ASCII.
    """
    parsed = httptools.parse_url(url)
    # httptools returns no path for an absolute-form target such as
    # "http://example.com", whose empty path means "/" (RFC 9110 section 4.2.3).
    raw_path = parsed.path or b"/"
    path = raw_path.decode("ascii")
    if "%" in path:
        path = urllib.parse.unquote(path)
    return path, raw_path, parsed.query or b""


class _ResponseCollector:
    def __init__(self, is_head: bool) -> None:
        self._is_head = is_head
        self.started = False
        self.complete = False
        self._status = 0
        self._lines: list[bytes] = []
        self._body: list[bytes] = []
        self._chunked = False
        self._close = False

    async def send(self, message: dict[str, Any]) -> None:
        if not self.started:
            if message["type"] != "http.response.start":
                raise RuntimeError(f"expected ASGI message 'http.response.start', got {message['type']!r}")
            self._start(message["status"], message.get("headers", []))
            return
        if self.complete or message["type"] != "http.response.body":
            raise RuntimeError(f"unexpected ASGI message {message['type']!r} after the response")
        body = message.get("body", b"")
        more_body = message.get("more_body", False)
        if self._is_head:
            pass
        elif self._chunked:
            if body:
                self._body.append(b"%x\r\n%s\r\n" % (len(body), body))
            if not more_body:
                self._body.append(b"0\r\n\r\n")
        else:
            self._body.append(body)
        self.complete = not more_body

    def _start(self, status: int, headers: list[tuple[bytes, bytes]]) -> None:
        self.started = True
        self._status = status
        has_length = False
        for name, value in headers:
            name = name.lower()
            if name == b"content-length":
                has_length = True
            elif name == b"transfer-encoding" and value.lower() == b"chunked":
                has_length = True
                self._chunked = True
            elif name == b"connection" and b"close" in [token.lower().strip() for token in value.split(b",")]:
                self._close = True
            self._lines.append(b"%s: %s\r\n" % (name, value))
        if not has_length and not self._is_head and status not in (204, 304):
            self._chunked = True
            self._lines.append(b"transfer-encoding: chunked\r\n")

    def response(self) -> AsgiResponse:
        return self._status, b"".join(self._lines), b"".join(self._body), self._close

    def closed_early(self) -> AsgiResponse:
        """Return the partial response with ``connection: close``, since its body may be incomplete."""
        if not self._close:
            self._lines.append(b"connection: close\r\n")
        return self._status, b"".join(self._lines), b"".join(self._body), True
