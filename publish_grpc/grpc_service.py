"""The native front door: ``conduit.v1alpha.PublishService`` on grpc.aio.

Requests reach the servicer as the raw bytes of the PublishRequest, not as a
decoded message. With the generated deserializer, an undecodable request would
end as UNKNOWN before any of our code ran. Here it ends as INVALID_ARGUMENT
with the reason, and the size check and the stored bytes use the wire encoding.

An unexpected exception ends the call as INTERNAL with a generic message, and
is logged with the ids of the request it happened in. grpc would otherwise end
it as UNKNOWN with the exception's text.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator

import grpc

from conduit.errors import GRPC_STATUS, ConduitError, InvalidArgument, RateLimited, Unauthenticated
from conduit.v1alpha import publish_pb2, publish_pb2_grpc
from conduit.v1alpha.publish_pb2 import PublishResponse
from publish_grpc.auth import check_single_authorization
from publish_grpc.observe import PublishAttempt
from publish_grpc.publisher import Publisher
from publish_grpc.stream import StreamPublisher, publish_batched
from publish_grpc.validation import ValidatedPublish

__all__ = ["SERVICE_NAME", "PublishServicer", "add_publish_servicer"]

logger = logging.getLogger(__name__)

SERVICE_NAME: str = publish_pb2.DESCRIPTOR.services_by_name["PublishService"].full_name

INTERNAL_ERROR_MESSAGE = "internal error while publishing: the message may or may not be stored"


class _LoggedFailure(Exception):
    """An unexpected exception in one publish, already logged with its ids by PublishAttempt."""


class PublishServicer(publish_pb2_grpc.PublishServiceServicer):
    """Publish and PublishStream over one shared ``Publisher``."""

    def __init__(self, publisher: Publisher) -> None:
        self._publisher = publisher

    async def Publish(self, request: bytes, context: grpc.aio.ServicerContext) -> PublishResponse:
        """Append one message; errors end the call with the status that GRPC_STATUS maps."""
        return await self._publish_one(request, context)

    async def PublishStream(
        self,
        request_iterator: AsyncIterator[bytes],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[PublishResponse]:
        """Append each message and respond to each in order; the first error ends the stream with its status.

        Messages are read ahead and appended in batches while earlier ones
        are answered, one stream's entries in request order (see
        ``publish_grpc.stream``). The token is verified with the first
        message, and every later message checks its ``exp`` again, so a
        stream stops being accepted once its token expires.
        """
        # The metadata of a call is fixed, so the header is looked up once.
        steps = _StreamSteps(self._publisher, _authorization_values(context))
        try:
            async for stream_id in publish_batched(request_iterator, steps):
                yield PublishResponse(stream_id=stream_id)
        except ConduitError as error:
            await _abort(context, error)
        except _LoggedFailure:
            await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_ERROR_MESSAGE)
        except Exception:
            # Raised outside any one publish, for example by the read-ahead.
            logger.exception("publish stream failed", extra={"method": "PublishStream"})
            await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_ERROR_MESSAGE)

    async def _publish_one(self, request: bytes, context: grpc.aio.ServicerContext) -> PublishResponse:
        try:
            stream_id = await self._publish(request, _authorization_values(context))
        except ConduitError as error:
            await _abort(context, error)
        except _LoggedFailure:
            await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_ERROR_MESSAGE)
        except Exception:
            logger.exception("publish call failed", extra={"method": "Publish"})
            await context.abort(grpc.StatusCode.INTERNAL, INTERNAL_ERROR_MESSAGE)
        return PublishResponse(stream_id=stream_id)

    async def _publish(self, request: bytes, authorization_values: list[str]) -> str:
        try:
            with self._publisher.attempt("grpc") as attempt:
                _authenticate(self._publisher, attempt, authorization_values, request)
                return await self._publisher.publish(attempt, request)
        except ConduitError:
            raise
        except Exception as error:
            # PublishAttempt has logged it with the ids as the block exited.
            raise _LoggedFailure from error


class _StreamSteps(StreamPublisher[tuple[PublishAttempt, ValidatedPublish]]):
    """The steps of one PublishStream call, each message recorded by its own PublishAttempt."""

    def __init__(self, publisher: Publisher, authorization_values: list[str]) -> None:
        self._publisher = publisher
        self._authorization_values = authorization_values
        # The call's metadata is fixed, so its token needs verifying only once.
        self._token_expires_at: int | None = None

    def prepare(self, data: bytes) -> tuple[PublishAttempt, ValidatedPublish]:
        attempt = self._publisher.attempt("grpc")
        attempt.start()
        try:
            if self._token_expires_at is None:
                self._token_expires_at = _authenticate(self._publisher, attempt, self._authorization_values, data)
            else:
                _check_unexpired(self._publisher, attempt, self._token_expires_at, data)
            return attempt, self._publisher.validate(attempt, data)
        except ConduitError as error:
            attempt.finish(error)
            raise
        except Exception as error:
            attempt.finish(error)
            raise _LoggedFailure from error

    def stream_of(self, item: tuple[PublishAttempt, ValidatedPublish]) -> str:
        return item[1].stream_key

    async def append(
        self, stream: str, items: list[tuple[PublishAttempt, ValidatedPublish]]
    ) -> tuple[list[str], Exception | None]:
        try:
            result = await self._publisher.append_many(stream, [publish for _, publish in items])
        except BaseException as error:
            # Only the first message's failure reaches the caller, so only it is
            # logged. The others get no response, as after any first failure.
            items[0][0].finish(error)
            self.abandon(items[1:])
            if isinstance(error, Exception) and not isinstance(error, ConduitError):
                raise _LoggedFailure from error
            raise
        stored = len(result.ids)
        for attempt, _ in items[:stored]:
            attempt.finish(None)
        if result.rate_limited is None:
            return result.ids, None
        items[stored][0].finish(result.rate_limited)
        self.abandon(items[stored + 1:])
        return result.ids, result.rate_limited

    def abandon(self, items: list[tuple[PublishAttempt, ValidatedPublish]]) -> None:
        cancelled = asyncio.CancelledError("an earlier message of this call failed")
        for attempt, _ in items:
            attempt.finish(cancelled)


def _authenticate(
    publisher: Publisher, attempt: PublishAttempt, authorization_values: list[str], request: bytes
) -> int:
    try:
        check_single_authorization(len(authorization_values), "the authorization metadata")
        return publisher.authenticate(authorization_values[0] if authorization_values else None)
    except (InvalidArgument, Unauthenticated):
        # The rejection is logged with the stream's ids when the body names them.
        attempt.note_body(request)
        raise


def _check_unexpired(publisher: Publisher, attempt: PublishAttempt, expires_at: int, request: bytes) -> None:
    try:
        publisher.check_unexpired(expires_at)
    except Unauthenticated:
        attempt.note_body(request)
        raise


async def _abort(context: grpc.aio.ServicerContext, error: ConduitError) -> None:
    trailing: tuple[tuple[str, str], ...] = ()
    if isinstance(error, RateLimited):
        trailing = (("retry-after", error.retry_after_header),)
    await context.abort(GRPC_STATUS[type(error)], error.message, trailing_metadata=trailing)


def add_publish_servicer(servicer: PublishServicer, server: grpc.aio.Server) -> None:
    """Register ``servicer`` on ``server`` with requests passed through undecoded."""
    handlers = {
        "Publish": grpc.unary_unary_rpc_method_handler(
            servicer.Publish,
            request_deserializer=None,
            response_serializer=PublishResponse.SerializeToString,
        ),
        "PublishStream": grpc.stream_stream_rpc_method_handler(
            servicer.PublishStream,
            request_deserializer=None,
            response_serializer=PublishResponse.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE_NAME, handlers),))
    server.add_registered_method_handlers(SERVICE_NAME, handlers)


def _authorization_values(context: grpc.aio.ServicerContext) -> list[str]:
    """Return every value of the call's ``authorization`` metadata, in the order received."""
    return [
        value if isinstance(value, str) else value.decode("latin-1")
        for key, value in context.invocation_metadata() or ()
        if key == "authorization"
    ]
