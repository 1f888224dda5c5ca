"""The handler of ``POST /publish/{org_id}/{channel_id}``: authenticate, read the body, publish.

It returns the status, header lines and body that the HTTP shim sent when it
ran under uvicorn. A publish gets 200 with the stream id as text/plain. A
ConduitError gets the status that ``HTTP_STATUS`` maps, with a text/plain
body that names the problem, and a 429 also gets Retry-After. A request whose Content-Length is over
``max_message_bytes`` is rejected before its body is read.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable

from conduit.errors import HTTP_STATUS, ConduitError, PayloadTooLarge, RateLimited
from publish_grpc.auth import check_single_authorization
from publish_grpc.http_request import HttpRequest
from publish_grpc.observe import PublishAttempt
from publish_grpc.publisher import Publisher
from publish_grpc.validation import PathIds, ValidatedPublish, parse_path

__all__ = ["PublishResponse", "serve_publish", "start_publish"]

PublishResponse = tuple[int, bytes, bytes]
"""Status, header lines (each ending CRLF) and body."""

_TEXT_PLAIN = b"content-type: text/plain; charset=utf-8\r\n"
# The generic 500 that Litestar sends for a text route, content type included.
_INTERNAL_ERROR_BODY = b'{"status_code":500,"detail":"Internal Server Error"}'


async def serve_publish(publisher: Publisher, request: HttpRequest, body_read_timeout_s: float) -> PublishResponse:
    """Run one publish, waiting for its body, and return its response, a 4xx or 500 one when the publish fails."""
    try:
        with publisher.attempt("http") as attempt:
            path = _check_request(publisher, request, attempt)
            data = await request.read_body(body_read_timeout_s)
            stream_id = await publisher.publish(attempt, data, path=path)
    except Exception as error:
        return _failure_response(error)
    return _text_response(200, b"", stream_id.encode())


def start_publish(
    publisher: Publisher, request: HttpRequest, respond: Callable[[PublishResponse], None]
) -> PublishResponse | asyncio.Task[None] | None:
    """Start the publish of ``request``, whose body has fully arrived, without awaiting.

    Returns the response of a request rejected by its checks. Returns None
    after queueing the append with ``Publisher.append_nowait``: ``respond``
    gets the response once the broker has replied. Returns a task that
    awaits the append and then calls ``respond`` when the append cannot
    start at once (an END, a stream that needs tracking, Redis Cluster).
    Cancelling the task, even before it first runs, records the publish as
    cancelled and sends no response. This path saves a task and a chain of
    coroutines per publish.
    """
    attempt = publisher.attempt("http")
    attempt.start()
    try:
        path = _check_request(publisher, request, attempt)
        publish = publisher.validate(attempt, request.body(), path=path)
        entry_id = publisher.append_nowait(publish)
    except Exception as error:
        attempt.finish(error)
        return _failure_response(error)
    if entry_id is None:
        task = asyncio.get_running_loop().create_task(_append_then_respond(publisher, attempt, publish, respond))
        # A task cancelled before its first step never runs its coroutine, so the callback records the cancel.
        task.add_done_callback(functools.partial(_finish_if_cancelled, attempt))
        return task
    entry_id.add_done_callback(functools.partial(_respond_appended, publisher, attempt, respond))
    return None


async def _append_then_respond(
    publisher: Publisher, attempt: PublishAttempt, publish: ValidatedPublish, respond: Callable[[PublishResponse], None]
) -> None:
    try:
        entry_id = await publisher.append(publish)
    except Exception as error:
        attempt.finish(error)
        respond(_failure_response(error))
        return
    attempt.finish(None)
    respond(_text_response(200, b"", entry_id.encode()))


def _finish_if_cancelled(attempt: PublishAttempt, task: asyncio.Task[None]) -> None:
    if task.cancelled():
        attempt.finish(asyncio.CancelledError())


def _respond_appended(
    publisher: Publisher,
    attempt: PublishAttempt,
    respond: Callable[[PublishResponse], None],
    entry_id: asyncio.Future[str],
) -> None:
    error: BaseException | None
    if entry_id.cancelled():
        # Only the publisher's append deadline cancels this future.
        error = publisher.append_timeout_error()
    else:
        error = entry_id.exception()
    attempt.finish(error)
    if error is not None:
        respond(_failure_response(error))
    else:
        respond(_text_response(200, b"", entry_id.result().encode()))


def _check_request(publisher: Publisher, request: HttpRequest, attempt: PublishAttempt) -> PathIds:
    """Run the checks that need no body: one valid bearer token, well-formed path ids, Content-Length under the limit."""
    assert request.publish_ids is not None
    org_id, channel_id = request.publish_ids
    attempt.note_path(org_id, channel_id)
    authorization_count = sum(1 for name, _ in request.headers if name == b"authorization")
    check_single_authorization(authorization_count, "the Authorization header")
    publisher.authenticate(request.header(b"authorization"))
    path = parse_path(org_id, channel_id)
    _check_content_length(request, publisher.max_message_bytes)
    return path


def _failure_response(error: BaseException) -> PublishResponse:
    if isinstance(error, ConduitError):
        return _error_response(error)
    # PublishAttempt has logged it with the ids.
    return _text_response(500, b"", _INTERNAL_ERROR_BODY)


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
