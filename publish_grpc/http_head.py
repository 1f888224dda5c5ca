"""Checks on a request head that has just ended: its target, publish route, transfer coding and version.

``route_head`` fills the fields of ``HttpRequest`` that decide who handles
the request, and sets ``failure`` to the error response for a head that
the port does not serve.
"""

from __future__ import annotations

import re

import httptools

from publish_grpc.http_bridge import split_target
from publish_grpc.http_request import HttpRequest

__all__ = ["MALFORMED_MESSAGE", "route_head"]

MALFORMED_MESSAGE = "Invalid HTTP request received"
"""Start of the 400 message for a request that the parser rejects; uvicorn 0.55 sent these words alone."""

# The route Litestar would match for "/publish/{org_id:str}/{channel_id:str}":
# two non-empty segments of the normalized decoded path. The segments stay plain
# strings so that our validation writes the 400 message, and so that org_id can
# use all of uint64.
_PUBLISH_PATH = re.compile(r"/publish/([^/]+)/([^/]+)")
# Litestar 2.x routes the path with leading and trailing slashes stripped and
# runs of slashes collapsed (litestar.utils.path.normalize_path), so
# "//publish/1/x/" is a publish too. Unmatched, it would reach the stub route (500).
_SLASH_RUN = re.compile(r"//+")


def route_head(request: HttpRequest) -> None:
    """Set the target and publish ids of ``request``, or the error response that its head gets.

    ``method``, ``http_version``, ``url`` and ``headers`` must be set already.
    """
    try:
        request.target = split_target(request.url)
    except (httptools.HttpParserInvalidURLError, UnicodeDecodeError):
        request.failure = (
            400, f"{MALFORMED_MESSAGE}: the request target is not a valid ASCII URL: {_shorten(request.url)}"
        )
    else:
        if request.method == b"POST":
            path = request.target[0]
            if "//" in path or path.endswith("/") or not path.startswith("/"):
                path = "/" + _SLASH_RUN.sub("/", path.strip("/"))
            match = _PUBLISH_PATH.fullmatch(path)
            if match is not None:
                request.publish_ids = (match[1], match[2])

    coding = _unsupported_transfer_coding(request.headers)
    if coding is not None:
        # llhttp frames the body by the final "chunked" and ignores the codings before it.
        request.keep_alive = False
        request.publish_ids = None
        request.failure = (
            501,
            f"Transfer-Encoding {_shorten(coding)} is not supported:"
            " send the body with Content-Length or with Transfer-Encoding: chunked alone",
        )
    if request.http_version not in ("1.0", "1.1"):
        # llhttp accepts any one-digit major and minor version.
        request.keep_alive = False
        request.publish_ids = None
        request.failure = (505, f"HTTP/{request.http_version} is not supported: send HTTP/1.1 or HTTP/1.0")


def _shorten(value: bytes, limit: int = 80) -> str:
    """Return ``value`` as a printable literal, cut to about ``limit`` characters."""
    text = repr(value[:limit])
    return text + "..." if len(value) > limit else text


def _unsupported_transfer_coding(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """Return the first Transfer-Encoding value that is not exactly ``chunked``, or None."""
    for name, value in headers:
        if name == b"transfer-encoding" and value.strip().lower() != b"chunked":
            return value
    return None
