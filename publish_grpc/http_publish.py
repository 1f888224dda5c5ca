"""The handler of ``POST /publish/{org_id}/{channel_id}``: authenticate, read the body, publish.

It returns the status, header lines and body that the HTTP shim sent when it
ran under uvicorn. A publish gets 200 with the stream id as text/plain. A
ConduitError gets the status that ``HTTP_STATUS`` maps, with a text/plain
body that names the problem, and a 429 also gets Retry-After. A request whose Content-Length is over
``max_message_bytes`` is rejected before its body is read.
"""

from __future__ import annotations

from conduit.errors import HTTP_STATUS, ConduitError, InvalidArgument, PayloadTooLarge, RateLimited
from publish_grpc.http_request import HttpRequest
from publish_grpc.publisher import Publisher
from publish_grpc.validation import parse_path

__all__ = ["PublishResponse", "serve_publish"]

PublishResponse = tuple[int, bytes, bytes]
"""Status, header lines (each ending CRLF) and body."""

_TEXT_PLAIN = b"content-type: text/plain; charset=utf-8\r\n"
# The generic 500 that Litestar sends for a text route, content type included.
_INTERNAL_ERROR_BODY = b'{"status_code":500,"detail":"Internal Server Error"}'


async def serve_publish(publisher: Publisher, request: HttpRequest, body_read_timeout_s: float) -> PublishResponse:
    """Run one publish and return its response, a 4xx or 500 one when the publish fails."""
    assert request.publish_ids is not None
    org_id, channel_id = request.publish_ids
    try:
        with publisher.attempt("http") as attempt:
            attempt.note_path(org_id, channel_id)
            _check_single_authorization(request)
            publisher.authenticate(request.header(b"authorization"))
            path = parse_path(org_id, channel_id)
            _check_content_length(request, publisher.max_message_bytes)
            data = await request.read_body(body_read_timeout_s)
            stream_id = await publisher.publish(attempt, data, path=path)
    except ConduitError as error:
        return _error_response(error)
    except Exception:
        # PublishAttempt has logged it with the ids.
        return _text_response(500, b"", _INTERNAL_ERROR_BODY)
    return _text_response(200, b"", stream_id.encode())


def _check_single_authorization(request: HttpRequest) -> None:
    # Servers and proxies differ on which of several values they use, so a
    # proxy could check one token while this server uses the other.
    count = sum(1 for name, _ in request.headers if name == b"authorization")
    if count > 1:
        raise InvalidArgument(f"the Authorization header appears {count} times: send exactly one bearer token")


def _check_content_length(request: HttpRequest, max_bytes: int) -> None:
    declared = request.header(b"content-length")
    if declared is not None and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(
            f"PublishRequest is {int(declared)} bytes (Content-Length), over the limit of {max_bytes} bytes"
        )


def _error_response(error: ConduitError) -> PublishResponse:
    retry_after = b""
    if isinstance(error, RateLimited):
        retry_after = b"retry-after: " + error.retry_after_header.encode() + b"\r\n"
    return _text_response(HTTP_STATUS[type(error)], retry_after, error.message.encode())


def _text_response(status: int, leading_lines: bytes, body: bytes) -> PublishResponse:
    return status, b"%s%scontent-length: %d\r\n" % (leading_lines, _TEXT_PLAIN, len(body)), body
